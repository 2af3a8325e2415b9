//! Realisation: one pair built in its builder image through the [`Runner`] seam, the conf
//! resolved on the host while the container waits, the modules signed on the host (the key
//! never enters the container) and compressed as the kernel wants, and the whole result staged
//! in a directory of its own. How it ended is a [`Realised`] value: the dkms tree, the farm's
//! store and `farm kube collect` each decide what to do with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{Manifest, ManifestModule, ModuleVersion, PairError};
use crate::build::{self, run_build, status, BuildError, BuildSpec, Built, Failure, Ran, Sibling, CONTAINER_SOURCES};
use crate::conf::{self, BuildPlan, ConfError, DestPolicy, KernelFacts, RawConf, Resolved};
use crate::config::Config;
use crate::diagnose::code;
use crate::engine::{LogSink, Runner};
use crate::image::DEFAULT_PIDS;
use crate::install::compress::Compression;
use crate::makelog::{self, FirstError};
use crate::profile::{Profile, Recipe};
use crate::report::Reporter;
use crate::sign::{self, KeyPaths, Signer};

/// Where a staged result keeps each module as the build made it (stripped, unsigned), beside
/// the signed and compressed one in `module/`.
pub const UNSIGNED: &str = "unsigned";

/// `[build] space_mib` and `memory_mib` when unset.
const DEFAULT_SPACE_MIB: i64 = 4096;
const DEFAULT_MEMORY_MIB: i64 = 4096;

/// What a build may use, from `[build]` in ckms's config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub space_bytes: i64,
    pub memory_bytes: i64,
    pub pids: i64,
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        let b = &config.build;
        Limits {
            timeout: config.build_timeout(),
            space_bytes: b.space_mib.unwrap_or(DEFAULT_SPACE_MIB) << 20,
            memory_bytes: b.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB) << 20,
            pids: b.pids.unwrap_or(DEFAULT_PIDS),
        }
    }
}

/// The key a pair's modules are signed with.
pub enum Key<'a> {
    /// Loaded (and checked) before the build, so that a build that could not be signed is not
    /// started.
    Loaded(&'a Signer),
    /// ckms's own pair, made on first use: only after a good build, so that a failed one
    /// leaves no key behind.
    Made(&'a KeyPaths),
    /// A program the host's dkms configuration names (framework.conf's `sign_file`).
    External(&'a dyn ExternalSign),
}

/// Signs a module file in place with a program of the host's; `false` when it failed (the
/// module then stays unsigned, as with dkms, which warns and goes on).
pub trait ExternalSign: Sync {
    fn sign(&self, module: &Path, built_name: &str, hash: &str) -> bool;
    /// The certificate's SHA-256, recorded as the pair's signer.
    fn fingerprint(&self) -> Option<String>;
}

/// How a pair's modules are signed: the kernel's CONFIG_MODULE_SIG_HASH and the key.
pub struct SignWith<'a> {
    pub hash: String,
    pub key: Key<'a>,
}

/// One pair to build, as its sandbox will show it.
pub struct Realise<'a> {
    pub mv: &'a ModuleVersion,
    /// The module's source on the host, with its dkms.conf.
    pub source: &'a Path,
    /// The other modules the build sees, read-only.
    pub siblings: &'a [Sibling],
    /// dkms's override files that apply: (name, bytes).
    pub overrides: &'a [(String, Vec<u8>)],
    pub recipe: &'a Recipe,
    /// The builder image's reference.
    pub image: &'a str,
    pub profile: &'a Profile,
    /// The kernel (release, arch, its .config when the headers ship one).
    pub kernel: KernelFacts,
    pub jobs: u32,
    pub limits: Limits,
    /// Streams make's output as it runs (`--verbose`).
    pub follow: Option<LogSink>,
    pub signing: Option<SignWith<'a>>,
    pub report: &'a dyn Reporter,
}

/// The host's answer on a resolved plan's BUILD_DEPENDS.
pub enum Depends {
    /// Every one is built and visible: build.
    Met,
    /// These must be built first, then the pair again.
    Unbuilt(Vec<String>),
    /// They cannot be met (missing, a cycle).
    Refused(PairError),
}

/// Decides a plan's BUILD_DEPENDS: the dkms tree and the farm's store know different things.
pub type CheckDepends<'a> = dyn Fn(&BuildPlan) -> Depends + Send + Sync + 'a;

/// How a realisation ended.
#[derive(Debug)]
pub enum Realised {
    /// Boxed: the manifest is large, and the other outcomes are small.
    Built(Box<Staged>),
    /// The build ran and failed (make, a patch, a missing module, the time or space limit).
    Failed(Failed),
    /// BUILD_EXCLUSIVE excludes this kernel: dkms's exit 77, not a failure.
    Skipped { reason: String },
    /// BUILD_DEPENDS to build first; nothing was built.
    NeedsDependencies(Vec<String>),
    /// The inputs were refused before anything was built: a conf that does not evaluate or
    /// resolve, BUILD_DEPENDS that cannot be met.
    Refused(PairError),
}

/// A built pair, staged: `module/` (signed when the kernel wants it, compressed as it wants),
/// [`UNSIGNED`]`/`, `log/make.log` and the manifest (`ckms.json`), complete in `dir`.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The make command, as dkms shows it.
    pub make: String,
    /// The build's other steps, which dkms names as it runs them.
    pub steps: Steps,
}

/// What a build ran besides make: the patches applied and the build scripts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Steps {
    pub patches: Vec<String>,
    pub pre_build: bool,
    pub post_build: bool,
}

/// A build that ran and failed.
#[derive(Debug)]
pub struct Failed {
    pub what: String,
    /// dkms's exit code for it.
    pub code: i32,
    /// What to do about it, when ckms can tell (e.g. the sandbox has no network).
    pub advice: Option<String>,
    /// make.log, then the driver's own output and what ckms refused of the build's output.
    pub log: Vec<u8>,
    /// The make command line, and its exit status when make was what failed (as the build
    /// reported it: for messages only).
    pub make: String,
    pub make_status: Option<i64>,
    /// The log's first compiler or linker error, when make was what failed.
    pub first_error: Option<FirstError>,
}

impl Failed {
    /// The failure as the build's error, with make.log kept at `log`.
    pub fn into_error(self, mv: &ModuleVersion, kernel: &str, arch: &str, log: PathBuf) -> BuildError {
        BuildError::Failed(Box::new(Failure {
            what: self.what,
            module: mv.module.clone(),
            version: mv.version.clone(),
            kernel: kernel.to_string(),
            arch: arch.to_string(),
            code: self.code,
            log,
            advice: self.advice,
            first_error: self.first_error,
        }))
    }
}

/// As dkms checks before it builds: each patch a plain path to a file under `patches/`.
fn bad_patch(mv: &ModuleVersion, source: &Path, patches: &[String]) -> Option<PairError> {
    let dir = source.join("patches");
    let (patch, dotdot) = patches.iter().find_map(|p| {
        let dotdot = Path::new(p).components().any(|c| c == std::path::Component::ParentDir);
        (dotdot || !dir.join(p).is_file()).then_some((p, dotdot))
    })?;
    Some(PairError::BadPatch {
        module: mv.module.clone(),
        version: mv.version.clone(),
        patch: patch.clone(),
        dotdot,
        dir,
    })
}

/// Builds `r` on `runner`, in the fresh directory `work` (the result is staged under it).
pub async fn realise(
    runner: &dyn Runner,
    r: &Realise<'_>,
    depends: &CheckDepends<'_>,
    work: &Path,
) -> Result<Realised, PairError> {
    let (mv, release, arch) = (r.mv, &r.kernel.release, &r.kernel.arch);
    let conf_path = r.source.join("dkms.conf");
    let conf = std::fs::read(&conf_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PairError::NoConf(conf_path.clone()),
        _ => PairError::Io { path: conf_path.clone(), source: e },
    })?;
    let origin = conf_path.display().to_string();
    let vars = build::vars(&mv.module, &mv.version, release, arch);
    let job = BuildSpec {
        recipe: r.recipe,
        image: r.image,
        source: r.source,
        siblings: r.siblings,
        image_sources: r.profile.relocated(CONTAINER_SOURCES),
        conf: &conf,
        overrides: r.overrides,
        origin: &origin,
        vars: &vars,
        jobs: r.jobs,
        timeout: r.limits.timeout,
        space_bytes: r.limits.space_bytes,
        memory_bytes: r.limits.memory_bytes,
        pids: r.limits.pids,
        follow: r.follow.clone(),
    };
    let dest = DestPolicy::Override(r.profile.install.module_location.clone());
    // Resolution happens while the container waits; why it stopped is kept here.
    let stop: Mutex<Option<Realised>> = Mutex::new(None);
    let stopped = |why: Realised| {
        if let Ok(mut s) = stop.lock() {
            *s = Some(why);
        }
        None
    };
    let resolve = |raw: Result<RawConf, ConfError>| {
        let resolved = match raw.and_then(|raw| conf::resolve(&raw, &r.kernel, &dest)) {
            Ok(resolved) => resolved,
            Err(e) => return stopped(Realised::Refused(e.into())),
        };
        let mut plan = match resolved {
            Resolved::Build(plan) => plan,
            Resolved::Skipped { reason } => return stopped(Realised::Skipped { reason }),
        };
        // dkms builds what -m/-v name whatever the conf says (mstflint-dkms ships
        // PACKAGE_VERSION="#MODULES_VERSION#"); so does ckms, and says so.
        if plan.package_name != mv.module || plan.package_version != mv.version {
            plan.notes.push(format!(
                "PACKAGE_NAME/PACKAGE_VERSION say {}/{}; built as {mv}, the names of its source directory (as dkms)",
                plan.package_name, plan.package_version
            ));
        }
        match depends(&plan) {
            Depends::Met => {}
            Depends::Unbuilt(deps) => return stopped(Realised::NeedsDependencies(deps)),
            Depends::Refused(e) => return stopped(Realised::Refused(e)),
        }
        if let Some(e) = bad_patch(mv, r.source, &plan.patches) {
            return stopped(Realised::Refused(e));
        }
        for note in &plan.notes {
            r.report.detail(format!("{origin}: {note}"));
        }
        for (name, reason) in &plan.excluded_modules {
            r.report.info(format!("{name} is not built for {release}: {reason}"));
        }
        r.report.detail(plan.make_command(r.jobs));
        Some(plan)
    };
    r.report.detail(format!("Building module {mv} for kernel {release} ({arch}) in {}", r.image));
    let out = work.join("out");
    let ran = match run_build(runner, &job, &resolve, &out).await {
        Ok(ran) => ran,
        Err(BuildError::Conf(e)) => return Ok(Realised::Refused(e.into())),
        Err(e) => return Err(e.into()),
    };
    let (plan, built) = match ran {
        Ran::Built { plan, built } => (plan, built),
        Ran::Stopped => {
            let why = stop.into_inner().ok().flatten();
            return why.ok_or_else(|| BuildError::Input(std::io::Error::other("the build stopped")).into());
        }
    };
    if built.timed_out || built.space_exceeded || built.status != 0 {
        return Ok(Realised::Failed(failed(&plan, &built, r, None)));
    }
    for (path, why) in &built.refused {
        r.report.warn(format!("{mv}: ignored {path:?} returned by the build: {why}"));
    }
    // A module the driver copied but that came back as something else (a link planted
    // after the copy) was refused by the unpacker: missing here.
    let wanted = |m: &conf::Module| out.join("modules").join(format!("{}.ko", m.built_name));
    let lost: Vec<String> = plan
        .modules
        .iter()
        .filter(|m| !built.modules.contains(&wanted(m)))
        .map(|m| format!("{}.ko", m.built_name))
        .collect();
    if !lost.is_empty() {
        let what = format!("{} did not come back from the build as a regular file", lost.join(", "));
        return Ok(Realised::Failed(failed(&plan, &built, r, Some(what))));
    }
    let staged = stage(r, &plan, &built, &out, &work.join("staged"))?;
    Ok(Realised::Built(Box::new(staged)))
}

/// Signs and compresses the built modules into `dir`, with make.log and the manifest.
fn stage(r: &Realise<'_>, plan: &BuildPlan, built: &Built, out: &Path, dir: &Path) -> Result<Staged, PairError> {
    let made;
    let (mut signing, mut external) = (None, None);
    match &r.signing {
        Some(SignWith { hash, key: Key::Loaded(signer) }) => signing = Some((*signer, hash)),
        Some(SignWith { hash, key: Key::Made(paths) }) => {
            made = sign::signer(paths, sign::pin().as_deref(), r.report)?;
            signing = Some((&made, hash));
        }
        Some(SignWith { hash, key: Key::External(program) }) => external = Some((*program, hash)),
        None => {}
    }
    let kconfig = r.kernel.config.as_deref();
    let compression = kconfig.map(Compression::from_kernel_config).unwrap_or(Compression::None);
    for sub in ["module", "log", UNSIGNED] {
        std::fs::create_dir_all(dir.join(sub)).map_err(PairError::io(dir))?;
    }
    let (mut modules, mut external_failed) = (Vec::new(), false);
    for m in &plan.modules {
        let from = out.join("modules").join(format!("{}.ko", m.built_name));
        let mut bytes = std::fs::read(&from).map_err(PairError::io(&from))?;
        let unsigned = dir.join(UNSIGNED).join(format!("{}.ko", m.built_name));
        std::fs::write(&unsigned, &bytes).map_err(PairError::io(&unsigned))?;
        // dkms's order: strip (done in the sandbox), sign, compress.
        if let Some((signer, hash)) = &signing {
            r.report.detail(format!("Signing module {}.ko ({hash})", m.built_name));
            bytes = sign::sign(&bytes, signer, hash, &from)?;
        }
        if let Some((program, hash)) = &external {
            let file = dir.join(format!("{}.ko", m.built_name));
            std::fs::write(&file, &bytes).map_err(PairError::io(&file))?;
            if program.sign(&file, &m.built_name, hash) {
                bytes = std::fs::read(&file).map_err(PairError::io(&file))?;
            } else {
                external_failed = true;
            }
            std::fs::remove_file(&file).map_err(PairError::io(&file))?;
        }
        let file = PathBuf::from("module").join(format!("{}.ko{}", m.built_name, compression.suffix()));
        let packed = compression.compress(&bytes).map_err(PairError::io(&from))?;
        std::fs::write(dir.join(&file), packed).map_err(PairError::io(dir.join(&file)))?;
        modules.push(ManifestModule {
            built_name: m.built_name.clone(),
            dest_name: m.dest_name.clone(),
            dest_location: m.dest_location.clone(),
            file,
        });
    }
    if let Some(log) = &built.make_log {
        std::fs::copy(log, dir.join("log/make.log")).map_err(PairError::io(log))?;
    }
    let manifest = Manifest {
        module: r.mv.module.clone(),
        version: r.mv.version.clone(),
        kernel: r.kernel.release.clone(),
        arch: r.kernel.arch.clone(),
        profile: r.profile.name.clone(),
        image: r.image.to_string(),
        modules,
        autoinstall: plan.autoinstall,
        pre_install: plan.hooks.pre_install.clone(),
        post_install: plan.hooks.post_install.clone(),
        post_remove: plan.hooks.post_remove.clone(),
        sig_hash: kconfig.and_then(sign::kernel_hash),
        signed_by: match (&signing, &external) {
            (Some((signer, _)), _) => Some(signer.fingerprint()),
            (None, Some((program, _))) if !external_failed => program.fingerprint(),
            _ => None,
        },
        make_seconds: built.make_seconds,
        rebuild_with: if plan.build_depends_rebuild { plan.build_depends.clone() } else { Vec::new() },
    };
    manifest.write(dir)?;
    let steps = Steps {
        patches: plan.patches.clone(),
        pre_build: plan.hooks.pre_build.is_some(),
        post_build: plan.hooks.post_build.is_some(),
    };
    Ok(Staged { dir: dir.to_path_buf(), manifest, make: plan.make_command(r.jobs), steps })
}

const LINK_ADVICE: &str = "A module must be a regular file the build made: ckms never follows a link out of \
                           the build (dkms would copy what it points to); fix the module's Makefile";

/// A failed build's description, code and log. `what` overrides the description (the build
/// ran, but its result was refused).
fn failed(plan: &BuildPlan, built: &Built, r: &Realise<'_>, what: Option<String>) -> Failed {
    let limits = &r.limits;
    let mut log = built.make_log.as_ref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
    // The driver's own messages (patch, PRE_BUILD) are not in make.log; keep them too.
    if !built.log.is_empty() {
        log.extend_from_slice(b"\n--- ckms: build container output ---\n");
        log.extend_from_slice(&built.log);
    }
    for (path, why) in &built.refused {
        log.extend_from_slice(format!("ckms: refused {path:?} returned by the build: {why}\n").as_bytes());
    }
    let space = limits.space_bytes >> 20;
    let (what, code, advice) = match (what, built.timed_out, built.status) {
        (Some(what), _, _) => (what, code::MODULE_MISSING, Some(LINK_ADVICE.to_string())),
        (None, true, _) => (
            format!("the build did not finish in {} s and was stopped", limits.timeout.as_secs()),
            code::TIMEOUT,
            Some(
                "If the module is only slow to build, raise the limit: CKMS_BUILD_TIMEOUT=<seconds> or \
                 [build] timeout_secs in /etc/ckms/config.toml"
                    .to_string(),
            ),
        ),
        _ if built.space_exceeded => (
            format!("the build used more than {space} MiB of disk and was stopped"),
            code::IO,
            Some(format!(
                "The build's disk space is limited to {space} MiB; if the module really needs more, \
                 raise [build] space_mib in /etc/ckms/config.toml"
            )),
        ),
        (_, _, status::PATCH_FAILED) => ("a patch did not apply".to_string(), code::INSTALL_FAILED, None),
        (_, _, status::MODULE_MISSING) => {
            ("a module named in BUILT_MODULE_NAME was not built".to_string(), code::MODULE_MISSING, None)
        }
        (_, _, status::MODULE_IS_LINK) => {
            // The driver names the links it refused; only names the plan has are repeated.
            let stderr = String::from_utf8_lossy(&built.log);
            let mut links: Vec<String> = plan
                .modules
                .iter()
                .map(|m| {
                    let dir =
                        if m.built_location.is_empty() { String::new() } else { format!("{}/", m.built_location) };
                    format!("{dir}{}.ko", m.built_name)
                })
                .filter(|p| stderr.contains(&format!("ckms: {p} is a symbolic link")))
                .collect();
            if links.is_empty() {
                links = plan.modules.iter().map(|m| format!("{}.ko", m.built_name)).collect();
            }
            (
                format!("{} is a symbolic link, not a built module: refused", links.join(", ")),
                code::MODULE_MISSING,
                Some(LINK_ADVICE.to_string()),
            )
        }
        _ => ("Bad return status for module build".to_string(), code::BUILD_FAILED, sandbox_advice(&log, limits.pids)),
    };
    let make_failed = code == code::BUILD_FAILED;
    let make_status = make_failed.then(|| make_status(&built.log)).flatten();
    let first_error = make_failed.then(|| makelog::first_error_of(&log)).flatten();
    Failed { what, code, advice, log, make: plan.make_command(r.jobs), make_status, first_error }
}

/// make's exit status, from the driver's "make returned N".
fn make_status(driver_log: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(driver_log);
    let (_, after) = text.rsplit_once("ckms: make returned ")?;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What the sandbox refused, as make.log shows it, and what to do about it: a build that
/// failed because it tried to download, to write outside its directory, or to fork without end.
fn sandbox_advice(log: &[u8], pids: i64) -> Option<String> {
    let text = String::from_utf8_lossy(log);
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let mut advice = Vec::new();
    if has(&[
        "Network is unreachable",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Could not resolve host",
        "unable to resolve host",
    ]) {
        advice.push(
            "The build tried to reach the network, which builds never have: ship what it downloads \
             with the module's source"
                .to_string(),
        );
    }
    if has(&["Read-only file system"]) {
        advice.push(
            "The build tried to write outside its build directory: in the sandbox only the build \
             directory and /tmp are writable; fix the module's Makefile"
                .to_string(),
        );
    }
    if has(&["fork: Resource temporarily unavailable", "fork: retry: Resource temporarily unavailable"]) {
        advice.push(format!(
            "The build hit its limit of {pids} processes (a fork bomb, or [build] pids in \
             /etc/ckms/config.toml is too low)"
        ));
    }
    (!advice.is_empty()).then(|| advice.join(". "))
}

#[cfg(test)]
mod tests;
