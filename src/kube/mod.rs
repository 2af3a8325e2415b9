//! The farm on Kubernetes: the same plan as `farm build`, built by Indexed Jobs.
//!
//! - [`manifest`]: the Jobs, the NetworkPolicy and the results claim, as typed Kubernetes objects;
//! - [`follow`]: `farm follow` as a Deployment, and [`api`]: the Jobs it creates through the API;
//! - [`podsecurity`]: PodSecurity "restricted", checked on every pod spec ckms writes;
//! - [`process`]: the runner of the in-pod command: a run as child processes of the pod;
//! - [`transcript`]: what such a run leaves in the results volume;
//! - [`replay`]: the runner of `collect`: a transcript played back to the same build code.

pub mod api;
pub mod collect;
pub mod follow;
pub mod manifest;
pub mod plan;
pub mod pod;
pub mod podsecurity;
pub mod process;
pub mod render;
pub mod replay;
pub mod transcript;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::artifact::ArtifactError;
use crate::cache::CacheError;
use crate::confine::ConfineError;
use crate::context::ContextError;
use crate::diagnose::{code, Diagnose};
use crate::farm::FarmError;
use crate::image::ImageError;
use crate::kernel::KernelError;
use crate::oci::OciError;
use crate::profile::ProfileError;

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A result directory that cannot be read as one.
    #[error("the result in {dir} is unreadable: {message}")]
    Result { dir: PathBuf, message: String },
    /// A result file whose bytes are not those the pod recorded.
    #[error("the result in {dir} was changed after its pod wrote it: {file}: {message}")]
    Tampered { dir: PathBuf, file: String, message: String },
    /// A result that is not the pair its index was given.
    #[error("the result in {dir} is for {found}, but that index builds {expected}: refused")]
    WrongPair { dir: PathBuf, expected: String, found: String },
    /// A file of a pod's result collect does not read: named outside its directory, a link, a
    /// device, a FIFO, or larger than such a file may be.
    #[error("the result names a file collect will not read: {0}")]
    Confined(#[from] ConfineError),
    /// The run in the pod did not do what the collecting machine decides for the pair.
    #[error("the result in {dir} does not replay: {message}")]
    Replay { dir: PathBuf, message: String },
    /// The API server refused a request, or did not answer.
    #[error("the Kubernetes API: {message}")]
    Api { message: String },
    #[error("manifest file name {0:?} is not a plain file name")]
    BadFileName(String),
    #[error("cannot render a Kubernetes object as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    /// Boxed: the composing verbs' errors are large, and rare.
    Farm(Box<FarmError>),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

impl KubeError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KubeError + '_ {
        move |source| KubeError::Io { path: path.to_path_buf(), source }
    }
}

impl Diagnose for KubeError {
    fn exit_code(&self) -> i32 {
        match self {
            KubeError::Artifact(e) => e.exit_code(),
            KubeError::Context(e) => e.exit_code(),
            KubeError::Cache(e) => e.exit_code(),
            KubeError::Profile(e) => e.exit_code(),
            KubeError::Kernel(e) => e.exit_code(),
            KubeError::Image(e) => e.exit_code(),
            KubeError::Oci(e) => e.exit_code(),
            KubeError::Farm(e) => e.exit_code(),
            KubeError::Confined(e) => e.exit_code(),
            KubeError::Io { .. } => code::IO,
            KubeError::Result { .. } | KubeError::WrongPair { .. } | KubeError::Replay { .. } => code::REFUSED,
            KubeError::Tampered { .. } => code::CHECKSUM_MISMATCH,
            KubeError::BadFileName(_) | KubeError::Json(_) => code::USAGE,
            KubeError::Api { .. } => code::IO,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            KubeError::Artifact(e) => e.hint(),
            KubeError::Context(e) => e.hint(),
            KubeError::Cache(e) => e.hint(),
            KubeError::Profile(e) => e.hint(),
            KubeError::Kernel(e) => e.hint(),
            KubeError::Image(e) => e.hint(),
            KubeError::Oci(e) => e.hint(),
            KubeError::Farm(e) => e.hint(),
            KubeError::Io { .. } => Some("check that the directory is readable, writable and its disk not full".into()),
            KubeError::BadFileName(_) | KubeError::Json(_) => None,
            KubeError::Api { .. } => Some(
                "the follow pod's account may create, get, list, watch and delete Jobs in its namespace \
                 (the Role follow-render writes); the cycle is tried again"
                    .into(),
            ),
            KubeError::Result { .. }
            | KubeError::Confined(_)
            | KubeError::Tampered { .. }
            | KubeError::WrongPair { .. }
            | KubeError::Replay { .. } => Some(
                "nothing of it was stored; the pair is built again by the next `ckms farm kube render` \
                     (or `ckms farm build`)"
                    .into(),
            ),
        }
    }
}

impl From<FarmError> for KubeError {
    fn from(e: FarmError) -> Self {
        KubeError::Farm(Box::new(e))
    }
}
