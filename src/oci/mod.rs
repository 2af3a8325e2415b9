//! OCI images leaving ckms, whoever makes them (`publish::kmm`'s module images, `kube::render`'s
//! build images): their layers written by ckms's layer writer ([`layer`]), pushed to a
//! registry over the OCI distribution API ([`registry`]), tagged after kernel releases
//! ([`tag_of`]). Making and loading builder images is [`crate::image`]'s.

pub mod layer;
pub mod registry;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::diagnose::{code, Diagnose};

#[derive(Debug, Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A layer or an archive that cannot be written or read back.
    #[error("image {tag}: {message}")]
    Image { tag: String, message: String },
    #[error("registry {host}: {message}")]
    Registry { host: String, message: String },
}

impl OciError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
        move |source| OciError::Io { path: path.to_path_buf(), source }
    }
}

impl Diagnose for OciError {
    fn exit_code(&self) -> i32 {
        match self {
            OciError::Io { .. } => code::IO,
            OciError::Image { .. } | OciError::Registry { .. } => code::USAGE,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            OciError::Io { .. } => "check that the output directory is writable and its disk not full".into(),
            OciError::Image { .. } => "check that the output directory and TMPDIR are writable".into(),
            OciError::Registry { .. } => "check --registry, --registry-user/--registry-password-file, and \
                 --insecure (plain HTTP) or --ca-cert for the registry's TLS"
                .into(),
        })
    }
}

/// The image tag of a kernel release: the release itself, which is what KMM's
/// `${KERNEL_FULL_VERSION}` expands to, except that an OCI tag cannot hold `+` (Debian 13's
/// `6.12.48+deb13-amd64`): there it becomes `_` and the Module names that kernel's image
/// literally.
pub fn tag_of(kernel: &str) -> String {
    kernel.replace('+', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_s_tag_has_no_plus() {
        assert_eq!(tag_of("6.1.0-56-amd64"), "6.1.0-56-amd64");
        assert_eq!(tag_of("6.12.48+deb13-amd64"), "6.12.48_deb13-amd64");
    }
}
