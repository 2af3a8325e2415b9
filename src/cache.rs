//! The content-addressed cache: every downloaded package, index and built layer is stored
//! once under its SHA-256, written to a temporary file first and renamed into place only
//! after its digest checked out, so an interrupted run never leaves a half-written entry.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cache entry {path} should have SHA-256 {expected} but has {actual}")]
    Digest { path: PathBuf, expected: String, actual: String },
}

impl Diagnose for CacheError {
    fn exit_code(&self) -> i32 {
        match self {
            CacheError::Io { .. } => code::IO,
            CacheError::Digest { .. } => code::CHECKSUM_MISMATCH,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            CacheError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                "the disk holding the cache is full: free space, or point the cache elsewhere with --cache-dir or CKMS_CACHE_DIR".into()
            }
            CacheError::Io { .. } => {
                "check that the cache directory is writable, or choose another with --cache-dir or CKMS_CACHE_DIR".into()
            }
            CacheError::Digest { .. } => "the entry is removed; run the command again to fetch it anew".into(),
        })
    }
}

pub type Result<T> = std::result::Result<T, CacheError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (and creates) a cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        for sub in ["blobs/sha256", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Cache { root })
    }

    /// `/var/cache/ckms` for root, `$XDG_CACHE_HOME/ckms` (or `~/.cache/ckms`) for others.
    pub fn default_root() -> PathBuf {
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/cache/ckms");
        }
        match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("ckms"),
            (_, Some(h)) => PathBuf::from(h).join(".cache/ckms"),
            _ => std::env::temp_dir().join("ckms-cache"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A named subdirectory for derived state (indexes, layer metadata), created on demand.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Where the blob with this SHA-256 (lowercase hex) lives, whether or not it exists.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// True when the blob exists and its content hashes to its name. A blob that does not
    /// is removed (so that the caller fetches it again) and reported through `Ok(false)`.
    pub fn check_blob(&self, sha256: &str) -> Result<bool> {
        let path = self.blob_path(sha256);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (actual, _) = hash_reader(file).map_err(io_err(&path))?;
        if actual == sha256 {
            return Ok(true);
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(false)
    }

    /// A writer for a new blob; [`BlobWriter::commit`] moves it into place.
    pub fn writer(&self) -> Result<BlobWriter> {
        let dir = self.root.join("tmp");
        let file = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        Ok(BlobWriter { file, hasher: Sha256::new(), len: 0, cache: self.clone() })
    }

    /// Writes `bytes` as a blob and returns its digest.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err(&self.root))?;
        Ok(w.commit(None)?.0)
    }
}

/// A temporary file that hashes what is written to it.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    len: u64,
    cache: Cache,
}

impl BlobWriter {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the digest against `expected` (when given) and renames the file into the store.
    /// On a mismatch the temporary file is deleted and nothing enters the cache.
    pub fn commit(mut self, expected: Option<&str>) -> Result<(String, PathBuf)> {
        let tmp_path = self.file.path().to_path_buf();
        self.file.flush().map_err(io_err(&tmp_path))?;
        let actual = hex::encode(self.hasher.finalize());
        if let Some(expected) = expected {
            if expected != actual {
                return Err(CacheError::Digest { path: tmp_path, expected: expected.into(), actual });
            }
        }
        let dest = self.cache.blob_path(&actual);
        self.file.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok((actual, dest))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// SHA-256 (hex) and length of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_check_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"hello").unwrap();
        assert_eq!(d, sha256_hex(b"hello"));
        assert!(cache.check_blob(&d).unwrap());
    }

    #[test]
    fn corrupt_blob_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"hello").unwrap();
        fs::write(cache.blob_path(&d), b"jello").unwrap();
        assert!(!cache.check_blob(&d).unwrap());
        assert!(!cache.blob_path(&d).exists());
    }

    #[test]
    fn wrong_digest_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut w = cache.writer().unwrap();
        w.write_all(b"abc").unwrap();
        let err = w.commit(Some("00")).unwrap_err();
        assert!(matches!(err, CacheError::Digest { .. }));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
    }
}
