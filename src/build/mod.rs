//! Building modules for a kernel in its builder image: the engine side of dkms's `build`.
//!
//! One sandboxed container per (module, kernel), non-root, without network, on a read-only
//! root: [`run_build`] uploads the source tree as a dkms host shows it ([`inputs`]: the
//! module's source, the other modules' read-only) and `driver.sh`, which evaluates the dkms.conf (bash
//! from the module's author) and hands only the whitelisted directives to the host; the host
//! resolves them ([`crate::conf`]) while the container waits, and the driver runs what was
//! decided (patches, PRE_BUILD, MAKE, POST_BUILD, strip). make.log and the modules come back
//! through the untrusted-tar unpacker of [`crate::artifact`]. [`evaluate_conf`] evaluates a
//! conf alone (a container of its own), [`run_script`] runs a module's install-time script.

mod eval;
mod inputs;
mod run;

/// The script that runs a build in its container (evaluation, patches, make, strip).
pub const DRIVER: &str = include_str!("driver.sh");

pub use eval::evaluate_conf;
pub use inputs::{BuiltView, Sibling, CONTAINER_SOURCES, CONTAINER_TREE};
pub use run::{run_build, run_script, status, BuildSpec, Built, Ran, Resolver};

use std::path::PathBuf;
use thiserror::Error;

use crate::artifact::ArtifactError;
use crate::conf::{ConfError, EvalContext};
use crate::diagnose::{code, Diagnose, Said};
use crate::engine::EngineError;
use crate::makelog::FirstError;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("preparing the input for the build container: {0}")]
    Input(std::io::Error),
    /// The build ran and failed (boxed: errors travel by value and this one is big).
    #[error("{0}")]
    Failed(Box<Failure>),
}

/// A build that ran and failed; `log` is where make.log was kept on the host.
#[derive(Debug, Error)]
#[error("{module}/{version} for kernel {kernel} ({arch}): {what}")]
pub struct Failure {
    pub what: String,
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    pub code: i32,
    pub log: PathBuf,
    /// What to do about it, when ckms can tell (e.g. "the sandbox has no network: ..."),
    /// shown before dkms's "Consult <make.log>".
    pub advice: Option<String>,
    /// make.log's first compiler or linker error, when make failed: ckms's hint quotes it
    /// (dkms says the failure in its own words, which have none).
    pub first_error: Option<FirstError>,
}

impl Diagnose for BuildError {
    fn dkms(&self) -> Option<Said> {
        match self {
            BuildError::Failed(f) if f.code == code::BUILD_FAILED => Some(Said {
                key: "build_failed",
                values: serde_json::json!({ "kernel": f.kernel, "arch": f.arch, "log": f.log }),
            }),
            _ => None,
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            BuildError::Engine(e) => e.exit_code(),
            BuildError::Conf(e) => e.exit_code(),
            BuildError::Artifact(e) => e.exit_code(),
            BuildError::Input(_) => code::IO,
            BuildError::Failed(f) => f.code,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            BuildError::Engine(e) => e.hint(),
            BuildError::Conf(e) => e.hint(),
            BuildError::Artifact(e) => e.hint(),
            BuildError::Input(_) => None,
            BuildError::Failed(f) => Some(format!(
                "{}{}Consult {} for more information.",
                f.first_error.as_ref().map(|e| format!("First error: {e}\n")).unwrap_or_default(),
                f.advice.as_ref().map(|a| format!("{a}. ")).unwrap_or_default(),
                f.log.display()
            )),
        }
    }
}

/// dkms's variables for building `module`/`version` for `kernel` as the build sees them.
pub fn vars(module: &str, version: &str, kernel: &str, arch: &str) -> EvalContext {
    EvalContext {
        conf_path: String::new(),
        override_dir: None,
        kernelver: kernel.to_string(),
        arch: arch.to_string(),
        kernel_source_dir: format!("/lib/modules/{kernel}/build"),
        dkms_tree: CONTAINER_TREE.into(),
        source_tree: CONTAINER_SOURCES.into(),
        install_tree: "/lib/modules".into(),
        module: module.to_string(),
        module_version: version.to_string(),
    }
}

/// Appends the directories `dirs` and then `files` (name, bytes) under `top` to `b`: ckms's
/// own files for a container (scripts, the conf, overrides, a VM's kernel).
pub(crate) fn append_files(
    b: &mut tar::Builder<Vec<u8>>,
    top: &str,
    dirs: &[&str],
    files: &[(String, &[u8])],
) -> std::io::Result<()> {
    for dir in std::iter::once("").chain(dirs.iter().copied()) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        let path = if dir.is_empty() { top.to_string() } else { format!("{top}/{dir}") };
        b.append_data(&mut h, path, std::io::empty())?;
    }
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, format!("{top}/{name}"), *bytes)?;
    }
    Ok(())
}
