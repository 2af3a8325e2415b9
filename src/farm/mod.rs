//! The prebuild farm: a module × kernel matrix built in parallel, each pair stored under a key
//! that is a digest of everything that decides its output.
//!
//! The split is Nix's: [`plan`] evaluates sources and kernel selectors into pairs and their keys
//! (no container), [`evaluate`] sets them against what the store holds, [`schedule`] builds the
//! pairs not in the store, each a pure function of its inputs run in its builder image by the
//! lifecycle's one-pair build, and the [`store`] gives a finished pair back by its key.
//! [`report`] shows the matrix (text, JSON lines, one HTML file); [`verdict`] says what a run
//! came to as an exit code; [`signing`] finds the key pair the farm signs with.

pub mod evaluate;
pub mod exec;
pub mod follow;
pub mod plan;
pub mod proof;
pub mod ready;
pub mod report;
pub mod resign;
pub mod schedule;
pub mod select;
pub mod signing;
pub mod store;
pub mod verdict;

use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::context::ContextError;
use crate::diagnose::{code, Diagnose};
use crate::error::Usage;
use crate::kernel::KernelError;
use crate::lifecycle::LifecycleError;
use crate::pair::PairError;
use crate::profile::ProfileError;
use crate::sign::SignError;
use crate::verify::VerifyError;

#[derive(Debug, Error)]
pub enum FarmError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not empty and holds no ckms store (no ckms-store.json)")]
    NotAStore(PathBuf),
    #[error("the store {path} has another layout ({found})")]
    StoreFormat { path: PathBuf, found: String },
    #[error("store entry {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("kernel selector {selector:?}: {message}")]
    Selector { selector: String, message: String },
    #[error("{path}: {message}")]
    Follow { path: PathBuf, message: String },
    #[error("kernel selector {selector:?} matches no kernel the profiles offer")]
    NoKernel { selector: String, closest: Vec<String> },
    #[error(transparent)]
    Usage(#[from] Usage),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Pair(#[from] PairError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    /// Boxed: the composing verbs' errors are large, and rare.
    Lifecycle(Box<LifecycleError>),
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl FarmError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FarmError + '_ {
        move |source| FarmError::Io { path: path.to_path_buf(), source }
    }
}

impl Diagnose for FarmError {
    fn exit_code(&self) -> i32 {
        match self {
            FarmError::Sign(e) => e.exit_code(),
            FarmError::Usage(e) => e.exit_code(),
            FarmError::Context(e) => e.exit_code(),
            FarmError::Profile(e) => e.exit_code(),
            FarmError::Kernel(e) => e.exit_code(),
            FarmError::Pair(e) => e.exit_code(),
            FarmError::Verify(e) => e.exit_code(),
            FarmError::Lifecycle(e) => e.exit_code(),
            FarmError::Io { .. } | FarmError::Store { .. } => code::IO,
            FarmError::NotAStore(_)
            | FarmError::StoreFormat { .. }
            | FarmError::Selector { .. }
            | FarmError::Follow { .. } => code::USAGE,
            FarmError::NoKernel { .. } => code::UNKNOWN_KERNEL,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            FarmError::Sign(e) => e.hint(),
            FarmError::Usage(e) => e.hint(),
            FarmError::Context(e) => e.hint(),
            FarmError::Profile(e) => e.hint(),
            FarmError::Kernel(e) => e.hint(),
            FarmError::Pair(e) => e.hint(),
            FarmError::Verify(e) => e.hint(),
            FarmError::Lifecycle(e) => e.hint(),
            FarmError::Io { source, .. } if source.raw_os_error() == Some(28) => Some(
                "the disk holding the store is full: free space and run the same command again; finished pairs \
                 are kept, the interrupted one is rebuilt"
                    .into(),
            ),
            FarmError::Io { .. } => Some("check that the store directory is writable".into()),
            FarmError::Follow { .. } => Some(
                "docs/farm.md, \"Following the archive\": store, interval_secs, status_file, metrics, [build] with \
                 the options of farm build, [[publish]] with those of farm publish, [kube] (docs/kubernetes.md) with \
                 those of farm kube render"
                    .into(),
            ),
            FarmError::NotAStore(_) => {
                Some("name an empty or new directory, or an existing store, with --store".into())
            }
            FarmError::StoreFormat { .. } => {
                Some("this ckms writes another store format: use a new directory with --store".into())
            }
            FarmError::Store { .. } => None,
            FarmError::Selector { .. } => Some(
                "a selector is a release (6.1.0-56-amd64), a regular expression (^6\\.12\\..*\\+deb13-amd64$), \
                 @PROFILE, @PROFILE:latest or @PROFILE:latest=N"
                    .into(),
            ),
            FarmError::NoKernel { closest, .. } if !closest.is_empty() => {
                Some(format!("closest kernels offered: {}; `ckms kernels` lists them all", closest.join(", ")))
            }
            FarmError::NoKernel { .. } => Some("`ckms kernels` lists what the profiles offer".into()),
        }
    }
}

impl From<LifecycleError> for FarmError {
    fn from(e: LifecycleError) -> Self {
        FarmError::Lifecycle(Box::new(e))
    }
}
