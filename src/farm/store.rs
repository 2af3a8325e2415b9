//! The farm's store: one directory per (module, kernel) pair, named by the pair's key (a digest
//! of everything that decides its output, see [`super::key`]). Plain files, so that any HTTP
//! server can serve the store as it is:
//!
//! ```text
//! <store>/ckms-store.json          {"format": 1}
//! <store>/pairs/<key>/result.json  the entry's record, written last
//! <store>/pairs/<key>/make.log
//! <store>/pairs/<key>/modules/     unsigned, stripped modules: the build's own output
//! <store>/pairs/<key>/signed/      the same, signed and compressed as the kernel wants
//! <store>/plan.json                the last plan: every pair, so pending ones show too
//! <store>/verify/<kernel>.json     the last proof of load per kernel
//! <store>/tmp/                     entries being written
//! ```
//!
//! An entry is written complete into `tmp/` and renamed into `pairs/` (atomic on one file
//! system); reading it checks every file against the digests its record names, so an entry
//! damaged later (a disk error, a hand edit, a half-copied mirror) is found and rebuilt.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::FarmError;
use crate::cache::hash_reader;

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
}

/// What reading an entry found.
#[derive(Debug)]
pub enum Lookup {
    Missing,
    Found(Box<Record>),
    /// The entry exists but does not check out (why, for the report); it will be rebuilt.
    Damaged(String),
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating it if it does not exist. A directory that holds
    /// something else is refused rather than filled.
    pub fn open(root: &Path) -> Result<Store, FarmError> {
        let marker = root.join(MARKER);
        if marker.is_file() {
            let text = std::fs::read_to_string(&marker).map_err(FarmError::io(&marker))?;
            let format = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
            if format != Some(u64::from(FORMAT)) {
                return Err(FarmError::StoreFormat { path: root.to_path_buf(), found: text.trim().to_string() });
            }
        } else {
            let empty = match std::fs::read_dir(root) {
                Ok(mut rd) => rd.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(FarmError::io(root)(e)),
            };
            if !empty {
                return Err(FarmError::NotAStore(root.to_path_buf()));
            }
            std::fs::create_dir_all(root).map_err(FarmError::io(root))?;
            write_atomic(&marker, format!("{{\"format\": {FORMAT}}}\n").as_bytes())?;
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

    /// The entry `key`, checked file by file against its record.
    pub fn get(&self, key: &str) -> Lookup {
        let dir = self.entry_dir(key);
        let path = dir.join(RESULT);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Lookup::Missing,
            Err(e) => return Lookup::Damaged(format!("{}: {e}", path.display())),
        };
        let record: Record = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => return Lookup::Damaged(format!("{}: {e}", path.display())),
        };
        if record.key != key {
            return Lookup::Damaged(format!("{} is the record of {}", path.display(), record.key));
        }
        for f in record.files() {
            if let Err(why) = check_file(&dir, f) {
                return Lookup::Damaged(why);
            }
        }
        Lookup::Found(Box::new(record))
    }

    /// Every entry's record, without checking the files (for `status` and `report`); entries
    /// whose record cannot be read are left out.
    pub fn records(&self) -> Vec<Record> {
        let pairs = self.root.join("pairs");
        let mut out: Vec<Record> = std::fs::read_dir(&pairs)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path().join(RESULT)).ok())
                    .filter_map(|t| serde_json::from_str(&t).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a: &Record, b: &Record| {
            (&a.module, &a.version, &a.kernel).cmp(&(&b.module, &b.version, &b.kernel))
        });
        out
    }

    /// A fresh directory under `tmp/` to write an entry into before [`Store::commit`].
    pub fn staging(&self, key: &str) -> Result<tempfile::TempDir, FarmError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new().prefix(&format!("{key}.")).tempdir_in(&tmp).map_err(FarmError::io(&tmp))
    }

    /// Writes `record` into the staged entry `staged` (every file it names must be there),
    /// then moves the entry into place, replacing a damaged or outdated one.
    pub fn commit(&self, staged: tempfile::TempDir, record: &Record) -> Result<(), FarmError> {
        let dir = staged.path();
        for f in record.files() {
            check_file(dir, f).map_err(|why| FarmError::Store { path: dir.to_path_buf(), message: why })?;
        }
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| FarmError::Store { path: dir.join(RESULT), message: e.to_string() })?;
        write_synced(&dir.join(RESULT), format!("{text}\n").as_bytes())?;
        sync_dir(dir)?;
        let target = self.entry_dir(&record.key);
        let staged = staged.keep();
        if target.exists() {
            // Moved aside first, so that `target` is always either the old or the new entry.
            let old = self.root.join("tmp").join(format!("{}.old.{}", record.key, std::process::id()));
            std::fs::rename(&target, &old).map_err(FarmError::io(&target))?;
            std::fs::rename(&staged, &target).map_err(FarmError::io(&target))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&staged, &target).map_err(FarmError::io(&target))?;
        }
        sync_dir(&self.root.join("pairs"))
    }

    /// Puts a proof of load into the record of `key`: the proof is not an input, so the entry
    /// keeps its key.
    pub fn set_proof(&self, key: &str, proof: Proof) -> Result<(), FarmError> {
        self.amend(key, |r| r.proof = Some(proof))
    }

    /// Changes what the record of `key` says beside its inputs (rewritten atomically).
    pub fn amend(&self, key: &str, change: impl FnOnce(&mut Record)) -> Result<(), FarmError> {
        let path = self.entry_dir(key).join(RESULT);
        let text = std::fs::read_to_string(&path).map_err(FarmError::io(&path))?;
        let mut record: Record =
            serde_json::from_str(&text).map_err(|e| FarmError::Store { path: path.clone(), message: e.to_string() })?;
        change(&mut record);
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| FarmError::Store { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, format!("{text}\n").as_bytes())
    }

    /// Removes what interrupted runs left in `tmp/` (entries never committed).
    pub fn clean_tmp(&self) {
        let tmp = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.filter_map(Result::ok) {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
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

/// Adds the file `rel` of the entry being staged in `dir` to a record: its digest and size.
pub fn stored_file(dir: &Path, rel: &str) -> Result<StoredFile, FarmError> {
    let path = dir.join(rel);
    let file = std::fs::File::open(&path).map_err(FarmError::io(&path))?;
    let (sha256, size) = hash_reader(file).map_err(FarmError::io(&path))?;
    Ok(StoredFile { file: rel.to_string(), sha256, size })
}

/// Checks one file of an entry against its record; the reason when it does not match.
fn check_file(dir: &Path, f: &StoredFile) -> Result<(), String> {
    let rel = Path::new(&f.file);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("the record names {:?}, which is not a file inside the entry", f.file));
    }
    let path = dir.join(rel);
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (sha256, size) = hash_reader(file).map_err(|e| format!("{}: {e}", path.display()))?;
    if sha256 != f.sha256 || size != f.size {
        return Err(format!("{} has SHA-256 {sha256} ({size} bytes), its record says {}", path.display(), f.sha256));
    }
    Ok(())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(key: &str, files: Vec<StoredFile>) -> Record {
        Record {
            format: FORMAT,
            key: key.into(),
            module: "hello".into(),
            version: "1.0".into(),
            kernel: "6.1.0-56-amd64".into(),
            arch: "x86_64".into(),
            profile: "debian-bookworm".into(),
            source: SourceInfo { given: "./hello".into(), package: None, package_version: None, digest: "d".into() },
            status: Status::Built,
            exit_code: 0,
            reason: None,
            modules: files
                .into_iter()
                .map(|f| StoredModule { name: "hello".into(), dest: "/updates/dkms".into(), unsigned: f, signed: None })
                .collect(),
            make_log: None,
            signer: None,
            image: "img".into(),
            image_lock: "lock".into(),
            extra_packages: vec![],
            seconds: 1.0,
            make_seconds: Some(0.5),
            built_at: "2026-12-05T00:00:00Z".into(),
            engine: "Podman 4.3.1".into(),
            ckms_version: "0.1.0".into(),
            proof: None,
        }
    }

    pub(crate) fn stage(store: &Store, key: &str, ko: &[u8]) -> (tempfile::TempDir, Record) {
        let staged = store.staging(key).unwrap();
        std::fs::create_dir_all(staged.path().join("modules")).unwrap();
        std::fs::write(staged.path().join("modules/hello.ko"), ko).unwrap();
        let f = stored_file(staged.path(), "modules/hello.ko").unwrap();
        (staged, record(key, vec![f]))
    }

    #[test]
    fn an_entry_is_found_after_commit_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        assert!(matches!(store.get("k1"), Lookup::Missing));
        let (staged, rec) = stage(&store, "k1", b"\x7fELF one");
        store.commit(staged, &rec).unwrap();
        let Lookup::Found(found) = store.get("k1") else { panic!("not found") };
        assert_eq!(*found, rec);
        assert_eq!(store.records(), vec![rec]);
        assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "nothing left in tmp");

        std::fs::write(store.entry_dir("k1").join("modules/hello.ko"), b"\x7fELF tampered").unwrap();
        assert!(matches!(store.get("k1"), Lookup::Damaged(why) if why.contains("its record says")));
        // A new build of the same key replaces the damaged entry.
        let (staged, rec) = stage(&store, "k1", b"\x7fELF two");
        store.commit(staged, &rec).unwrap();
        assert!(matches!(store.get("k1"), Lookup::Found(_)));
    }

    #[test]
    fn an_uncommitted_entry_is_not_there_and_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (staged, _rec) = stage(&store, "k2", b"x");
        let _kept = staged.keep(); // as if killed before commit
        assert!(matches!(store.get("k2"), Lookup::Missing));
        store.clean_tmp();
        assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_record_cannot_point_outside_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (staged, mut rec) = stage(&store, "k3", b"x");
        rec.modules[0].unsigned.file = "../../ckms-store.json".into();
        assert!(store.commit(staged, &rec).is_err());
    }

    #[test]
    fn a_directory_holding_something_else_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), "x").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(FarmError::NotAStore(_))));
        std::fs::write(dir.path().join(MARKER), "{\"format\": 99}").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(FarmError::StoreFormat { .. })));
    }
}
