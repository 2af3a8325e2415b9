//! Reading an entry as a reader may find it: every name its record gives is read through
//! [`crate::confine`] (a plain relative path inside the entry, no link followed, a regular file
//! only), and every file is checked against its digest. What does not check out is a
//! [`Damage`], named to the user, never passed over.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::FarmError;
use super::{Record, Store, StoredFile, RESULT};
use crate::cache::hash_reader;
use crate::confine;

/// Reads of an entry that a writer keeps replacing before what was read is reported.
const READS: usize = 10;

/// The most a record may hold (records are a few KiB).
const RECORD_LIMIT: u64 = 16 << 20;

/// What reading an entry found.
#[derive(Debug)]
pub enum Lookup {
    Missing,
    Found(Box<Record>),
    /// The entry exists but does not check out; `farm build` builds it again.
    Damaged(Damage),
}

/// A damaged entry, as the user is told of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub key: String,
    /// `module/version for kernel`, when the record reads.
    pub pair: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pair {
            Some(pair) => write!(f, "{} ({pair}): {}", self.key, self.why),
            None => write!(f, "{}: {}", self.key, self.why),
        }
    }
}

impl Store {
    /// The entry `key`, checked file by file against its record. An entry replaced while it
    /// is read (a writer swapping in a new one) is read again, so that a file of one entry is
    /// never taken for damage of the other; an entry replaced on every one of `READS` reads
    /// is reported as its last read found it (replacing takes a build: no writer of this store
    /// replaces that often).
    pub fn get(&self, key: &str) -> Lookup {
        if !is_key(key) {
            let why = "not a store key (a key is one plain file name)".to_string();
            return Lookup::Damaged(Damage { key: key.to_string(), pair: None, why });
        }
        let dir = self.entry_dir(key);
        let mut found = Lookup::Missing;
        for _ in 0..READS {
            let Some(before) = identity(&dir) else { return Lookup::Missing };
            found = read_entry(&dir, key);
            if identity(&dir) == Some(before) {
                break;
            }
        }
        found
    }
}

/// Whether `key` can name an entry: one plain path component.
pub(super) fn is_key(key: &str) -> bool {
    confine::plain_relative(key).is_some_and(|p| p.components().count() == 1)
}

/// Which file `path` is, without following a link: its device and inode, and its change
/// time, which tells a new directory that got a removed one's inode number from it.
pub(super) fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path).ok().as_ref().map(Identity::of)
}

/// See [`identity`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Identity(u64, u64, i64, i64);

impl Identity {
    pub(super) fn of(m: &std::fs::Metadata) -> Identity {
        Identity(m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
    }
}

fn read_entry(dir: &Path, key: &str) -> Lookup {
    let damaged = |pair, why| Lookup::Damaged(Damage { key: key.to_string(), pair, why });
    let record = match read_record(dir) {
        Ok(r) => r,
        Err(why) => return damaged(None, why),
    };
    let pair = Some(record.label());
    if record.key != key {
        return damaged(pair, format!("its record is the record of {}", record.key));
    }
    for f in record.files() {
        if let Err(why) = check_file(dir, f) {
            return damaged(pair, why);
        }
    }
    Lookup::Found(Box::new(record))
}

/// The record of the entry in `dir`; why not, when it does not read.
pub(super) fn read_record(dir: &Path) -> Result<Record, String> {
    let bytes = confine::read_inside(dir, RESULT, RECORD_LIMIT).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", dir.join(RESULT).display()))
}

/// Checks one file of an entry against its record; the reason when it does not match.
pub(super) fn check_file(dir: &Path, f: &StoredFile) -> Result<(), String> {
    let (file, _) = confine::open_inside(dir, &f.file).map_err(|e| e.to_string())?;
    let path = dir.join(&f.file);
    // One byte more than the record says is enough to tell a longer file.
    let (sha256, size) = hash_reader(file.take(f.size + 1)).map_err(|e| format!("{}: {e}", path.display()))?;
    if sha256 != f.sha256 || size != f.size {
        return Err(format!("{} has SHA-256 {sha256} ({size} bytes), its record says {}", path.display(), f.sha256));
    }
    Ok(())
}

/// Adds the file `rel` of the entry being staged in `dir` to a record: its digest and size.
pub fn stored_file(dir: &Path, rel: &str) -> Result<StoredFile, FarmError> {
    let path = dir.join(rel);
    let file = std::fs::File::open(&path).map_err(FarmError::io(&path))?;
    let (sha256, size) = hash_reader(file).map_err(FarmError::io(&path))?;
    Ok(StoredFile { file: rel.to_string(), sha256, size })
}
