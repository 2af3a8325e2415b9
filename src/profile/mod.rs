//! Distro knowledge as data: profiles (`profiles/*.toml`), mirror roles (`profiles/mirrors.toml`)
//! and image recipes (`images/*.toml`). Code reads these; it never branches on a distro's name.
//!
//! Files are looked up in each data directory in turn (`$CKMS_DATA_DIR`, `/etc/ckms`,
//! `/usr/share/ckms`), then in the copies built into the binary; the first file of a name wins.

use regex::Regex;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};

mod architecture;
mod catalog;
mod recipe;
#[cfg(test)]
mod tests;

pub use architecture::{Architecture, Qemu};
pub use catalog::{data_dirs, Catalog};
pub use recipe::{Dir, ImageConfig, Initramfs, Recipe, Tool, User};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("no profile named '{name}' (known: {known})")]
    Unknown { name: String, known: String },
    #[error("profile {profile}: the build machine ({machine}) is none of its architectures, and cross builds run on one of them")]
    NoBuildMachine { profile: String, machine: String },
    #[error("profile {profile}: architecture '{arch}' is not in profiles/architectures.toml")]
    UnknownArchitecture { profile: String, arch: String },
    #[error("no image recipe named '{0}'")]
    UnknownRecipe(String),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Diagnose for ProfileError {
    fn exit_code(&self) -> i32 {
        match self {
            ProfileError::Unknown { .. } => code::USAGE,
            _ => code::BAD_PROFILE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ProfileError::Invalid { .. } => "fix the file, or remove it to fall back to the built-in copy".into(),
            ProfileError::Unknown { .. } => "`ckms profiles` lists the profiles".into(),
            ProfileError::NoBuildMachine { .. } => {
                "build on a machine of one of the profile's architectures, or add this one to its `architectures`"
                    .into()
            }
            ProfileError::UnknownArchitecture { .. } => "describe it in profiles/architectures.toml".into(),
            ProfileError::UnknownRecipe(_) => "image recipes live in images/*.toml".into(),
            ProfileError::Io { .. } => "check the file's permissions".into(),
        })
    }
}

type Result<T> = std::result::Result<T, ProfileError>;

/// One distro release on one architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The file's name for the build machine's architecture, `<file>-<arch>` for the others.
    pub name: String,
    /// The file's name (the distro release), shared by its architectures.
    pub family: String,
    pub description: String,
    /// Debian's name for the architecture ("amd64", "arm64").
    pub arch: String,
    /// The architecture as `uname -m` prints it (dkms's `arch`), e.g. "x86_64".
    pub machine: String,
    pub triplet: String,
    pub keyrings: Vec<PathBuf>,
    pub suites: Vec<Suite>,
    pub packages: Packages,
    pub kernel: KernelRules,
    pub filesystem: Filesystem,
    pub install: Install,
    /// The os-release of the systems the profile's kernels run on (what `farm publish`
    /// writes into system extensions); absent: the flags must say it.
    #[serde(default)]
    pub os: Option<Os>,
    /// The dkms release the distribution ships: whose lines ckms prints as `dkms` on such a
    /// host (profiles/dkms/<release>.toml).
    #[serde(default)]
    pub dkms: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// A role from `profiles/mirrors.toml`, resolved to a URL at run time.
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    pub base: Vec<String>,
    #[serde(with = "regexes")]
    pub exclude: Vec<Regex>,
    /// What a module package's Depends may name that the builder image already is (dkms, the
    /// kernel's compiler, make, the C library): never resolved again from the index.
    #[serde(default, with = "regexes")]
    pub provided: Vec<Regex>,
    /// Packages that are other modules' sources (`*-dkms`): shown to the build under /usr/src
    /// when they are in the tree, never installed into an image.
    #[serde(default, with = "regexes")]
    pub module_sources: Vec<Regex>,
    /// What a cross image also takes from the kernel's architecture, with its Multi-Arch: same
    /// dependencies: the C library's development files, which the cross compiler links
    /// userland programs against (configure scripts test the compiler with one).
    #[serde(default)]
    pub cross_target: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRules {
    #[serde(with = "regex_one")]
    pub headers: Regex,
    #[serde(with = "regex_one")]
    pub releases: Regex,
    #[serde(with = "regexes")]
    pub kernel_packages: Vec<Regex>,
    /// Kernel packages whose programs run on the build machine (kbuild): a cross build takes
    /// them from the build machine's architecture.
    #[serde(default, with = "regexes")]
    pub build_machine_packages: Vec<Regex>,
    /// The cross compiler's package (`{gcc}`, `{triplet}` filled in).
    #[serde(default)]
    pub cross_compiler: Option<String>,
    #[serde(with = "regex_one")]
    pub compiler: Regex,
    /// The package holding a release's vmlinuz and in-tree modules (`{kver}`: the release),
    /// which `ckms verify` boots.
    pub image: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub usr_merge: Vec<String>,
    /// Directories whose package contents the image keeps elsewhere (linked back entry by entry).
    #[serde(default)]
    pub relocate: Vec<Relocate>,
    #[serde(default)]
    pub symlinks: Vec<Symlink>,
}

/// `[[filesystem.relocate]]`: what packages put in `from` goes to `to`, a directory at the same
/// depth, and `from/<entry>` links to it; a build can then mount a directory of its own on
/// `from` (the source tree, /usr/src) and link the image's entries back into it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relocate {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    pub module_location: String,
}

/// `[os]`: the target system's os-release fields a system extension must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// os-release `ID=`, e.g. "debian".
    pub id: String,
    /// os-release `VERSION_ID=`, e.g. "12"; none for a rolling release (sid).
    #[serde(default)]
    pub version_id: Option<String>,
    /// systemd's architecture name (os-release `ARCHITECTURE=`), e.g. "x86-64".
    pub architecture: String,
}

impl Profile {
    /// Whether the profile's architecture is the build machine's: its builds need no cross compiler.
    pub fn is_native(&self) -> bool {
        self.machine == std::env::consts::ARCH
    }

    /// The kernel release named by a headers package, if it is one.
    pub fn kernel_of_headers<'a>(&self, package: &'a str) -> Option<&'a str> {
        self.kernel.headers.captures(package)?.name("kver").map(|m| m.as_str())
    }

    /// The compiler version (e.g. "12") if `package` is the kernel's compiler package.
    pub fn compiler_of<'a>(&self, package: &'a str) -> Option<&'a str> {
        self.kernel.compiler.captures(package)?.name("version").map(|m| m.as_str())
    }

    /// Whether this profile can offer `release` at all (by name, without reading its index):
    /// its series and its architecture's flavours.
    pub fn may_offer(&self, release: &str) -> bool {
        self.kernel.releases.is_match(release) && self.kernel_of_headers(&format!("linux-headers-{release}")).is_some()
    }

    pub fn is_kernel_package(&self, package: &str) -> bool {
        self.kernel.kernel_packages.iter().any(|r| r.is_match(package))
    }

    /// Whether a cross build takes `package` from the build machine's architecture.
    pub fn is_build_machine_package(&self, package: &str) -> bool {
        self.kernel.build_machine_packages.iter().any(|r| r.is_match(package))
    }

    /// The package of the cross compiler for this architecture's kernels built with gcc-`gcc`
    /// (package names have '-' for the triplet's '_': gcc-12-x86-64-linux-gnu).
    pub fn cross_compiler(&self, gcc: &str) -> Option<String> {
        let triplet = self.triplet.replace('_', "-");
        Some(self.kernel.cross_compiler.as_ref()?.replace("{gcc}", gcc).replace("{triplet}", &triplet))
    }

    /// The first keyring that exists on this host, else all of them (so the error names them).
    pub fn existing_keyrings(&self) -> Vec<PathBuf> {
        let found: Vec<_> = self.keyrings.iter().filter(|k| k.exists()).cloned().collect();
        if found.is_empty() {
            self.keyrings.clone()
        } else {
            found
        }
    }

    /// Where the image keeps what packages put in `dir` (an absolute path), if it is relocated.
    pub fn relocated(&self, dir: &str) -> Option<&str> {
        let dir = dir.trim_end_matches('/');
        self.filesystem.relocate.iter().find(|r| r.from.trim_end_matches('/') == dir).map(|r| r.to.as_str())
    }

    /// Symlinks with `{triplet}` and `{gcc}` filled in.
    pub fn symlinks(&self, gcc: &str) -> Vec<Symlink> {
        self.filesystem
            .symlinks
            .iter()
            .map(|s| Symlink {
                path: s.path.clone(),
                target: s.target.replace("{triplet}", &self.triplet).replace("{gcc}", gcc),
            })
            .collect()
    }
}

/// How a host or configuration source provides a mirror role's URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRole {
    #[serde(with = "regex_one")]
    pub host_suites: Regex,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ProfileError::Io { path: path.to_path_buf(), source })
}

fn parse<T: serde::de::DeserializeOwned>(origin: &str, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| invalid(origin, e.to_string()))
}

fn invalid(origin: &str, message: String) -> ProfileError {
    ProfileError::Invalid { file: origin.to_string(), message }
}

mod regex_one {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Regex, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map_err(serde::de::Error::custom)
    }
}

mod regexes {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Regex>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| Regex::new(s).map_err(serde::de::Error::custom)).collect()
    }
}
