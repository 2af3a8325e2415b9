//! The farm's side of one pair: realised through the pair core ([`crate::pair::realise`]) on
//! whatever runner is given (an engine here, a pod's transcript for `farm kube collect`), the
//! staged result moved into the store under the pair's key with its record. [`OnEngine`] is the
//! real [`Executor`]: it provisions builder images and builds on one engine.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::plan::{FarmPlan, Work};
use super::schedule::{Executor, Task};
use super::store::{self, stored_file, Lookup, Record, SourceInfo, Staging, Status, Store, StoredModule};
use super::FarmError;
use crate::build::{BuiltView, Sibling};
use crate::conf::{BuildPlan, KernelFacts};
use crate::context::Context;
use crate::diagnose::{code, Diagnose};
use crate::engine::{Connection, Images, Runner};
use crate::pair::inputs::{self, KeyedPair};
use crate::pair::manifest::FILE as MANIFEST;
use crate::pair::realise::{self, Depends, Key, Limits, Realise, Realised, SignWith, Staged, UNSIGNED};
use crate::pair::PairError;
use crate::sign::{self, Signer};
use crate::verify::modinfo;

/// Who signs: the key pair, loaded once for every pair, and what the records say of it.
#[derive(Clone)]
pub struct Signing {
    pub signer: Arc<Signer>,
    pub fingerprint: String,
    pub subject: String,
}

pub struct Farm<'a> {
    pub ctx: &'a Context,
    pub plan: &'a FarmPlan,
    pub store: &'a Store,
    pub work: &'a Work,
    pub signing: Option<Signing>,
    /// Each image's reference once provisioned.
    images: Mutex<Vec<Option<String>>>,
    /// `--check`: rebuilt pairs are compared with their stored entry instead of stored.
    check: Option<Mutex<Vec<Checked>>>,
    /// `--retry-failed`: an entry stored as failed is built again, not taken.
    retry_failed: bool,
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
        plan: &'a FarmPlan,
        store: &'a Store,
        work: &'a Work,
        signing: Option<Signing>,
    ) -> Farm<'a> {
        let images = Mutex::new(vec![None; plan.images.len()]);
        Farm { ctx, plan, store, work, signing, images, check: None, retry_failed: false }
    }

    /// Rebuilds compare instead of store ([`Farm::checked`] tells what they found).
    pub fn checking(mut self) -> Self {
        self.check = Some(Mutex::new(Vec::new()));
        self
    }

    /// Entries stored as failed are built again (`--retry-failed`).
    pub fn retrying_failed(mut self) -> Self {
        self.retry_failed = true;
        self
    }

    pub fn checked(&self) -> Vec<Checked> {
        let mut out = self.check.as_ref().and_then(|c| c.lock().ok().map(|v| v.clone())).unwrap_or_default();
        out.sort_by_key(|c| c.pair);
        out
    }

    /// Makes the builder image `image` ready on `engine` (up to date: no I/O).
    pub async fn provision(&self, engine: &dyn Images, image: usize) -> Result<(), FarmError> {
        let spec = &self.plan.images[image];
        let profile = self.ctx.catalog.profile(&spec.profile)?;
        let built = self.ctx.image_of(engine, profile, &spec.plan, false).await?;
        self.provided(image, built.reference);
        Ok(())
    }

    /// The builder image `image` is `reference` (provisioned elsewhere: a pod's).
    pub fn provided(&self, image: usize, reference: String) {
        if let Ok(mut images) = self.images.lock() {
            images[image] = Some(reference);
        }
    }

    /// Realises pair `index` on `runner` (whose engine the record names) with `make -j<jobs>`,
    /// and stores how it ended (or, with `--check`, compares it with the stored entry). Stored
    /// under the pair's lock: when another run stored the pair meanwhile, its entry is taken.
    pub async fn realise(
        &self,
        index: usize,
        runner: &dyn Runner,
        engine: &str,
        jobs: u32,
    ) -> Result<Status, FarmError> {
        if self.check.is_some() {
            let (entry, record) = self.stage(index, runner, engine, jobs).await?;
            self.compare(index, &record, entry)?;
            return Ok(record.status);
        }
        let reuse = |r: &Record| !(self.retry_failed && r.status == Status::Failed);
        store::once(self.store, &self.plan.pairs[index].key, reuse, || self.stage(index, runner, engine, jobs)).await
    }

    /// Realises pair `index` into a staged entry and its record.
    async fn stage(
        &self,
        index: usize,
        runner: &dyn Runner,
        engine: &str,
        jobs: u32,
    ) -> Result<(Staging, Record), FarmError> {
        let started = Instant::now();
        let (ctx, pair) = (self.ctx, &self.plan.pairs[index]);
        let (source, kernel) = (&self.plan.sources[pair.source], &self.plan.kernels[pair.kernel]);
        let profile = ctx.catalog.profile(&kernel.profile)?;
        let index_of = ctx.index(profile).await?;
        let kconfig = crate::kernel::config(&ctx.cache, &index_of, kernel, ctx.reporter()).await?;
        let image = self.image(pair)?;
        let roots = self.work.sources(&kernel.profile);
        let dir = roots.source_tree.join(format!("{}-{}", source.mv.module, source.mv.version));
        let siblings = self.siblings(pair, &roots.source_tree);
        let overrides = inputs::overrides(&ctx.config.conf_dir(), &source.mv, &kernel.release, &pair.arch);
        let hash = kconfig.as_deref().and_then(sign::kernel_hash);
        let signing = match (&self.signing, hash) {
            (Some(s), Some(hash)) => Some(SignWith { hash, key: Key::Loaded(&s.signer) }),
            _ => None,
        };
        let r = Realise {
            mv: &source.mv,
            source: &dir,
            siblings: &siblings,
            overrides: &overrides,
            recipe: ctx.catalog.recipe("builder")?,
            image: &image,
            profile,
            kernel: KernelFacts { release: kernel.release.clone(), arch: pair.arch.clone(), config: kconfig },
            jobs,
            limits: Limits::of(&ctx.config),
            follow: None,
            signing,
            report: ctx.reporter(),
        };
        let work = self.work.scratch()?;
        let depends = |plan: &BuildPlan| self.depends(pair, &siblings, plan);
        let realised = realise::realise(runner, &r, &depends, work.path()).await;
        let mut record = self.record(index, &image, engine, started.elapsed().as_secs_f64());
        let entry = self.store.staging(&pair.key)?;
        match realised {
            Ok(Realised::Built(staged)) => self.take(&mut record, &staged, entry.path())?,
            Ok(Realised::Skipped { reason }) => record.ended(Status::Skipped, code::SKIPPED, reason),
            Ok(Realised::Failed(mut failed)) => {
                let path = entry.path().join("make.log");
                std::fs::write(&path, std::mem::take(&mut failed.log)).map_err(FarmError::io(&path))?;
                record.make_log = Some(stored_file(entry.path(), "make.log")?);
                let error = failed.into_error(&source.mv, &kernel.release, &pair.arch, path);
                record.ended(Status::Failed, error.exit_code(), error.to_string());
            }
            Ok(Realised::NeedsDependencies(deps)) => record.ended(
                Status::Failed,
                code::MISSING_DEPENDS,
                format!(
                    "{} needs {} built first (BUILD_DEPENDS): not built for this kernel",
                    source.mv,
                    deps.join(", ")
                ),
            ),
            Ok(Realised::Refused(e)) => record.ended(Status::Failed, e.exit_code(), e.to_string()),
            // The same inputs fail the same way: stored. Else the machine failed: tried again next run.
            Err(e) if e.about_inputs() => record.ended(Status::Failed, e.exit_code(), e.to_string()),
            Err(e) => return Err(e.into()),
        }
        drop(work);
        Ok((entry, record))
    }

    fn image(&self, pair: &KeyedPair) -> Result<String, FarmError> {
        let provisioned = self.images.lock().ok().and_then(|i| i[pair.image].clone());
        provisioned.ok_or_else(|| FarmError::Store {
            path: self.store.root().to_path_buf(),
            message: format!("the builder image for {} was not provisioned", self.plan.kernels[pair.kernel].release),
        })
    }

    /// The modules pair `pair` declares, as its build sees them: their sources from the farm's
    /// source tree, and their modules for the same kernel when their pair is stored as built.
    fn siblings(&self, pair: &KeyedPair, source_tree: &Path) -> Vec<Sibling> {
        pair.visible
            .iter()
            .filter_map(|mv| {
                let source = source_tree.join(format!("{}-{}", mv.module, mv.version));
                if !source.join("dkms.conf").is_file() {
                    return None;
                }
                let theirs =
                    self.plan.pairs.iter().find(|p| p.kernel == pair.kernel && self.plan.sources[p.source].mv == *mv);
                let built = theirs.and_then(|p| match self.store.get(&p.key) {
                    Lookup::Found(r) if r.status == Status::Built => {
                        Some(BuiltView { modules: self.store.entry_dir(&p.key).join("modules"), log: None })
                    }
                    _ => None,
                });
                Some(Sibling { module: mv.module.clone(), version: mv.version.clone(), source, built })
            })
            .collect()
    }

    /// The store's answer on a plan's BUILD_DEPENDS: each must be a declared sibling whose pair
    /// is built for this kernel (the schedule builds it first).
    fn depends(&self, pair: &KeyedPair, siblings: &[Sibling], plan: &BuildPlan) -> Depends {
        let mv = &self.plan.sources[pair.source].mv;
        let mut unbuilt = Vec::new();
        for dep in &plan.build_depends {
            let (module, version, dependency) = (mv.module.clone(), mv.version.clone(), dep.clone());
            if *dep == mv.module {
                return Depends::Refused(PairError::DependencyCycle { module, version, dependency });
            }
            match siblings.iter().find(|s| s.module == *dep) {
                None => return Depends::Refused(PairError::MissingDepends { module, version, dependency }),
                Some(s) if s.built.is_none() => unbuilt.push(dep.clone()),
                Some(_) => {}
            }
        }
        if unbuilt.is_empty() {
            Depends::Met
        } else {
            Depends::Unbuilt(unbuilt)
        }
    }

    /// The record of pair `index`, before its outcome is known.
    fn record(&self, index: usize, image: &str, engine: &str, seconds: f64) -> Record {
        let (plan, pair) = (self.plan, &self.plan.pairs[index]);
        let (source, kernel, spec) = (&plan.sources[pair.source], &plan.kernels[pair.kernel], &plan.images[pair.image]);
        Record {
            format: store::FORMAT,
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
            status: Status::Built,
            exit_code: 0,
            reason: None,
            modules: Vec::new(),
            make_log: None,
            signer: None,
            image: image.to_string(),
            image_lock: spec.lock.clone(),
            extra_packages: spec.extra.clone(),
            seconds,
            make_seconds: None,
            built_at: now(),
            engine: engine.to_string(),
            ckms_version: env!("CARGO_PKG_VERSION").to_string(),
            proof: None,
        }
    }

    /// Copies a staged result's files into the entry `entry` and describes them in `record`:
    /// `modules/` (signed, compressed), `unsigned/`, `make.log`, `ckms.json`.
    fn take(&self, record: &mut Record, staged: &Staged, entry: &Path) -> Result<(), FarmError> {
        let manifest = &staged.manifest;
        for m in &manifest.modules {
            let name = m.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let signed = format!("modules/{name}");
            let unsigned = format!("{UNSIGNED}/{}.ko", m.built_name);
            copy(&staged.dir.join(&m.file), &entry.join(&signed))?;
            copy(&staged.dir.join(&unsigned), &entry.join(&unsigned))?;
            record.modules.push(StoredModule {
                name: m.dest_name.clone(),
                dest: m.dest_location.clone(),
                unsigned: stored_file(entry, &unsigned)?,
                signed: Some(stored_file(entry, &signed)?),
            });
        }
        copy(&staged.dir.join(MANIFEST), &entry.join("ckms.json"))?;
        let log = staged.dir.join("log/make.log");
        if log.is_file() {
            copy(&log, &entry.join("make.log"))?;
            record.make_log = Some(stored_file(entry, "make.log")?);
        }
        record.make_seconds = manifest.make_seconds;
        if let (Some(s), Some(hash), Some(_)) = (&self.signing, &manifest.sig_hash, &manifest.signed_by) {
            record.signer = Some(store::SignedBy {
                fingerprint: s.fingerprint.clone(),
                subject: s.subject.clone(),
                hash: hash.clone(),
            });
        }
        Ok(())
    }

    /// Compares a rebuilt entry with the stored one; a differing one is kept in
    /// `<store>/check/<key>/` to be looked at.
    fn compare(&self, index: usize, rebuilt: &Record, staged: Staging) -> Result<(), FarmError> {
        let key = &self.plan.pairs[index].key;
        let mut c = Checked { pair: index, differs: Vec::new(), compared: 0, status: None };
        let stored = match self.store.get(key) {
            Lookup::Found(r) => r,
            Lookup::Damaged(d) => {
                c.status = Some(format!("the stored entry is damaged: {}", d.why));
                Box::new(rebuilt.clone())
            }
            Lookup::Missing => {
                c.status = Some("the stored entry is gone".into());
                Box::new(rebuilt.clone())
            }
        };
        if stored.status != rebuilt.status {
            c.status = Some(format!("stored {}, rebuilt {}", stored.status, rebuilt.status));
        }
        let dir = self.store.entry_dir(key);
        let theirs: Vec<&store::StoredFile> = module_files(&stored).collect();
        for f in module_files(rebuilt) {
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
        // And what the rebuild did not make at all.
        let ours: Vec<&String> = module_files(rebuilt).map(|f| &f.file).collect();
        for t in theirs.iter().filter(|t| !ours.contains(&&t.file)) {
            c.compared += 1;
            c.differs.push(format!("{}: stored, but not made by the rebuild", t.file));
        }
        if !c.differs.is_empty() || c.status.is_some() {
            let keep = self.store.root().join("check").join(key);
            let _ = std::fs::remove_dir_all(&keep);
            if let Some(parent) = keep.parent() {
                std::fs::create_dir_all(parent).map_err(FarmError::io(parent))?;
            }
            staged.keep_at(&keep)?;
        }
        if let Some(list) = &self.check {
            if let Ok(mut v) = list.lock() {
                v.push(c);
            }
        }
        Ok(())
    }
}

impl Record {
    /// How a pair that did not build ended.
    fn ended(&mut self, status: Status, exit_code: i32, reason: String) {
        (self.status, self.exit_code, self.reason) = (status, exit_code, Some(reason));
    }
}

/// Every module file of an entry, unsigned and signed.
fn module_files(r: &Record) -> impl Iterator<Item = &store::StoredFile> {
    r.modules.iter().flat_map(|m| std::iter::once(&m.unsigned).chain(&m.signed))
}

/// The farm on one engine: images provisioned there, every pair built there. The schedule
/// numbers its tasks 0..n; `todo` maps them to the plan's pairs.
pub struct OnEngine<'a> {
    pub farm: &'a Farm<'a>,
    pub conn: Arc<Connection>,
    pub todo: &'a [usize],
}

#[async_trait::async_trait]
impl Executor for OnEngine<'_> {
    async fn provision(&self, image: usize) -> Result<(), FarmError> {
        self.farm.provision(self.conn.engine.as_ref(), image).await
    }

    async fn build(&self, index: usize, _task: &Task, jobs: u32) -> Result<Status, FarmError> {
        let engine = format!("{:?} {}", self.conn.info.kind, self.conn.info.version);
        self.farm.realise(self.todo[index], self.conn.engine.as_ref(), &engine, jobs).await
    }
}

/// Where two files first differ, and in which ELF section when both are modules: where a
/// diffoscope would be pointed.
fn first_difference(a: &Path, b: &Path) -> String {
    let (Ok(x), Ok(y)) = (std::fs::read(a), std::fs::read(b)) else { return "unreadable".into() };
    let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    let section = modinfo::section_at(&x, at).map(|s| format!(" (section {s})")).unwrap_or_default();
    format!(
        "{} vs {} bytes, first difference at byte {at}{section}; compare with: diffoscope {} {}",
        x.len(),
        y.len(),
        a.display(),
        b.display()
    )
}

/// Copies a staged file into the entry (the farm's work area may be on another file system
/// than the store).
fn copy(from: &Path, to: &Path) -> Result<(), FarmError> {
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
