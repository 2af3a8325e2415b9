//! Debian's package repository: signed indexes (InRelease), package metadata (Packages),
//! dependency closure, and verified parallel downloads into the content-addressed cache.
//!
//! - [`sources`]: the host's apt configuration (where mirrors come from);
//! - [`version`]: dpkg's version ordering;
//! - [`release`]: InRelease signature checks and Release fields;
//! - [`packages`]: Packages files, parsed into a compact form as they are read;
//! - [`relation`]: Depends/Provides fields;
//! - [`index`]: the merged [`Index`] and its [`PackageRef`] views;
//! - [`resolve`]: dependency closure;
//! - [`listing`]: packages by name (module sources of a suite);
//! - [`load`]: index loading, with the InRelease and Packages caches;
//! - [`fetch`]: package downloads.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::diagnose::{code, Diagnose};

pub mod fetch;
mod http;
pub(crate) use http::chain;
pub mod index;
pub mod listing;
pub mod load;
mod packages;
pub mod poll;
pub mod relation;
pub mod release;
pub mod resolve;
pub mod sources;
#[cfg(test)]
mod testserver;
mod validity;
pub mod version;

pub use fetch::{fetch_packages, FetchStats};
pub use index::{Index, PackageRef};
pub use load::load_index;

/// Where the settings that name a mirror live; repeated in several hints.
const MIRROR_HINT: &str = "check the network and any HTTP proxy (http_proxy/https_proxy), or set the mirror in ckms's config ([mirrors] in /etc/ckms/config.toml, or CKMS_MIRROR_<ROLE> in the environment)";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("mirror unreachable: {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("mirror answered {url} with HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url} lists no {what} for suite {suite}")]
    MissingIndex { url: String, suite: String, what: String },
    #[error("bad signature on {url}: {detail}")]
    BadSignature { url: String, detail: String },
    #[error("{url} does not match its signature by trusted key {signer}: it was changed after signing")]
    Tampered { url: String, signer: String },
    #[error("keyring {path}: {detail}")]
    Keyring { path: PathBuf, detail: String },
    #[error("{url} (suite {suite}) expired on {valid_until}")]
    Expired { url: String, suite: String, valid_until: String },
    #[error("malformed index {url}: {detail}")]
    Malformed { url: String, detail: String },
    #[error("checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}")]
    Checksum { url: String, expected: String, actual: String },
    #[error("size mismatch for {url}: expected {expected} bytes, got {actual}")]
    Size { url: String, expected: u64, actual: u64 },
    #[error("cannot decompress {url}: {detail}")]
    Decompress { url: String, detail: String },
    #[error("{chain}: no package satisfies {relation}")]
    Unresolvable { chain: String, relation: String },
    #[error("no package named {name} in suites {suites}")]
    NoSuchPackage { name: String, suites: String },
    #[error("{path}:{line}: {detail}")]
    Sources { path: PathBuf, line: usize, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl Diagnose for RepoError {
    fn exit_code(&self) -> i32 {
        use RepoError::*;
        match self {
            Unreachable { .. } | Http { .. } | MissingIndex { .. } | Malformed { .. } => code::MIRROR_UNREACHABLE,
            BadSignature { .. } | Tampered { .. } | Keyring { .. } | Expired { .. } => code::BAD_SIGNATURE,
            Checksum { .. } | Size { .. } | Decompress { .. } => code::CHECKSUM_MISMATCH,
            Unresolvable { .. } | NoSuchPackage { .. } => code::UNRESOLVABLE,
            Sources { .. } => code::USAGE,
            Io { .. } => code::IO,
            Cache(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        use RepoError::*;
        Some(match self {
            Unreachable { .. } => MIRROR_HINT.to_string(),
            Http { status, .. } if *status == 404 => {
                "the mirror does not have this file: check the suite and component names, or that the mirror carries this release (releases past their end of life move to archive mirrors); set another mirror in [mirrors] of /etc/ckms/config.toml or CKMS_MIRROR_<ROLE>".into()
            }
            Http { .. } => format!("the mirror failed; try again later, or {MIRROR_HINT}"),
            MissingIndex { .. } => {
                "check the suite's components and architecture in the profile or mirror config".into()
            }
            BadSignature { .. } => {
                "the index is not signed by a trusted key: check that the mirror is genuine and that the keyring (e.g. /usr/share/keyrings/debian-archive-keyring.gpg from debian-archive-keyring) is current".into()
            }
            Tampered { .. } => {
                "the mirror, a caching proxy or the network altered the index: run again with --refresh, or use another mirror; nothing from it was used or cached".into()
            }
            Keyring { .. } => {
                "install or update the keyring package (debian-archive-keyring), or point ckms at a readable OpenPGP keyring".into()
            }
            Expired { .. } => {
                "the mirror is out of date or a frozen snapshot: use a current mirror, or disable the check (Acquire::Check-Valid-Until \"false\"; in apt.conf, or check_valid_until = false in ckms config)".into()
            }
            Malformed { .. } => format!("the mirror served a broken index; try again, or {MIRROR_HINT}"),
            Checksum { .. } | Size { .. } | Decompress { .. } => {
                "the download was corrupted or the mirror is inconsistent (mid-sync); run again, or use ckms's --refresh, or another mirror".into()
            }
            Unresolvable { .. } => {
                "the suites configured do not provide a consistent set of packages: check that the matching updates/security suites are enabled, or refresh the indexes (--refresh)".into()
            }
            NoSuchPackage { .. } => {
                "check the package name, and that the suite that carries it (e.g. the -security or -updates suite) is configured; refresh the indexes with --refresh".into()
            }
            Sources { .. } => "fix the apt source entry, or set the mirror in ckms's config instead".into(),
            Io { source, .. } if source.raw_os_error() == Some(28) => {
                "the disk is full: free space, or move the cache with --cache-dir or CKMS_CACHE_DIR".into()
            }
            Io { .. } => "check that the path is readable and the cache directory writable (--cache-dir or CKMS_CACHE_DIR)".into(),
            Cache(e) => return e.hint(),
        })
    }
}

/// One suite of one mirror to read, e.g. `http://HOST/debian` `bookworm` `[main]` `amd64`.
#[derive(Debug, Clone)]
pub struct SuiteSpec {
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
}

#[derive(Debug, Clone)]
pub struct RepoOptions {
    /// OpenPGP keyrings (binary .gpg or armored .asc/.pgp) trusted for InRelease.
    pub keyrings: Vec<PathBuf>,
    pub check_valid_until: bool,
    /// A cached InRelease younger than this is used without asking the mirror.
    pub max_age: std::time::Duration,
    /// Ignore `max_age`: always ask the mirror.
    pub refresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }
}

/// `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub arch: Option<String>,
    pub constraint: Option<(Op, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Depends + Pre-Depends; the inner Vec holds alternatives (`a | b`).
    pub depends: Vec<Vec<Relation>>,
    pub provides: Vec<Relation>,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub source: Option<String>,
    pub essential: bool,
    /// `Multi-Arch: same` (a library or its headers): a cross image takes it from the kernel's
    /// architecture.
    pub multi_arch_same: bool,
    /// Where it came from.
    pub mirror: String,
    pub suite: String,
}

impl Package {
    pub fn url(&self) -> String {
        format!("{}/{}", self.mirror.trim_end_matches('/'), self.filename)
    }
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct SuiteInfo {
    pub mirror: String,
    pub suite: String,
    /// The InRelease `Date:` field.
    pub date: String,
    pub inrelease_sha256: String,
}
