//! `ckms farm kube pod`: what one index of a build Job runs, inside its pod. It does what
//! `driver.sh` and the host do together for a local build (the conf evaluated by bash, the
//! plan resolved for the kernel, make, the checks), with the pod as the sandbox and no engine:
//! the driver runs as a child process ([`super::process::ProcessRunner`]), the plan is
//! resolved here, and the run is written to the pod's own result directory for `collect`.
//! No key, no registry credential, no network: nothing is signed or pushed from a pod.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::plan::{Claim, JobPlan, PodPair, IN_IMAGE, RESULT};
use super::process::ProcessRunner;
use super::KubeError;
use crate::build::{self, run_build, BuildError, BuildSpec, Ran, Sibling};
use crate::conf::{self, BuildPlan, ConfError, DestPolicy, KernelFacts, RawConf, Resolved};
use crate::profile::Recipe;

/// What the pod did, for its log.
#[derive(Debug)]
pub enum PodOutcome {
    Built {
        modules: usize,
    },
    /// The build ran and failed, or the conf said not to build: a result all the same.
    NotBuilt {
        exit_code: i64,
    },
    Stopped {
        reason: String,
    },
}

/// The Job's plan in the pod's image.
pub fn job_file() -> PathBuf {
    Path::new(IN_IMAGE).join("job.json")
}

/// Builds index `index` of the Job whose plan is at `plan_path`, writing into `results` (the
/// pod's own directory of the results volume).
pub async fn run(recipe: &Recipe, plan_path: &Path, index: usize, results: &Path) -> Result<PodOutcome, KubeError> {
    let j = JobPlan::read(plan_path)?;
    let job = j.name.as_str();
    let pair = j.pairs.get(index).ok_or_else(|| KubeError::Result {
        dir: plan_path.to_path_buf(),
        message: format!("Job {job} has {} indexes, not {}", j.pairs.len(), index + 1),
    })?;
    // A retried index starts from an empty directory: nothing of a killed attempt is kept.
    clear(results)?;
    let outcome = build(recipe, &j, pair, results).await?;
    let claim = Claim {
        job: job.to_string(),
        index,
        key: pair.key.clone(),
        module: pair.module.clone(),
        version: pair.version.clone(),
        kernel: j.kernel.clone(),
    };
    let path = results.join(RESULT);
    std::fs::write(&path, serde_json::to_vec_pretty(&claim).unwrap_or_default()).map_err(KubeError::io(&path))?;
    Ok(outcome)
}

fn clear(dir: &Path) -> Result<(), KubeError> {
    std::fs::create_dir_all(dir).map_err(KubeError::io(dir))?;
    for e in std::fs::read_dir(dir).map_err(KubeError::io(dir))?.flatten() {
        let p = e.path();
        let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        gone.map_err(KubeError::io(&p))?;
    }
    Ok(())
}

pub fn source_dir(module: &str, version: &str) -> PathBuf {
    Path::new(IN_IMAGE).join("src").join(format!("{module}-{version}"))
}

async fn build(recipe: &Recipe, j: &JobPlan, pair: &PodPair, results: &Path) -> Result<PodOutcome, KubeError> {
    let source = source_dir(&pair.module, &pair.version);
    let conf_path = source.join("dkms.conf");
    let conf = std::fs::read(&conf_path).map_err(KubeError::io(&conf_path))?;
    let overrides: Vec<(String, Vec<u8>)> =
        pair.overrides.iter().map(|(n, t)| (n.clone(), t.clone().into_bytes())).collect();
    let siblings: Vec<Sibling> = pair
        .visible
        .iter()
        .map(|(m, v)| Sibling { module: m.clone(), version: v.clone(), source: source_dir(m, v), built: None })
        .collect();
    let vars = build::vars(&pair.module, &pair.version, &j.kernel, &pair.arch);
    let origin = conf_path.display().to_string();
    let job = BuildSpec {
        recipe,
        image: &j.image,
        source: &source,
        siblings: &siblings,
        image_sources: j.image_sources.as_deref(),
        conf: &conf,
        overrides: &overrides,
        origin: &origin,
        vars: &vars,
        jobs: j.make_jobs,
        timeout: Duration::from_secs(j.timeout_secs),
        space_bytes: j.space_bytes,
        memory_bytes: j.memory_bytes,
        pids: j.pids,
        follow: None,
    };
    let facts = KernelFacts { release: j.kernel.clone(), arch: pair.arch.clone(), config: j.kernel_config.clone() };
    let policy = DestPolicy::Override(j.module_location.clone());
    let stopped = std::sync::Mutex::new(None);
    let resolve = |raw: Result<RawConf, ConfError>| -> Option<Box<BuildPlan>> {
        let why = match raw.and_then(|raw| conf::resolve(&raw, &facts, &policy)) {
            Ok(Resolved::Build(plan)) if plan.build_depends.is_empty() => return Some(plan),
            Ok(Resolved::Build(_)) => "BUILD_DEPENDS: built by `ckms farm build`, not in pods".to_string(),
            Ok(Resolved::Skipped { reason }) => reason,
            Err(e) => e.to_string(),
        };
        if let Ok(mut s) = stopped.lock() {
            *s = Some(why);
        }
        None
    };
    let runner = ProcessRunner::new(results, &recipe.config.env);
    let scratch = tempfile::tempdir().map_err(KubeError::io(Path::new("/tmp")))?;
    let ran = run_build(&runner, &job, &resolve, scratch.path()).await;
    Ok(match ran {
        Ok(Ran::Built { built, .. }) if built.status == 0 && !built.timed_out => {
            PodOutcome::Built { modules: built.modules.len() }
        }
        Ok(Ran::Built { built, .. }) => PodOutcome::NotBuilt { exit_code: built.status },
        Ok(Ran::Stopped) => PodOutcome::Stopped { reason: stopped.into_inner().ok().flatten().unwrap_or_default() },
        // The conf could not be evaluated: the transcript says so, collect stores the failure.
        Err(BuildError::Conf(e)) => PodOutcome::Stopped { reason: e.to_string() },
        Err(e) => {
            return Err(KubeError::Result {
                dir: results.to_path_buf(),
                message: format!("the build could not run: {e}"),
            })
        }
    })
}
