//! The farm's store: one directory per (module, kernel) pair, named by the pair's key (a digest
//! of everything that decides its output, see [`crate::pair::key`]). Plain files, so that any
//! HTTP server can serve the store as it is:
//!
//! ```text
//! <store>/ckms-store.json          {"format": 1}
//! <store>/pairs/<key>/result.json  the entry's record, written last
//! <store>/pairs/<key>/make.log
//! <store>/pairs/<key>/modules/     unsigned, stripped modules: the build's own output
//! <store>/pairs/<key>/signed/      the same, signed and compressed as the kernel wants
//! <store>/plan.json                the last plan: every pair, so pending ones show too
//! <store>/verify/<kernel>.json     the last proof of load per kernel
//! <store>/tmp/                     entries being written, each held by its writer's lock
//! <store>/locks/<key>.lock         one writer per pair (flock)
//! ```
//!
//! Many readers, one writer per pair ([`write`]): a writer holds the pair's lock from before
//! it looks the entry up until its new entry is in place, so two runs never build one pair
//! twice; an entry appears, or replaces another, in one rename, so a reader sees a whole entry
//! or none and never a moment without one. Readers take no lock and delete nothing. Reading an
//! entry checks every file against the digests its record names ([`check`]), so an entry
//! damaged later (a disk error, a hand edit, a half-copied mirror) is named, and rebuilt.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::FarmError;

mod check;
#[cfg(test)]
pub(crate) mod tests;
mod write;

pub use check::{stored_file, Damage, Lookup};
pub use write::{once, PairLock, Staging};

/// The layout's version, written to `ckms-store.json`.
pub const FORMAT: u32 = 1;
const MARKER: &str = "ckms-store.json";
const RESULT: &str = "result.json";

/// How a pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Built,
    Failed,
    /// Excluded by the module's BUILD_EXCLUSIVE_* rules (dkms's exit 77): not a failure.
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Built => "built",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        })
    }
}

/// A file of an entry with the digest it had when stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Relative to the entry, e.g. `modules/v4l2loopback.ko`.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// One built module of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredModule {
    /// The module's name as the kernel knows it (BUILT_MODULE_NAME / DEST_MODULE_NAME).
    pub name: String,
    /// Where it installs, under /lib/modules/<kver> (e.g. `/updates/dkms`).
    pub dest: String,
    /// The unsigned, stripped module.
    pub unsigned: StoredFile,
    /// Signed (when the kernel signs modules and a key was configured) and compressed as the
    /// kernel's own modules are: what a host installs.
    pub signed: Option<StoredFile>,
}

/// Where a pair's source came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// As given on the command line: a directory, a tarball, `M/V`, `deb:PACKAGE`.
    pub given: String,
    /// The Debian package it came from, with its version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    /// Digest of the source tree's contents (paths, modes, bytes, link targets).
    pub digest: String,
}

/// Who signed an entry's modules, as its record says (the key pair that signs is
/// `sign::Signer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBy {
    /// SHA-256 of the certificate (DER).
    pub fingerprint: String,
    pub subject: String,
    /// The kernel's CONFIG_MODULE_SIG_HASH.
    pub hash: String,
}

/// A pair's proof of load, copied from the kernel's VM run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub loaded: bool,
    /// insmod's and the kernel's words when it did not load.
    pub messages: Vec<String>,
}

/// `result.json`: everything about one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub key: String,
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    pub profile: String,
    pub source: SourceInfo,
    pub status: Status,
    /// dkms's exit code for the outcome (0 built, 10 make failed, 77 skipped, ...).
    pub exit_code: i32,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub modules: Vec<StoredModule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_log: Option<StoredFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<SignedBy>,
    /// The builder image, and the digest of its lock (every package by SHA-256).
    pub image: String,
    pub image_lock: String,
    /// Packages added to the image for this module (its package's Depends, the config's).
    #[serde(default)]
    pub extra_packages: Vec<String>,
    /// Wall time of the pair, from its container's creation to the entry stored.
    pub seconds: f64,
    /// How long make itself ran in the container, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_seconds: Option<f64>,
    /// RFC 3339, UTC.
    pub built_at: String,
    /// The engine that ran the build, e.g. "Podman 4.3.1".
    pub engine: String,
    pub ckms_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

impl Record {
    /// Every file the entry must hold, with its digest.
    pub fn files(&self) -> impl Iterator<Item = &StoredFile> {
        self.modules.iter().flat_map(|m| std::iter::once(&m.unsigned).chain(m.signed.as_ref())).chain(&self.make_log)
    }

    /// `module/version for kernel`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{} for {}", self.module, self.version, self.kernel)
    }
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating it if it does not exist. A directory that holds
    /// something else is refused rather than filled. Two processes creating one store at once
    /// both open it: the marker appears in one rename that does not replace (the loser reads
    /// the winner's), and a creator's temporary marker does not count as something else.
    pub fn open(root: &Path) -> Result<Store, FarmError> {
        let marker = root.join(MARKER);
        let text = match std::fs::read_to_string(&marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(root, &marker)?,
            Err(e) => return Err(FarmError::io(&marker)(e)),
        };
        let format = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
        if format != Some(u64::from(FORMAT)) {
            return Err(FarmError::StoreFormat { path: root.to_path_buf(), found: text.trim().to_string() });
        }
        let root = std::path::absolute(root).map_err(FarmError::io(root))?;
        for sub in ["pairs", "tmp", "verify"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(FarmError::io(&dir))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the entry `key` (whether or not it exists).
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("pairs").join(key)
    }

    /// The keys of every entry under `pairs/`, sorted.
    pub fn keys(&self) -> Vec<String> {
        let pairs = self.root.join("pairs");
        let mut keys: Vec<String> = std::fs::read_dir(&pairs)
            .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Every entry's record as it reads, without checking its files (the last durations a
    /// schedule orders by); a record that does not read is not anyone's duration.
    pub fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> =
            self.keys().iter().filter_map(|k| check::read_record(&self.entry_dir(k)).ok()).collect();
        out.sort_by(|a: &Record, b: &Record| {
            (&a.module, &a.version, &a.kernel).cmp(&(&b.module, &b.version, &b.kernel))
        });
        out
    }

    /// Writes `bytes` to `<store>/<name>` atomically (plan.json, verify/<kernel>.json).
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), FarmError> {
        write_atomic(&self.root.join(name), bytes)
    }

    /// `<store>/<name>`, if it exists.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(name)).ok()
    }
}

/// Prefix of a creator's marker before it is renamed into place.
const MARKER_TMP: &str = ".ckms-store.json.";

/// Makes `root` a store (its marker) unless it holds something else; the marker's text.
fn create(root: &Path, marker: &Path) -> Result<String, FarmError> {
    let foreign = match std::fs::read_dir(root) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .any(|e| !e.file_name().to_string_lossy().starts_with(MARKER_TMP) && e.file_name() != MARKER),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(FarmError::io(root)(e)),
    };
    // Another creator's marker (and the directories it makes after it) may have appeared
    // since it was looked for.
    if foreign && !marker.is_file() {
        return Err(FarmError::NotAStore(root.to_path_buf()));
    }
    std::fs::create_dir_all(root).map_err(FarmError::io(root))?;
    if !marker.is_file() {
        let tmp = tempfile::Builder::new().prefix(MARKER_TMP).tempfile_in(root).map_err(FarmError::io(root))?;
        write_synced(tmp.path(), format!("{{\"format\": {FORMAT}}}\n").as_bytes())?;
        match tmp.persist_noclobber(marker) {
            Ok(_) => sync_dir(root)?,
            // The other creator won: its marker is read below.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FarmError::io(marker)(e.error)),
        }
    }
    std::fs::read_to_string(marker).map_err(FarmError::io(marker))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), FarmError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(FarmError::io(path))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(FarmError::io(path))
}

fn sync_dir(dir: &Path) -> Result<(), FarmError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(FarmError::io(dir))
}

/// Writes `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FarmError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(FarmError::io(dir))?;
    write_synced(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| FarmError::io(path)(e.error))?;
    Ok(())
}
