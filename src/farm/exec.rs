//! The real [`Executor`]: provisions builder images on the engine and builds each pair with
//! the lifecycle's build of one (module, kernel), in the kernel's own tree of the farm's work
//! area, then moves what it made into the store under the pair's key.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::plan::{Plan, Work};
use super::schedule::{Executor, Job};
use super::store::{stored_file, Record, SourceInfo, Status, Store, StoredModule};
use super::FarmError;
use crate::build::BuildError;
use crate::context::Context;
use crate::engine::Connection;
use crate::error::Error;
use crate::lifecycle::{BuildOutcome, KernelTarget, Lifecycle, LifecycleError, Manifest, Options, UNSIGNED};
use crate::sign::KeyPaths;

/// Who signs: the key pair, and what the records say of it.
#[derive(Debug, Clone)]
pub struct Signing {
    pub keys: KeyPaths,
    pub fingerprint: String,
    pub subject: String,
}

pub struct Farm<'a> {
    pub ctx: &'a Context,
    pub plan: &'a Plan,
    pub store: &'a Store,
    pub work: &'a Work,
    pub conn: Arc<Connection>,
    pub signing: Option<Signing>,
    /// Each image's reference once provisioned.
    images: Mutex<Vec<Option<String>>>,
    /// `--check`: rebuilt pairs are compared with their stored entry instead of stored.
    check: Option<Mutex<Vec<Checked>>>,
}

/// What `--check` found for one pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Checked {
    pub pair: usize,
    /// Files (relative to the entry) whose bytes differ from the stored ones, each with a hint.
    pub differs: Vec<String>,
    /// The files compared.
    pub compared: usize,
    /// The rebuilt build did not end as the stored one did (built, failed, skipped).
    pub status: Option<String>,
}

impl<'a> Farm<'a> {
    pub fn new(
        ctx: &'a Context,
        plan: &'a Plan,
        store: &'a Store,
        work: &'a Work,
        conn: Arc<Connection>,
        signing: Option<Signing>,
    ) -> Farm<'a> {
        let images = Mutex::new(vec![None; plan.images.len()]);
        Farm { ctx, plan, store, work, conn, signing, images, check: None }
    }

    /// Rebuilds compare instead of store ([`Farm::checked`] tells what they found).
    pub fn checking(mut self) -> Self {
        self.check = Some(Mutex::new(Vec::new()));
        self
    }

    pub fn checked(&self) -> Vec<Checked> {
        let mut out = self.check.as_ref().and_then(|c| c.lock().ok().map(|v| v.clone())).unwrap_or_default();
        out.sort_by_key(|c| c.pair);
        out
    }

    /// Compares a rebuilt entry with the stored one; a differing one is kept in
    /// `<store>/check/<key>/` to be looked at.
    fn compare(&self, index: usize, rebuilt: &Record, staged: tempfile::TempDir) -> Result<(), Error> {
        let key = &self.plan.pairs[index].key;
        let mut c = Checked { pair: index, differs: Vec::new(), compared: 0, status: None };
        let stored = match self.store.get(key) {
            super::store::Lookup::Found(r) => r,
            super::store::Lookup::Damaged(why) => {
                c.status = Some(format!("the stored entry is damaged: {why}"));
                Box::new(rebuilt.clone())
            }
            super::store::Lookup::Missing => {
                c.status = Some("the stored entry is gone".into());
                Box::new(rebuilt.clone())
            }
        };
        if stored.status != rebuilt.status {
            c.status = Some(format!("stored {}, rebuilt {}", stored.status, rebuilt.status));
        }
        let dir = self.store.entry_dir(key);
        let theirs: Vec<&super::store::StoredFile> =
            stored.modules.iter().flat_map(|m| std::iter::once(&m.unsigned).chain(&m.signed)).collect();
        for f in rebuilt.modules.iter().flat_map(|m| std::iter::once(&m.unsigned).chain(&m.signed)) {
            c.compared += 1;
            match theirs.iter().find(|t| t.file == f.file) {
                Some(t) if t.sha256 == f.sha256 => {}
                Some(_) => c.differs.push(format!(
                    "{}: {}",
                    f.file,
                    first_difference(&dir.join(&f.file), &staged.path().join(&f.file))
                )),
                None => c.differs.push(format!("{}: not in the stored entry", f.file)),
            }
        }
        if !c.differs.is_empty() || c.status.is_some() {
            let keep = self.store.root().join("check").join(key);
            let _ = std::fs::remove_dir_all(&keep);
            if let Some(parent) = keep.parent() {
                std::fs::create_dir_all(parent).map_err(FarmError::io(parent))?;
            }
            std::fs::rename(staged.keep(), &keep).map_err(FarmError::io(&keep))?;
        }
        if let Some(list) = &self.check {
            if let Ok(mut v) = list.lock() {
                v.push(c);
            }
        }
        Ok(())
    }

    fn engine_name(&self) -> String {
        format!("{:?} {}", self.conn.info.kind, self.conn.info.version)
    }

    /// The record of pair `index`, before its outcome is known.
    fn record(&self, index: usize, status: Status, exit_code: i32, seconds: f64) -> Record {
        let (plan, pair) = (self.plan, &self.plan.pairs[index]);
        let (source, kernel, image) =
            (&plan.sources[pair.source], &plan.kernels[pair.kernel], &plan.images[pair.image]);
        let reference = self.images.lock().ok().and_then(|i| i[pair.image].clone());
        Record {
            format: super::store::FORMAT,
            key: pair.key.clone(),
            module: source.mv.module.clone(),
            version: source.mv.version.clone(),
            kernel: kernel.release.clone(),
            arch: pair.arch.clone(),
            profile: kernel.profile.clone(),
            source: SourceInfo {
                given: source.given.clone(),
                package: source.origin.as_ref().map(|o| o.package.clone()),
                package_version: source.origin.as_ref().map(|o| o.version.clone()),
                digest: source.digest.clone(),
            },
            status,
            exit_code,
            reason: None,
            modules: Vec::new(),
            make_log: None,
            signer: None,
            image: reference.unwrap_or_default(),
            image_lock: image.lock.clone(),
            extra_packages: image.extra.clone(),
            seconds,
            make_seconds: None,
            built_at: now(),
            engine: self.engine_name(),
            ckms_version: env!("CARGO_PKG_VERSION").to_string(),
            proof: None,
        }
    }

    /// Moves a built dir's files into the staged entry and describes them.
    fn take_built(&self, record: &mut Record, built: &std::path::Path, staged: &std::path::Path) -> Result<(), Error> {
        let manifest = Manifest::read(built)?;
        for m in &manifest.modules {
            let name = m.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let signed = format!("modules/{name}");
            let unsigned = format!("{UNSIGNED}/{}.ko", m.built_name);
            copy(&built.join(&m.file), &staged.join(&signed))?;
            copy(&built.join(&unsigned), &staged.join(&unsigned))?;
            record.modules.push(StoredModule {
                name: m.dest_name.clone(),
                dest: m.dest_location.clone(),
                unsigned: stored_file(staged, &unsigned)?,
                signed: Some(stored_file(staged, &signed)?),
            });
        }
        copy(&built.join(crate::lifecycle::MANIFEST), &staged.join("ckms.json"))?;
        let log = built.join("log/make.log");
        if log.is_file() {
            copy(&log, &staged.join("make.log"))?;
            record.make_log = Some(stored_file(staged, "make.log")?);
        }
        record.make_seconds = manifest.make_seconds;
        if let (Some(s), Some(hash)) = (&self.signing, &manifest.sig_hash) {
            if manifest.signed_by.is_some() {
                record.signer = Some(super::store::Signer {
                    fingerprint: s.fingerprint.clone(),
                    subject: s.subject.clone(),
                    hash: hash.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Where two files first differ, and in which ELF section when both are modules: where a
/// diffoscope would be pointed.
fn first_difference(a: &std::path::Path, b: &std::path::Path) -> String {
    let (Ok(x), Ok(y)) = (std::fs::read(a), std::fs::read(b)) else { return "unreadable".into() };
    let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    let section = crate::verify::modinfo::section_at(&x, at).map(|s| format!(" (section {s})")).unwrap_or_default();
    format!(
        "{} vs {} bytes, first difference at byte {at}{section}; compare with: diffoscope {} {}",
        x.len(),
        y.len(),
        a.display(),
        b.display()
    )
}

fn copy(from: &std::path::Path, to: &std::path::Path) -> Result<(), FarmError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(FarmError::io(dir))?;
    }
    std::fs::copy(from, to).map_err(FarmError::io(to))?;
    Ok(())
}

/// Now, RFC 3339, UTC.
fn now() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Whether a failed build says something about its inputs (stored as failed, as the same
/// inputs fail the same way) rather than about the machine (not stored: tried again next run).
fn about_inputs(e: &Error) -> bool {
    if let Some(b) = e.downcast_ref::<BuildError>() {
        return matches!(b, BuildError::Failed(_) | BuildError::Conf(_));
    }
    if let Some(l) = e.downcast_ref::<LifecycleError>() {
        return !matches!(l, LifecycleError::Io { .. });
    }
    e.downcast_ref::<crate::conf::ConfError>().is_some()
}

#[async_trait::async_trait]
impl Executor for Farm<'_> {
    async fn provision(&self, image: usize) -> Result<(), Error> {
        let spec = &self.plan.images[image];
        let profile = self.ctx.catalog.profile(&spec.profile)?;
        let built = self.ctx.image_of(self.conn.engine.as_ref(), profile, &spec.plan, false).await?;
        if let Ok(mut images) = self.images.lock() {
            images[image] = Some(built.reference);
        }
        Ok(())
    }

    async fn build(&self, index: usize, _job: &Job, jobs: u32) -> Result<Status, Error> {
        let pair = &self.plan.pairs[index];
        let (source, kernel) = (&self.plan.sources[pair.source], &self.plan.kernels[pair.kernel]);
        let roots = self.work.kernel(&kernel.profile, &kernel.release);
        let opts = Options {
            jobs,
            force: true,
            verbose: false,
            depmod: false,
            profile: Some(kernel.profile.clone()),
            visible: Some(pair.visible.clone()),
            keep_unsigned: true,
            keys: self.signing.as_ref().map(|s| s.keys.clone()),
            prebuilt_only: false,
        };
        let lc = Lifecycle::on_engine(self.ctx, roots.clone(), opts, self.conn.clone());
        let target = KernelTarget { release: kernel.release.clone(), arch: Some(pair.arch.clone()) };
        let started = Instant::now();
        let outcome = lc.build(&source.mv, &target).await;
        let staged = self.store.staging(&pair.key)?;
        let seconds = started.elapsed().as_secs_f64();
        let record = match outcome {
            Ok(BuildOutcome::Built { .. } | BuildOutcome::AlreadyBuilt { .. }) => {
                let mut record = self.record(index, Status::Built, 0, seconds);
                let built = roots.built_dir(&source.mv.module, &source.mv.version, &kernel.release, &pair.arch);
                self.take_built(&mut record, &built, staged.path())?;
                record
            }
            Err(e) if about_inputs(&e) => {
                let skipped = matches!(e.downcast_ref::<LifecycleError>(), Some(LifecycleError::Skipped { .. }));
                let status = if skipped { Status::Skipped } else { Status::Failed };
                let mut record = self.record(index, status, e.exit_code(), seconds);
                record.reason = Some(match e.downcast_ref::<LifecycleError>() {
                    Some(LifecycleError::Skipped { reason, .. }) => reason.clone(),
                    _ => e.to_string(),
                });
                if let Some(BuildError::Failed(f)) = e.downcast_ref::<BuildError>() {
                    copy(&f.log, &staged.path().join("make.log"))?;
                    record.make_log = Some(stored_file(staged.path(), "make.log")?);
                }
                record
            }
            Err(e) => return Err(e),
        };
        if self.check.is_some() {
            self.compare(index, &record, staged)?;
        } else {
            self.store.commit(staged, &record)?;
        }
        Ok(record.status)
    }
}
