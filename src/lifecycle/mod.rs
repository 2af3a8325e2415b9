//! dkms's verbs over ckms's tree: `add`, `build`, `install`, `uninstall`, `unbuild`, `remove`,
//! `status`, `autoinstall`, `match`, `mktarball`, `ldtarball`. Each verb keeps dkms's
//! semantics (build implies add, install implies build, a finished step is skipped unless
//! forced) and its exit codes; what differs is where the build runs ([`crate::build`]).

mod add;
mod auto;
mod build;
mod deps;
mod error;
mod install;
mod rebuild;
mod remove;
mod signing;
mod tarball;
#[cfg(test)]
pub(crate) mod testing;
mod verify;

pub use crate::pair::manifest::FILE as MANIFEST;
pub use crate::pair::{Manifest, ManifestModule, ModuleVersion};
pub use error::LifecycleError;

use std::path::{Path, PathBuf};
use tokio::sync::OnceCell;

use crate::context::Context;
use crate::engine::Connection;
use crate::error::Usage;
use crate::install::TreeLock;
use crate::pair::substitute::Substituter;
use crate::repo::version;
use crate::report::Reporter;
use crate::tree::{self, Roots};

/// A kernel as dkms's `-k kver/arch` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelTarget {
    pub release: String,
    /// None: the profile's machine (x86_64 for amd64).
    pub arch: Option<String>,
}

/// Settings shared by the verbs (dkms's -j, --force, --verbose, --no-depmod).
#[derive(Debug, Clone)]
pub struct Options {
    pub jobs: u32,
    pub force: bool,
    pub verbose: bool,
    pub depmod: bool,
    /// Look for kernels only in this profile.
    pub profile: Option<String>,
    /// dkms's --config: the kernel's .config to decide signing (and BUILD_EXCLUSIVE_CONFIG)
    /// by, instead of the one in its headers package.
    pub kernel_config: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Options { jobs, force: false, verbose: false, depmod: true, profile: None, kernel_config: None }
    }
}

/// The verbs, bound to one tree and one invocation.
pub struct Lifecycle<'a> {
    pub ctx: &'a Context,
    pub roots: Roots,
    pub opts: Options,
    engine: OnceCell<Connection>,
    /// Where `install` looks for a finished pair before building it (a farm's binary cache).
    substituter: Option<Box<dyn Substituter + 'a>>,
    /// The kernel whose signing dkms's lines were said for last (dkms says them once).
    prepared: std::sync::Mutex<Option<String>>,
}

impl<'a> Lifecycle<'a> {
    pub fn new(ctx: &'a Context, roots: Roots, opts: Options) -> Self {
        Lifecycle { ctx, roots, opts, engine: OnceCell::new(), substituter: None, prepared: Default::default() }
    }

    /// The same, asking `substituter` for a pair before `install` builds it.
    pub fn substituting(self, substituter: Box<dyn Substituter + 'a>) -> Self {
        Lifecycle { substituter: Some(substituter), ..self }
    }

    /// The engine, connected on first use: `status` and `remove` never need one.
    async fn engine(&self) -> Result<&Connection, LifecycleError> {
        let conn = self.engine.get_or_try_init(|| self.ctx.engine()).await?;
        Ok(conn)
    }

    fn report(&self) -> &dyn Reporter {
        self.ctx.reporter()
    }

    /// Prints dkms's line `key` (see [`crate::dialect`]), when it says anything.
    fn say(&self, key: &str, values: serde_json::Value) {
        if let Some(line) = self.ctx.dialect().said(key, values) {
            self.report().info(line);
        }
    }

    /// framework.conf's `post_transaction`, after a verb changed what is installed (dkms 3.2:
    /// install, uninstall, unbuild, remove, and autoinstall when anything is installed): run
    /// with bash on the host, as the host's own configuration, its account in
    /// `<dkms_tree>/post_transaction.log` as dkms writes it.
    pub fn post_transaction(&self, kernel: &str) -> Result<(), LifecycleError> {
        let framework = crate::framework::Framework::read(&self.ctx.config.conf_dir());
        let Some(command) = framework.expanded("post_transaction", Some(kernel)) else { return Ok(()) };
        let dialect = self.ctx.dialect();
        if dialect.line("post_transaction", serde_json::json!({ "status": 0, "command": command })).is_empty() {
            return Ok(()); // a release without post_transaction
        }
        let log = self.roots.dkms_tree.join("post_transaction.log");
        let started = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&command)
            .env("kernelver", kernel)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(LifecycleError::io("bash"))?;
        let status = out.status.code().unwrap_or(1);
        let elapsed = started.elapsed().as_secs();
        let text = format!(
            "\nExecuting post-transaction command\n# command: {command}\n{}{}\n# exit code: {status}\n\
             # elapsed time: {:02}:{:02}:{:02}\n{}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            elapsed / 3600,
            elapsed / 60 % 60,
            elapsed % 60,
            "-".repeat(64)
        );
        std::fs::write(&log, text).map_err(LifecycleError::io(&log))?;
        self.say("post_transaction", serde_json::json!({ "status": status, "command": command }));
        Ok(())
    }

    /// dkms's depmod line, or nothing when depmod does not run (--no-depmod).
    fn depmod_line(&self) -> String {
        match self.opts.depmod {
            true => self.ctx.dialect().line("depmod", serde_json::Value::Null),
            false => String::new(),
        }
    }

    /// `<source_tree>/<m>-<v>`.
    pub fn source_dir(&self, mv: &ModuleVersion) -> PathBuf {
        self.roots.source_tree.join(format!("{}-{}", mv.module, mv.version))
    }

    /// The versions of `module` in the tree, oldest first.
    pub fn versions(&self, module: &str) -> Vec<String> {
        let mut v: Vec<String> = tree::status(&self.roots, Some(module)).into_iter().map(|s| s.version).collect();
        v.dedup();
        v
    }

    /// Every module/version in the tree.
    pub fn all(&self) -> Vec<ModuleVersion> {
        let mut all: Vec<ModuleVersion> = tree::status(&self.roots, None)
            .into_iter()
            .map(|s| ModuleVersion { module: s.module, version: s.version })
            .collect();
        all.dedup();
        all
    }

    /// Fills in a missing version the way dkms does: the only version in the tree (or the
    /// only `<m>-*` source directory).
    pub fn complete(&self, module: &str, version: Option<&str>) -> Result<ModuleVersion, LifecycleError> {
        check_names(std::iter::once(module).chain(version))?;
        if let Some(v) = version {
            return Ok(ModuleVersion { module: module.into(), version: v.into() });
        }
        let mut versions = self.versions(module);
        if versions.is_empty() {
            versions = source_versions(&self.roots.source_tree, module);
        }
        match versions.as_slice() {
            [one] => Ok(ModuleVersion { module: module.into(), version: one.clone() }),
            [] => Err(LifecycleError::NotInTree { module: module.into(), version: None }),
            many => Err(LifecycleError::WhichVersion { module: module.into(), versions: many.to_vec() }),
        }
    }
}

/// Module names and versions from the command line become path components: refuse any that
/// would climb out of their directory.
fn check_names<'n>(names: impl IntoIterator<Item = &'n str>) -> Result<(), LifecycleError> {
    for name in names {
        if !tree::valid_name(name) {
            return Err(Usage {
                message: format!("{name:?} is not a module name or version"),
                hint: Some("names are single path components: no '/', blanks, or leading '.'".into()),
            }
            .into());
        }
    }
    Ok(())
}

/// Versions `v` for which `<source_tree>/<module>-<v>/dkms.conf` exists.
fn source_versions(source_tree: &Path, module: &str) -> Vec<String> {
    let prefix = format!("{module}-");
    let mut out: Vec<String> = std::fs::read_dir(source_tree)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
                .filter(|v| source_tree.join(format!("{prefix}{v}")).join("dkms.conf").is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| version::compare(a, b));
    out
}

impl Lifecycle<'_> {
    /// The tree's lock, held while the tree or the install tree changes (not while building).
    fn lock(&self) -> Result<TreeLock, LifecycleError> {
        let report = self.report();
        Ok(TreeLock::acquire(&self.roots.dkms_tree, |msg| report.info(msg.to_string()))?)
    }
}

pub use add::{AddSource, Added};
pub use auto::{AutoResult, Autoinstalled, Waiting};
pub use build::BuildOutcome;
pub use install::InstallOutcome;
pub use tarball::TarballParts;
