//! What stops a pair's evaluation or realisation: the machine (I/O, the engine, the key) or
//! the inputs (a conf that does not evaluate, BUILD_DEPENDS that cannot be met).

use std::path::PathBuf;

use thiserror::Error;

use crate::build::BuildError;
use crate::conf::ConfError;
use crate::diagnose::{code, Diagnose, Said};
use crate::image::ImageError;
use crate::profile::ProfileError;
use crate::sign::SignError;

#[derive(Debug, Error)]
pub enum PairError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} does not exist: a module source needs a dkms.conf")]
    NoConf(PathBuf),
    #[error("{path}: the build record is unreadable: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{module}/{version} needs {dependency} (BUILD_DEPENDS), which is not in the tree")]
    MissingDepends { module: String, version: String, dependency: String },
    #[error("{module}/{version}: BUILD_DEPENDS form a cycle through {dependency}")]
    DependencyCycle { module: String, version: String, dependency: String },
    #[error("{module}/{version} for kernel {kernel} ({arch}) needs its BUILD_DEPENDS installed first: {}", depends.join(" "))]
    DependsNotInstalled { module: String, version: String, kernel: String, arch: String, depends: Vec<String> },
    #[error("{module}/{version}: PATCH {patch} {}", if *dotdot { "has a '..' path component".to_string() } else { format!("is not in {}", dir.display()) })]
    BadPatch { module: String, version: String, patch: String, dotdot: bool, dir: PathBuf },
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The builder image could not be planned (a package the kernel needs is not offered).
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

impl PairError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PairError {
        let path = path.into();
        move |source| PairError::Io { path, source }
    }

    /// Whether the failure follows from the pair's inputs (the same inputs fail the same way:
    /// the farm stores it) rather than from this machine (tried again next run).
    pub fn about_inputs(&self) -> bool {
        match self {
            PairError::NoConf(_)
            | PairError::MissingDepends { .. }
            | PairError::DependencyCycle { .. }
            | PairError::DependsNotInstalled { .. }
            | PairError::BadPatch { .. }
            | PairError::Conf(_) => true,
            PairError::Build(b) => matches!(b, BuildError::Failed(_) | BuildError::Conf(_)),
            PairError::Io { .. }
            | PairError::Manifest { .. }
            | PairError::Sign(_)
            | PairError::Image(_)
            | PairError::Profile(_) => false,
        }
    }
}

impl Diagnose for PairError {
    fn dkms(&self) -> Option<Said> {
        match self {
            PairError::Build(e) => e.dkms(),
            PairError::DependsNotInstalled { module, version, kernel, arch, depends } => Some(Said {
                key: "missing_depends",
                values: serde_json::json!({
                    "module": module, "version": version, "kernel": kernel, "arch": arch, "depends": depends
                }),
            }),
            PairError::BadPatch { patch, dotdot, dir, .. } => Some(Said {
                key: "bad_patch",
                values: serde_json::json!({ "patch": patch, "dotdot": dotdot, "dir": dir }),
            }),
            _ => None,
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            PairError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => code::NO_ACCESS,
            PairError::Io { .. } => code::IO,
            PairError::NoConf(_) | PairError::Manifest { .. } => code::NO_CONF,
            PairError::MissingDepends { .. }
            | PairError::DependencyCycle { .. }
            | PairError::DependsNotInstalled { .. } => code::MISSING_DEPENDS,
            PairError::BadPatch { .. } => code::REFUSED,
            PairError::Conf(e) => e.exit_code(),
            PairError::Build(e) => e.exit_code(),
            PairError::Sign(e) => e.exit_code(),
            PairError::Image(e) => e.exit_code(),
            PairError::Profile(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            PairError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Some("run as root, or point --root (or --dkmstree/--installtree) at directories you own".into())
            }
            PairError::Io { .. } => Some("check free space and permissions".into()),
            PairError::NoConf(_) => Some("every dkms module source has a dkms.conf at its top".into()),
            PairError::Manifest { .. } => Some("build it again with --force".into()),
            PairError::MissingDepends { dependency, .. } => Some(format!("add {dependency} first (`ckms add`)")),
            PairError::DependencyCycle { .. } => Some("fix BUILD_DEPENDS in the dkms.conf files".into()),
            PairError::DependsNotInstalled { .. } => {
                Some("install them for this kernel first, or pass --force to build without them".into())
            }
            PairError::BadPatch { .. } => {
                Some("a PATCH names a file in the module's patches/ directory, by a plain relative path".into())
            }
            PairError::Conf(e) => e.hint(),
            PairError::Build(e) => e.hint(),
            PairError::Sign(e) => e.hint(),
            PairError::Image(e) => e.hint(),
            PairError::Profile(e) => e.hint(),
        }
    }
}
