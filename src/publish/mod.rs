//! `farm publish`: a store's built modules in the forms hosts consume. The store is the farm's
//! cache; publishing turns its pairs into what a fleet installs:
//!
//! - [`apt`]: one Debian package per (module, kernel) in a signed apt repository;
//! - [`sysext`]: one systemd-sysext image per (module set, kernel), for immutable systems;
//! - [`cache`]: a signed index of the store and its files, for other ckms hosts;
//! - [`kmm`]: one OCI image per kernel for Kubernetes Kernel Module Management, and its `Module`.
//!
//! [`pairs`] reads the store (every file checked against its record); each format writes a
//! complete tree into a temporary directory beside `--out`, which is then renamed into place,
//! so that a reader (an HTTP server, apt) sees the old tree or the new one, never half of one.
//! Everything written is a function of the store (times are the entries' build times), so
//! publishing twice gives the same bytes.

pub mod apt;
pub mod cache;
pub mod deb;
pub mod kmm;
pub mod openpgp;
pub mod pairs;
#[cfg(test)]
mod race;
pub mod signer;
mod staging;
pub mod sysext;

pub use staging::Staging;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::diagnose::{code, Diagnose};
use crate::farm::ready::{self, KernelReadiness};
use crate::farm::store::{Damage, Store};
use crate::farm::FarmError;
use crate::oci::registry::Registry;
use crate::oci::OciError;
use crate::profile::Catalog;
use crate::sign::SignError;

/// What `farm publish --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A signed index of the store, for other ckms hosts.
    Cache,
    /// Debian packages in a signed apt repository.
    Apt,
    /// Kernel Module Management images ([`kmm::publish`]).
    Kmm,
    /// systemd-sysext images.
    Sysext,
}

impl Format {
    pub const NAMES: [&'static str; 4] = ["cache", "apt", "kmm", "sysext"];

    pub fn name(self) -> &'static str {
        match self {
            Format::Cache => "cache",
            Format::Apt => "apt",
            Format::Kmm => "kmm",
            Format::Sysext => "sysext",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "cache" => Ok(Format::Cache),
            "apt" => Ok(Format::Apt),
            "kmm" => Ok(Format::Kmm),
            "sysext" => Ok(Format::Sysext),
            _ => Err(format!("unknown format {s:?}: one of {}", Format::NAMES.join(", "))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// Writing an image's layers, pushing it.
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("{0} holds no ckms store (no ckms-store.json)")]
    NoStore(PathBuf),
    #[error("the store {store} has no built module{what}")]
    NothingBuilt { store: PathBuf, what: String },
    #[error("{wanted} is not in the store {store}")]
    NotInStore { store: PathBuf, wanted: String, known: Vec<String> },
    #[error("--format {0} needs --key: what hosts trust must be signed")]
    KeyRequired(Format),
    #[error("the OpenPGP key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("signing with the OpenPGP key {fingerprint}: {message}")]
    Sign { fingerprint: String, message: String },
    #[error("damaged entries in the store {store}: {}", each(.damaged))]
    Damaged { store: PathBuf, damaged: Vec<Damage> },
    #[error("store entry {key} ({module} for {kernel}): {message}")]
    Entry { key: String, module: String, kernel: String, message: String },
    #[error("kernel {kernel}: profile {profile} is unknown")]
    Profile { kernel: String, profile: String },
    #[error("kernel {kernel}: profile {profile} names no target system (no [os]) and {missing} was not given")]
    NoOs { kernel: String, profile: String, missing: &'static str },
    #[error("--os-architecture {given} would name the architecture of every extension, but the kernels published are of {}", architectures.join(", "))]
    OneArchitectureForMany { given: String, architectures: Vec<String> },
    #[error("{0} was not found")]
    ToolMissing(&'static str),
    #[error("image name {0:?} is not <lowercase repository>:<tag>")]
    BadImageName(String),
    #[error("kernel {kernel}: the image's userland ({package}): {message}")]
    Userland { kernel: String, package: String, message: String },
    #[error("image {tag}: {message}")]
    Image { tag: String, message: String },
    #[error("--format {0} is published by `kmm::publish` (it needs the profile's index and an engine)")]
    NeedsContext(Format),
    #[error("{tool} failed for {path}: {message}")]
    Tool { tool: &'static str, path: PathBuf, message: String },
    #[error("{module} for {kernel} is signed by the certificate {signer}, not by the one the farm signs with now ({})", configured.as_deref().unwrap_or("none found"))]
    OtherSigner { module: String, kernel: String, signer: String, configured: Option<String> },
    #[error(transparent)]
    ModuleCert(#[from] SignError),
}

impl PublishError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
        move |source| PublishError::Io { path: path.to_path_buf(), source }
    }
}

impl Diagnose for PublishError {
    fn exit_code(&self) -> i32 {
        match self {
            PublishError::ModuleCert(e) => e.exit_code(),
            PublishError::Farm(e) => e.exit_code(),
            PublishError::Oci(e) => e.exit_code(),
            PublishError::Io { .. } | PublishError::Tool { .. } => code::IO,
            PublishError::Key { .. } | PublishError::Sign { .. } => code::SIGNING_FAILED,
            PublishError::OtherSigner { .. } => code::BAD_MODULE_SIGNATURE,
            PublishError::Profile { .. } => code::BAD_PROFILE,
            PublishError::Entry { .. } => code::IO,
            PublishError::Damaged { .. } => code::DAMAGED_STORE,
            _ => code::USAGE,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            PublishError::ModuleCert(e) => return e.hint(),
            PublishError::Farm(e) => return e.hint(),
            PublishError::Oci(e) => return e.hint(),
            PublishError::Io { .. } => "check that the output directory is writable and its disk not full".into(),
            PublishError::NoStore(_) => "name the directory `ckms farm build --store` wrote".into(),
            PublishError::OtherSigner { .. } => "after a key change, `ckms farm build` with the new key re-signs the \
                 stored pairs (no container); or name the certificate they were signed with: --cert FILE"
                .into(),
            PublishError::NothingBuilt { .. } => {
                "`ckms farm status --store DIR` shows the pairs; build some with `ckms farm build`".into()
            }
            PublishError::NotInStore { known, .. } => format!("the store has: {}", known.join(", ")),
            PublishError::KeyRequired(_) => "give the farm's armored OpenPGP secret key: --key farm.asc (e.g. \
                 gpg --batch --passphrase '' --quick-gen-key 'ckms farm <farm@example.org>' ed25519 sign never; \
                 gpg --armor --export-secret-keys farm@example.org > farm.asc)"
                .into(),
            PublishError::Key { .. } => "--key takes an ASCII-armored OpenPGP secret key without a passphrase \
                 (gpg --armor --export-secret-keys); its primary key must be able to sign"
                .into(),
            PublishError::Sign { .. } => "the key's primary key must be able to sign (gpg --edit-key: usage S)".into(),
            PublishError::Entry { .. } => {
                "nothing was published: `ckms farm build` with the same sources builds the entry again".into()
            }
            PublishError::Damaged { .. } => "nothing was published: `ckms farm build` with the same sources builds \
                 damaged entries again; --skip-damaged publishes the others and leaves these out"
                .into(),
            PublishError::Profile { .. } => "the store was built with profiles this ckms does not have".into(),
            PublishError::NoOs { .. } => "give --os-id and --os-version-id (or --sysext-level) and --os-architecture, \
                 as the target's /etc/os-release names them"
                .into(),
            PublishError::OneArchitectureForMany { .. } => "leave --os-architecture out (each kernel's profile names \
                 its own: profiles/architectures.toml), or publish one architecture's kernels at a time (-k KVER)"
                .into(),
            PublishError::ToolMissing(tool) => format!("install it: apt-get install {}", package_of(tool)),
            PublishError::Tool { .. } | PublishError::NeedsContext(_) => return None,
            PublishError::BadImageName(_) => {
                "give --repository as a lowercase image name, e.g. registry.example.org/kmods/v4l2loopback".into()
            }
            PublishError::Userland { .. } => {
                "the profile's index must offer busybox-static: `ckms kernels` refreshes the indexes".into()
            }
            PublishError::Image { .. } => "check that the output directory and TMPDIR are writable".into(),
        })
    }
}

/// Damaged entries, each named, for one message.
fn each(damaged: &[Damage]) -> String {
    damaged.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The Debian package that provides an external tool publishing runs.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.erofs" => "erofs-utils",
        "mksquashfs" => "squashfs-tools",
        _ => "the package that provides it",
    }
}

/// The target system of a system extension, as its os-release names it; flags override the
/// profile's `[os]`.
#[derive(Debug, Clone, Default)]
pub struct OsOverride {
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub sysext_level: Option<String>,
    pub architecture: Option<String>,
}

/// One `farm publish` run.
#[derive(Debug, Clone)]
pub struct Request {
    pub store: PathBuf,
    pub format: Format,
    /// Default: `<store>/publish/<format>`.
    pub out: Option<PathBuf>,
    /// The farm's armored OpenPGP secret key (signs the apt repository).
    pub key: Option<PathBuf>,
    /// `kmm`: the registry to push the images to.
    pub registry: Option<Registry>,
    /// `kmm`: the images' repository, tagged `<repository>:<kver>` (default
    /// `localhost/ckms/<name>`).
    pub repository: Option<String>,
    /// `kmm`: load the images into the engine too.
    pub load: bool,
    /// Leave damaged entries out (each said in the notes) instead of refusing the store.
    pub skip_damaged: bool,
    /// Only these modules / kernels (empty: all).
    pub modules: Vec<String>,
    pub kernels: Vec<String>,
    /// `sysext`: one image per kernel named NAME-<kernel> holding every selected module
    /// (default: one image per module and kernel). `kmm`: the images' and the Module's name.
    pub name: Option<String>,
    pub filesystem: sysext::Filesystem,
    pub os: OsOverride,
    /// The certificate the farm signs modules with now: no pair signed by another is
    /// published, and `cache` publishes it for hosts.
    pub module_cert: Option<signer::ModuleCert>,
}

/// What a run wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    pub format: String,
    pub out: PathBuf,
    /// Relative to `out`, sorted.
    pub files: Vec<String>,
    /// What a host does with it (a sources line, the merge hook).
    pub notes: Vec<String>,
}

/// Publishes the store's built pairs in `req.format`.
pub fn publish(req: &Request, catalog: &Catalog) -> Result<Published, PublishError> {
    match req.format {
        Format::Kmm => return Err(PublishError::NeedsContext(req.format)),
        Format::Apt | Format::Sysext | Format::Cache => {}
    }
    let Opened { pairs, out, left_out, kernels } = open(req, catalog)?;
    let staging = Staging::new(&out)?;
    let mut notes = match req.format {
        Format::Apt | Format::Cache => {
            let path = req.key.as_deref().ok_or(PublishError::KeyRequired(req.format))?;
            let key = openpgp::Key::load(path)?;
            if req.format == Format::Apt {
                apt::write(staging.path(), &pairs, &key)?
            } else {
                cache::write(staging.path(), &pairs, &kernels, &key, req.module_cert.as_ref())?
            }
        }
        Format::Sysext => {
            let images = sysext::plan(&pairs, req.name.as_deref(), &req.os)?;
            sysext::write(staging.path(), &images, req.filesystem, &sysext::Mkfs)?
        }
        Format::Kmm => return Err(PublishError::NeedsContext(req.format)),
    };
    write_readiness(staging.path(), &kernels)?;
    let files = list_files(staging.path())?;
    staging.commit()?;
    notes.extend(left_out);
    Ok(Published { format: req.format.name().into(), out, files, notes })
}

/// What a publication is made of.
pub(crate) struct Opened {
    pub pairs: Vec<pairs::BuiltPair>,
    /// Where the output goes.
    pub out: PathBuf,
    /// A note for each damaged entry left out (`--skip-damaged`).
    pub left_out: Vec<String>,
    /// The readiness of each kernel published, over every module of the farm's matrix.
    pub kernels: Vec<KernelReadiness>,
}

/// The store's selected pairs and what goes with them.
pub(crate) fn open(req: &Request, catalog: &Catalog) -> Result<Opened, PublishError> {
    if !req.store.join("ckms-store.json").is_file() {
        return Err(PublishError::NoStore(req.store.clone()));
    }
    let store = Store::open(&req.store)?;
    let (pairs, damaged) = pairs::read(&store, catalog, &req.modules, &req.kernels, req.skip_damaged)?;
    signer::check(&pairs, req.module_cert.as_ref())?;
    let out = req.out.clone().unwrap_or_else(|| store.root().join("publish").join(req.format.name()));
    let left_out = damaged.iter().map(|d| format!("left out, damaged: {d}")).collect();
    let mut kernels = ready::of_store(&store);
    kernels.retain(|k| pairs.iter().any(|p| p.kernel == k.kernel));
    Ok(Opened { pairs, out, left_out, kernels })
}

/// Where every format says which of its kernels are ready (the cache's signed index too).
pub const READINESS: &str = "readiness.json";

/// Writes [`READINESS`] into `dir`.
pub(crate) fn write_readiness(dir: &Path, kernels: &[KernelReadiness]) -> Result<(), PublishError> {
    let text = serde_json::to_string_pretty(kernels).unwrap_or_default() + "\n";
    write_file(dir, READINESS, text.as_bytes())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), PublishError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(PublishError::io(path))
}

/// Writes `bytes` to `dir/rel`, making the directories on the way.
pub(crate) fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), PublishError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(PublishError::io(parent))?;
    }
    std::fs::write(&path, bytes).map_err(PublishError::io(&path))
}

/// Every regular file under `dir`, relative and sorted.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, PublishError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(PublishError::io(&d))? {
            let e = e.map_err(PublishError::io(&d))?;
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_unknown_ones_are_named() {
        for name in Format::NAMES {
            assert_eq!(name.parse::<Format>().unwrap().name(), name);
        }
        assert!("rpm".parse::<Format>().unwrap_err().contains("apt"));
    }
}
