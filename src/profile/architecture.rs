//! What ckms knows of each architecture (profiles/architectures.toml).

use serde::Deserialize;

/// What ckms knows of an architecture (profiles/architectures.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// `uname -m` on such a kernel (dkms's `$arch`).
    pub machine: String,
    /// The GNU type, the cross compiler's prefix.
    pub triplet: String,
    /// The kernel's name for it (make's `ARCH=`).
    pub kernel: String,
    /// os-release `ARCHITECTURE=`.
    pub systemd: String,
    /// The OCI image config's `architecture`.
    pub oci: String,
    pub qemu: Qemu,
}

/// How `ckms verify` boots a kernel of an architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    /// The Debian package holding the emulator (of the build machine's architecture).
    pub package: String,
    pub binary: String,
    /// Machine and CPU arguments.
    pub args: Vec<String>,
    /// The serial console the kernel writes to.
    pub console: String,
}
