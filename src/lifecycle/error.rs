use std::path::PathBuf;
use thiserror::Error;

use crate::artifact::ArtifactError;
use crate::build::BuildError;
use crate::conf::ConfError;
use crate::context::ContextError;
use crate::diagnose::{code, Diagnose, Said};
use crate::error::Usage;
use crate::install::InstallError;
use crate::kernel::KernelError;
use crate::pair::substitute::SubstituteError;
use crate::pair::PairError;
use crate::profile::ProfileError;
use crate::sign::SignError;
use crate::source::SourceError;
use crate::verify::VerifyError;

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error("could not find module source directory {0}")]
    NoSource(PathBuf),
    #[error("{0} does not exist: a module source needs a dkms.conf")]
    NoConf(PathBuf),
    #[error("{module}{} is not located in the tree", version.as_ref().map(|v| format!("/{v}")).unwrap_or_default())]
    NotInTree { module: String, version: Option<String> },
    #[error("{module} has several versions ({}): say which", versions.join(", "))]
    WhichVersion { module: String, versions: Vec<String> },
    #[error("{file} is not a valid dkms.conf: {}", findings.join("; "))]
    BadConf { file: PathBuf, findings: Vec<String> },
    #[error("{module}/{version} is not newer than {module}/{other}, installed for kernel {kernel}")]
    NotNewer { module: String, version: String, other: String, kernel: String, file: String },
    #[error("{module}/{version} is broken: its source directory, or the link to it in the tree, is missing")]
    Broken { module: String, version: String },
    #[error("DKMS tree already contains: {module}/{version}")]
    InTree { module: String, version: String },
    #[error("the tree already contains {module}/{version} from another source ({existing})")]
    AlreadyAdded { module: String, version: String, existing: PathBuf },
    #[error("{existing} already holds another source of {module}/{version}")]
    SourceDiffers { module: String, version: String, existing: PathBuf },
    #[error("{path}: {message}")]
    BadSource { path: PathBuf, message: String },
    #[error("Missing module {name} in {}", dir.display())]
    MissingBuilt { name: String, dir: PathBuf },
    #[error("{module}/{version} is not built for kernel {kernel} ({arch})")]
    NotBuilt { module: String, version: String, kernel: String, arch: String },
    #[error("{module}/{other} is installed for kernel {kernel} ({arch}), not {version}")]
    OtherVersionInstalled { module: String, version: String, other: String, kernel: String, arch: String },
    #[error("{module}/{version} on kernel {kernel}: BUILD_EXCLUSIVE directives exclude it ({reason})")]
    Skipped { module: String, version: String, kernel: String, reason: String, dir: PathBuf },
    #[error("the PRE_INSTALL script of {module}/{version} failed for kernel {kernel} (status {status})")]
    PreInstall { module: String, version: String, kernel: String, status: i64 },
    #[error(
        "{dir} does not appear to have module source located within it ({module}/{version} was loaded from a \
         binaries-only tarball). Build halted."
    )]
    BinariesOnly { module: String, version: String, dir: PathBuf },
    #[error("{path} is not a tarball ckms can read: {detail}")]
    BadTarball { path: PathBuf, detail: String },
    #[error("no valid dkms.conf in dkms_source_tree or dkms_binaries_only: {0} is not a valid DKMS tarball")]
    NotDkmsTarball(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("autoinstall for kernel {kernel}: {failed} of {total} module(s) failed: {}", names.join(", "))]
    Autoinstall { kernel: String, failed: usize, total: usize, names: Vec<String> },
    #[error("dkms {hook} for kernel {kernel} failed for module(s) {}", modules.join(" "))]
    KernelPrerm { hook: &'static str, kernel: String, modules: Vec<String> },
    #[error(transparent)]
    Usage(#[from] Usage),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    Pair(#[from] PairError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Substitute(#[from] SubstituteError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl LifecycleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LifecycleError {
        let path = path.into();
        move |source| LifecycleError::Io { path, source }
    }
}

impl Diagnose for LifecycleError {
    fn dkms(&self) -> Option<Said> {
        match self {
            LifecycleError::NoSource(dir) => Some(Said { key: "no_source", values: serde_json::json!({ "dir": dir }) }),
            LifecycleError::InTree { module, version } => {
                Some(Said { key: "in_tree", values: serde_json::json!({ "module": module, "version": version }) })
            }
            LifecycleError::Autoinstall { .. } => {
                Some(Said { key: "autoinstall_failed", values: serde_json::Value::Null })
            }
            LifecycleError::Skipped { module, version, dir, .. } => Some(Said {
                key: "build_exclusive",
                values: serde_json::json!({ "module": module, "version": version, "dir": dir }),
            }),
            LifecycleError::Broken { module, version } => {
                Some(Said { key: "broken", values: serde_json::json!({ "module": module, "version": version }) })
            }
            LifecycleError::BadConf { file, findings } => {
                Some(Said { key: "bad_conf", values: serde_json::json!({ "file": file, "findings": findings }) })
            }
            LifecycleError::NotNewer { version, other, kernel, file, .. } => Some(Said {
                key: "not_newer",
                values: serde_json::json!({ "version": version, "other": other, "kernel": kernel, "file": file }),
            }),
            LifecycleError::BinariesOnly { dir, .. } => {
                Some(Said { key: "no_module_source", values: serde_json::json!({ "dir": dir }) })
            }
            LifecycleError::MissingBuilt { name, dir } => {
                Some(Said { key: "missing_built", values: serde_json::json!({ "name": name, "dir": dir }) })
            }
            LifecycleError::Context(e) => e.dkms(),
            LifecycleError::Kernel(e) => e.dkms(),
            LifecycleError::Pair(e) => e.dkms(),
            LifecycleError::Build(e) => e.dkms(),
            _ => None,
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            LifecycleError::NoSource(_) | LifecycleError::WhichVersion { .. } => code::USAGE,
            LifecycleError::NoConf(_)
            | LifecycleError::Broken { .. }
            | LifecycleError::BadSource { .. }
            | LifecycleError::NotDkmsTarball(_)
            | LifecycleError::BadTarball { .. } => code::NO_CONF,
            LifecycleError::BinariesOnly { .. } | LifecycleError::BadConf { .. } => code::BAD_CONF,
            LifecycleError::NotInTree { .. }
            | LifecycleError::AlreadyAdded { .. }
            | LifecycleError::InTree { .. }
            | LifecycleError::SourceDiffers { .. } => code::NOT_IN_TREE,
            LifecycleError::NotBuilt { .. } => code::NOT_IN_TREE,
            LifecycleError::OtherVersionInstalled { .. } => code::REFUSED,
            LifecycleError::NotNewer { .. } | LifecycleError::MissingBuilt { .. } => code::INSTALL_FAILED,
            LifecycleError::Skipped { .. } => code::SKIPPED,
            LifecycleError::PreInstall { .. } => code::PRE_INSTALL_FAILED,
            LifecycleError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                code::NO_ACCESS
            }
            LifecycleError::Io { .. } => code::IO,
            LifecycleError::Autoinstall { .. } => code::AUTOINSTALL_FAILED,
            LifecycleError::KernelPrerm { .. } => code::HOOK_FAILED,
            LifecycleError::Usage(e) => e.exit_code(),
            LifecycleError::Context(e) => e.exit_code(),
            LifecycleError::Profile(e) => e.exit_code(),
            LifecycleError::Kernel(e) => e.exit_code(),
            LifecycleError::Source(e) => e.exit_code(),
            LifecycleError::Conf(e) => e.exit_code(),
            LifecycleError::Pair(e) => e.exit_code(),
            LifecycleError::Build(e) => e.exit_code(),
            LifecycleError::Sign(e) => e.exit_code(),
            LifecycleError::Artifact(e) => e.exit_code(),
            LifecycleError::Substitute(e) => e.exit_code(),
            LifecycleError::Install(e) => e.exit_code(),
            LifecycleError::Verify(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            LifecycleError::Usage(e) => return e.hint(),
            LifecycleError::Context(e) => return e.hint(),
            LifecycleError::Profile(e) => return e.hint(),
            LifecycleError::Kernel(e) => return e.hint(),
            LifecycleError::Source(e) => return e.hint(),
            LifecycleError::Conf(e) => return e.hint(),
            LifecycleError::Pair(e) => return e.hint(),
            LifecycleError::Build(e) => return e.hint(),
            LifecycleError::Sign(e) => return e.hint(),
            LifecycleError::Artifact(e) => return e.hint(),
            LifecycleError::Substitute(e) => return e.hint(),
            LifecycleError::Install(e) => return e.hint(),
            LifecycleError::Verify(e) => return e.hint(),
            LifecycleError::NoSource(p) => {
                format!("put the module's source (with its dkms.conf) in {}, or `ckms add <dir>`", p.display())
            }
            LifecycleError::NoConf(_) => "every dkms module source has a dkms.conf at its top".into(),
            LifecycleError::NotNewer { .. } => "You may override by specifying --force.".into(),
            LifecycleError::BadConf { .. } => {
                "fix the dkms.conf (docs/dkms-compat.md lists what dkms requires of it)".into()
            }
            LifecycleError::Broken { module, version } => format!(
                "put its source back in /usr/src/{module}-{version} and `ckms add {module}/{version}`, or drop it from \
                 the tree (its directory under the dkms tree)"
            ),
            LifecycleError::NotInTree { .. } => "`ckms status` lists the tree; `ckms add` puts a module in it".into(),
            LifecycleError::WhichVersion { module, versions } => {
                format!("e.g. `-m {module} -v {}` or `{module}/{}`", versions[0], versions[0])
            }
            LifecycleError::InTree { .. } => "You cannot add the same module/version combo more than once.".into(),
            LifecycleError::AlreadyAdded { module, version, .. } => {
                format!("`ckms remove -m {module} -v {version} --all` first")
            }
            LifecycleError::SourceDiffers { existing, .. } => {
                format!("pass --force to replace {}, or move it away first", existing.display())
            }
            LifecycleError::BadSource { .. } => "fix the module source".into(),
            LifecycleError::MissingBuilt { .. } => {
                "its build is incomplete: `ckms unbuild` it and build it again (or install with --force)".into()
            }
            LifecycleError::NotBuilt { module, version, kernel, .. } => {
                format!("`ckms build -m {module} -v {version} -k {kernel}` first")
            }
            LifecycleError::OtherVersionInstalled { module, other, kernel, .. } => {
                format!("`ckms uninstall -m {module} -v {other} -k {kernel}` first, or pass --force")
            }
            LifecycleError::Skipped { .. } => {
                "not an error: the module's dkms.conf says it does not apply to this kernel".into()
            }
            LifecycleError::PreInstall { .. } => "its output is above; the module was not installed".into(),
            LifecycleError::BinariesOnly { .. } => {
                "it installs for the kernels its tarball holds builds for (`ckms status`); for another kernel, load \
                 a tarball with its source (mktarball without --binaries-only)"
                    .into()
            }
            LifecycleError::BadTarball { .. } => {
                "a source tarball is a .tar or .tar.gz of regular files and directories \
                 (the module's directory with its dkms.conf); `ckms mktarball` makes one"
                    .into()
            }
            LifecycleError::NotDkmsTarball(_) => {
                "make it with `mktarball` (ckms's or dkms's), or add a source directory with `ckms add DIR`".into()
            }
            LifecycleError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                "run as root, or point --root (or --dkmstree/--installtree) at directories you own".into()
            }
            LifecycleError::Io { .. } => "check free space and permissions".into(),
            LifecycleError::Autoinstall { .. } => {
                "each failure is reported above; the other modules were installed".into()
            }
            LifecycleError::KernelPrerm { .. } => {
                "each failure is reported above; the other modules were removed".into()
            }
        })
    }
}
