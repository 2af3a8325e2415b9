//! `ckms farm kube collect`: the pods' results into the store, on this machine.
//!
//! The plan is evaluated again from what `render` was given; a rendered pair whose key this
//! machine does not compute is refused. Each index's result must claim its own pair; its
//! transcript is then played back ([`super::replay::ReplayRunner`]) through the farm's own
//! one-pair build, so it passes the checks a local build passes (the conf resolved here must
//! give the plan the pod ran, outputs unpacked as untrusted, the planned modules present)
//! and is signed here, never in the cluster, and stored under its key.
//!
//! A pod writes its directory as it likes: every name its result gives is a plain relative
//! path inside that directory, and only regular files within their limits are read
//! ([`crate::confine`]), all checked before anything of the result is used. `--check` (the
//! CLI) collects into a side store, rebuilds a random sample here and [`transfer`]s the
//! entries only when every rebuild agrees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::plan::{Claim, KubePlan, RESULT};
use super::replay::ReplayRunner;
use super::transcript::Transcript;
use super::KubeError;
use crate::confine;
use crate::context::Context;
use crate::engine::{EngineError, ImageSummary, Images};
use crate::farm::exec::{Farm, Signing};
use crate::farm::plan::{FarmPlan, Work};
use crate::farm::store::{Lookup, Status, Store};
use crate::pair::manifest::FILE as MANIFEST;

/// What `collect` did, pair by pair.
#[derive(Debug, Default, serde::Serialize)]
pub struct Collected {
    /// Stored now: the pair and how it ended (built, failed, skipped).
    pub stored: Vec<(String, Status)>,
    /// Results refused, with why: nothing of them was stored.
    pub refused: Vec<String>,
    /// Indexes with no result: their pods failed before writing one.
    pub missing: Vec<String>,
}

pub async fn collect(
    ctx: &Context,
    plan: &FarmPlan,
    work: &Work,
    store: &Store,
    kube: &KubePlan,
    from: &Path,
    signing: Option<Signing>,
) -> Result<Collected, KubeError> {
    let mut done = Collected::default();
    let images = kube.images();
    let farm = Farm::new(ctx, plan, store, work, signing);
    for job in &kube.jobs {
        unexpected(from, &job.name, job.pairs.len(), &mut done.refused)?;
        for (index, pp) in job.pairs.iter().enumerate() {
            let label = format!("{}/{} on {} ({} index {index})", pp.module, pp.version, job.kernel, job.name);
            let Some(i) = plan.pairs.iter().position(|p| p.key == pp.key) else {
                done.refused.push(format!(
                    "{label}: this machine computes another key for the pair (its sources or packages changed \
                     since render): render again"
                ));
                continue;
            };
            let dir = from.join(&job.name).join(index.to_string());
            // Whatever is there is read as a result (and refused if it is a link or no file).
            if dir.join(RESULT).symlink_metadata().is_err() {
                done.missing.push(format!(
                    "{label}: no result in {}: the pod failed before writing one (kubectl logs -l \
                     job-name={},batch.kubernetes.io/job-completion-index={index})",
                    dir.display(),
                    job.name
                ));
                continue;
            }
            // Every file the result names is checked before anything of it is used.
            let checked = claimed(&dir, &job.name, index, pp).and_then(|()| Transcript::read(&dir));
            let transcript = match checked.and_then(|t| t.verify(&dir).map(|()| t)) {
                Ok(t) => t,
                Err(e) => {
                    done.refused.push(format!("{label}: {e}"));
                    continue;
                }
            };
            // The build's time is the pod's, not the replay's (a statistic: kept sane).
            let seconds = if transcript.seconds.is_finite() { transcript.seconds.max(0.0) } else { 0.0 };
            // The image this machine plans must be the one the pods ran in.
            let rendered = Rendered { dir: dir.clone(), images: images.clone() };
            let result = match farm.provision(&rendered, plan.pairs[i].image).await {
                Ok(()) => farm.realise(i, &ReplayRunner::new(&dir, transcript), ENGINE, job.make_jobs).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(status) => {
                    store.amend(&pp.key, |r| r.seconds = seconds)?;
                    done.stored.push((label, status))
                }
                Err(e) => done.refused.push(format!("{label}: {e}")),
            }
        }
    }
    Ok(done)
}

/// What the records of collected pairs name as their engine.
const ENGINE: &str = "Kubernetes pod";
/// The most `result.json` (a job name, an index, a key, a module, a version) may hold.
const MAX_CLAIM: u64 = 64 << 10;

/// The builder images the pods ran in, known by tag as rendered: never loaded, listed or
/// removed here.
struct Rendered {
    /// The pair's result directory, for messages.
    dir: PathBuf,
    /// Tag → image ID.
    images: BTreeMap<String, String>,
}

impl Rendered {
    fn refuse(&self, message: String) -> EngineError {
        EngineError::Runner(Box::new(KubeError::Replay { dir: self.dir.clone(), message }))
    }
}

#[async_trait::async_trait]
impl Images for Rendered {
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        Ok(self.images.get(reference).cloned())
    }
    async fn image_layers(&self, reference: &str) -> Result<Vec<String>, EngineError> {
        Err(EngineError::ImageNotFound { endpoint: "farm kube collect".into(), reference: reference.into() })
    }
    /// The pods' images were rendered from the same plan: one that differs is a plan changed
    /// since `render`.
    async fn load_image(&self, archive: &Path) -> Result<(), EngineError> {
        Err(self.refuse(format!(
            "the builder image is not the one the pods ran in ({}): the packages changed since `farm kube render`",
            archive.display()
        )))
    }
    async fn list_images(&self, _label: &str) -> Result<Vec<ImageSummary>, EngineError> {
        Ok(Vec::new())
    }
    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        Err(self.refuse(format!("replayed runs remove no images ({reference})")))
    }
}

/// The pod's claim must be the pair its index was given.
fn claimed(dir: &Path, job: &str, index: usize, pp: &super::plan::PodPair) -> Result<(), KubeError> {
    let bytes = confine::read_inside(dir, RESULT, MAX_CLAIM)?;
    let claim: Claim = serde_json::from_slice(&bytes)
        .map_err(|e| KubeError::Result { dir: dir.to_path_buf(), message: format!("{RESULT}: {e}") })?;
    let given = (job, index, pp.key.as_str(), pp.module.as_str(), pp.version.as_str());
    if (claim.job.as_str(), claim.index, claim.key.as_str(), claim.module.as_str(), claim.version.as_str()) != given {
        return Err(KubeError::WrongPair {
            dir: dir.to_path_buf(),
            expected: format!("{}/{} (key {}, {job} index {index})", pp.module, pp.version, short(&pp.key)),
            found: format!(
                "{}/{} (key {}, {} index {})",
                claim.module,
                claim.version,
                short(&claim.key),
                claim.job,
                claim.index
            ),
        });
    }
    Ok(())
}

/// `n` of `among`, chosen at random: which pairs `collect --check` rebuilds, which no pod can
/// know beforehand.
pub fn choose<T: std::hash::Hash + Clone>(n: usize, among: &[T]) -> Vec<T> {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    let mut all = among.to_vec();
    all.sort_by_cached_key(|x| seed.hash_one(x));
    all.truncate(n);
    all
}

/// Copies the entry `key` of `from` (where `collect --check` collected) into `to`: checked
/// against its record when read, and again when committed.
pub fn transfer(from: &Store, to: &Store, key: &str) -> Result<(), KubeError> {
    let dir = from.entry_dir(key);
    let record = match from.get(key) {
        Lookup::Found(r) => r,
        Lookup::Damaged(damage) => return Err(KubeError::Result { dir, message: damage.to_string() }),
        Lookup::Missing => return Err(KubeError::Result { dir, message: "not collected".into() }),
    };
    let staged = to.staging(key)?;
    let names = record.files().map(|f| f.file.clone()).chain([MANIFEST.to_string()]);
    for name in names {
        let (from, to) = (dir.join(&name), staged.path().join(&name));
        // A failed pair has no build record.
        if !from.is_file() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(KubeError::io(parent))?;
        }
        std::fs::copy(&from, &to).map_err(KubeError::io(&to))?;
    }
    to.commit(staged, &record)?;
    Ok(())
}

fn short(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

/// Result directories of `job` that no index was given: named, never read.
fn unexpected(from: &Path, job: &str, indexes: usize, refused: &mut Vec<String>) -> Result<(), KubeError> {
    let dir = from.join(job);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    let mut extra: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<usize>().map_or(true, |i| i >= indexes))
        .collect();
    extra.sort();
    for name in extra {
        refused.push(format!("{}: not an index of {job} ({indexes} indexes): ignored", dir.join(name).display()));
    }
    Ok(())
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::plan::PodPair;

    fn pair(key: &str) -> PodPair {
        PodPair {
            key: key.into(),
            module: "m".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            visible: vec![],
            overrides: vec![],
        }
    }

    fn claim(dir: &Path, job: &str, index: usize, key: &str) {
        let c = Claim {
            job: job.into(),
            index,
            key: key.into(),
            module: "m".into(),
            version: "1".into(),
            kernel: "k".into(),
        };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(RESULT), serde_json::to_vec(&c).unwrap()).unwrap();
    }

    #[test]
    fn a_result_claiming_another_pair_or_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), "j", 0, "aaaa");
        assert!(claimed(dir.path(), "j", 0, &pair("aaaa")).is_ok());
        let e = claimed(dir.path(), "j", 0, &pair("bbbb")).unwrap_err();
        assert!(e.to_string().contains("but that index builds m/1 (key bbbb"), "{e}");
        let e = claimed(dir.path(), "j", 1, &pair("aaaa")).unwrap_err();
        assert!(matches!(e, KubeError::WrongPair { .. }), "{e}");
        std::fs::write(dir.path().join(RESULT), b"{").unwrap();
        assert!(matches!(claimed(dir.path(), "j", 0, &pair("aaaa")), Err(KubeError::Result { .. })));
    }

    #[test]
    fn choose_takes_n_distinct_of_the_list_in_no_fixed_order() {
        let all: Vec<u32> = (0..64).collect();
        let some = choose(5, &all);
        assert_eq!(some.len(), 5);
        assert!(some.iter().all(|x| all.contains(x)));
        assert_eq!(some.iter().collect::<std::collections::BTreeSet<_>>().len(), 5);
        assert_eq!(choose(100, &all[..3]).len(), 3);
        // Drawn again, another sample (64 choose 5 samples: equal ten times is a broken draw).
        assert!((0..10).any(|_| choose(5, &all) != some));
    }

    #[test]
    fn directories_no_index_was_given_are_named() {
        let from = tempfile::tempdir().unwrap();
        for d in ["0", "1", "2", "x"] {
            std::fs::create_dir_all(from.path().join("j").join(d)).unwrap();
        }
        let mut refused = Vec::new();
        unexpected(from.path(), "j", 2, &mut refused).unwrap();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("j/2: not an index of j (2 indexes)"), "{refused:?}");
        assert!(refused[1].contains("j/x"), "{refused:?}");
    }
}
