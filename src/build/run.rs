//! One sandboxed build: the source goes in as a tar, `driver.sh` runs the steps dkms would,
//! make.log and the stripped modules come back as a tar.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BuildError;
use crate::conf::{BuildPlan, EvalContext};
use crate::engine::Engine;
use crate::profile::Recipe;

/// dkms's tree as the container sees it: real MAKE lines name `$dkms_tree/<m>/<v>/build`, and
/// some Makefiles hard-code /var/lib/dkms. It is the build's one writable volume.
pub const CONTAINER_TREE: &str = "/var/lib/dkms";
/// ckms's files in that volume (the driver, the results).
const CKMS_DIR: &str = ".ckms";
/// The most a build may send back (modules and make.log).
const MAX_OUTPUT: u64 = 2 << 30;

/// What to build, where.
pub struct Job<'a> {
    pub recipe: &'a Recipe,
    pub image: &'a str,
    /// The module's source on the host (`<source_tree>/<m>-<v>`).
    pub source: &'a Path,
    pub plan: &'a BuildPlan,
    /// dkms's variables as the container sees them (kernelver, arch, dkms_tree, ...).
    pub vars: &'a EvalContext,
    pub jobs: u32,
    pub timeout: Duration,
    /// The most disk space the build may use; past it the build is stopped.
    pub space_bytes: i64,
    /// Memory and process limits of the build container (None: the defaults of
    /// [`crate::image::run_spec`]).
    pub memory_bytes: Option<i64>,
    pub pids: Option<i64>,
}

/// The driver's exit statuses (see driver.sh).
pub mod status {
    pub const PATCH_FAILED: i64 = 6;
    pub const MODULE_MISSING: i64 = 7;
    pub const MAKE_FAILED: i64 = 10;
    pub const MODULE_IS_LINK: i64 = 17;
    pub const SPACE_EXCEEDED: i64 = 34;
}

/// What came back from a build, unpacked into a host directory.
#[derive(Debug)]
pub struct Built {
    /// The container's exit status: 0 built, else one of [`status`].
    pub status: i64,
    pub timed_out: bool,
    /// The build wrote more than its space limit and was stopped.
    pub space_exceeded: bool,
    /// What the build returned that was not accepted (links, devices, paths climbing out),
    /// and why; left out, never followed.
    pub refused: Vec<(String, &'static str)>,
    /// The driver's own output (script messages, not make's).
    pub log: Vec<u8>,
    /// make.log, if the build got that far.
    pub make_log: Option<PathBuf>,
    /// The stripped modules, one per planned module that was built.
    pub modules: Vec<PathBuf>,
}

/// Runs `job` and unpacks its results into `dest` (a fresh directory on the host).
pub async fn run_build(engine: &dyn Engine, job: &Job<'_>, dest: &Path) -> Result<Built, BuildError> {
    let plan = job.plan;
    let (m, v) = (&plan.package_name, &plan.package_version);
    let build_dir = format!("{CONTAINER_TREE}/{m}/{v}/build");
    let ckms_dir = format!("{CONTAINER_TREE}/{CKMS_DIR}");
    let mut input = tar::Builder::new(Vec::new());
    let source = crate::artifact::pack_dir(job.source, &format!("{m}/{v}/build"))?;
    append_tar(&mut input, &source).map_err(BuildError::Input)?;
    let driver = include_str!("driver.sh").as_bytes();
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    input.append_data(&mut dir, CKMS_DIR, std::io::empty()).map_err(BuildError::Input)?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(driver.len() as u64);
    input.append_data(&mut h, format!("{CKMS_DIR}/driver.sh"), driver).map_err(BuildError::Input)?;
    let input = input.into_inner().map_err(BuildError::Input)?;

    let modules: String = plan
        .modules
        .iter()
        .map(|m| {
            let dir = if m.built_location.is_empty() { String::new() } else { format!("{}/", m.built_location) };
            format!("{dir}{}.ko\t{}\n", m.built_name, if m.strip { "yes" } else { "no" })
        })
        .collect();
    let cmd = vec!["bash".into(), format!("{ckms_dir}/driver.sh")];
    let mut spec = crate::image::run_spec(job.recipe, job.image, cmd, Some(input), job.timeout);
    spec.scratch = CONTAINER_TREE.to_string();
    spec.workdir = build_dir.clone();
    spec.outputs = vec![format!("{ckms_dir}/out")];
    spec.env.extend(crate::conf::eval_env(job.vars));
    if job.memory_bytes.is_some() {
        spec.limits.memory_bytes = job.memory_bytes;
    }
    if job.pids.is_some() {
        spec.limits.pids = job.pids;
    }
    let header = format!("DKMS make.log for {m}-{v} for kernel {} ({})", plan.kernel_release, job.vars.arch);
    let hooks = &plan.hooks;
    for (name, value) in [
        ("ckms_build_dir", build_dir.clone()),
        ("ckms_out", format!("{ckms_dir}/out")),
        ("ckms_space_kib", (job.space_bytes / 1024).to_string()),
        ("ckms_make", plan.make_command(job.jobs)),
        ("ckms_patches", plan.patches.join("\n")),
        ("ckms_post_add", hooks.post_add.clone().unwrap_or_default()),
        ("ckms_pre_build", hooks.pre_build.clone().unwrap_or_default()),
        ("ckms_post_build", hooks.post_build.clone().unwrap_or_default()),
        ("ckms_modules", modules),
        ("ckms_header", header),
    ] {
        spec.env.push(format!("{name}={value}"));
    }

    let outcome = engine.run(&spec).await?;
    let mut written = Vec::new();
    let mut refused = Vec::new();
    for (_, tar) in &outcome.outputs {
        let unpacked = crate::artifact::unpack_lenient(&tar[..], dest, 0, MAX_OUTPUT)?;
        written.extend(unpacked.written);
        refused.extend(unpacked.refused);
    }
    let make_log = written.iter().find(|p| p.as_os_str() == "make.log").map(|p| dest.join(p));
    // The driver is the container's PID 1: its exit status is not the build's to forge.
    let space_exceeded = !outcome.timed_out && outcome.exit_code == status::SPACE_EXCEEDED;
    // Only the modules the plan names count; anything else a Makefile slipped in is ignored.
    let wanted: Vec<PathBuf> =
        plan.modules.iter().map(|m| Path::new("modules").join(format!("{}.ko", m.built_name))).collect();
    let modules = written.iter().filter(|p| wanted.contains(p)).map(|p| dest.join(p)).collect();
    Ok(Built {
        status: outcome.exit_code,
        timed_out: outcome.timed_out,
        space_exceeded,
        refused,
        log: outcome.log,
        make_log,
        modules,
    })
}

/// Appends every entry of the tar `bytes` to `out`.
fn append_tar(out: &mut tar::Builder<Vec<u8>>, bytes: &[u8]) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        match entry.link_name()? {
            Some(target) => out.append_link(&mut header, &path, &target)?,
            None => out.append_data(&mut header, &path, &mut entry)?,
        }
    }
    Ok(())
}

/// How long a module's install-time script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one of a module's scripts (PRE_INSTALL, POST_INSTALL, POST_REMOVE) the way dkms does
/// (from the source directory, with its arguments, skipped with a warning if not executable),
/// but sandboxed in `image`: it sees a copy of the source and `vars`, never the host.
pub async fn run_script(
    engine: &dyn Engine,
    recipe: &Recipe,
    image: &str,
    source: &Path,
    vars: Vec<(String, String)>,
    script: &str,
) -> Result<crate::engine::RunOutcome, BuildError> {
    let scratch = recipe.config.workdir.trim_end_matches('/').to_string();
    let input = crate::artifact::pack_dir(source, "source")?;
    let body = format!(
        "run={scratch}/source/$1; if [[ -x ${{run%% *}} ]]; then cd {scratch}/source && exec $run; \
         else echo \"Warning: the script is not executable: $1\" >&2; fi"
    );
    let cmd = vec!["bash".into(), "-c".into(), body, "ckms-script".into(), script.to_string()];
    let mut spec = crate::image::run_spec(recipe, image, cmd, Some(input), SCRIPT_TIMEOUT);
    spec.outputs = vec![];
    spec.env.extend(vars.into_iter().map(|(k, v)| format!("{k}={v}")));
    Ok(engine.run(&spec).await?)
}
