//! Image recipes (images/*.toml): what an image is assembled from.

use serde::Deserialize;

/// How to assemble an image (see images/builder.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub repository: String,
    pub layers: Vec<String>,
    pub lock_path: String,
    pub user: User,
    #[serde(default)]
    pub dirs: Vec<Dir>,
    pub config: ImageConfig,
    /// Packages (with their dependencies) for the recipe's `packages` layer.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where the verifier's initramfs takes busybox from.
    #[serde(default)]
    pub initramfs: Option<Initramfs>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// A package of the profile's repositories holding a static busybox.
    pub package: String,
    /// The binary's path in it (matched as a suffix: `bin/busybox` fits `usr/bin/busybox`).
    pub busybox: String,
    /// The distribution's kmod, for `ckms verify --tree/--sysext` (modprobe, depmod).
    #[serde(default)]
    pub modprobe: Option<Tool>,
    /// systemd-sysext, for `ckms verify --sysext`.
    #[serde(default)]
    pub sysext: Option<Tool>,
    /// The target's os-release (what systemd-sysext matches extensions against).
    #[serde(default)]
    pub os_release: Option<Tool>,
    /// The target's /bin/sh, for scripts that extensions bring.
    #[serde(default)]
    pub shell: Option<Tool>,
}

/// A file of a package for the VM: a binary is taken with the shared libraries of the
/// package's dependencies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub package: String,
    /// Its path in the package, matched as a suffix.
    pub binary: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dir {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub workdir: String,
    pub cmd: Vec<String>,
}
