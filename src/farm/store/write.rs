//! The writers' side of the store: one writer per pair, nothing lost.
//!
//! - A writer holds the pair's lock (`flock` on `locks/<key>.lock`) from before it looks the
//!   entry up until its entry is in place ([`once`]): a second writer of the pair waits, then
//!   finds the entry and takes it. The kernel lets go of a lock when its holder dies.
//! - An entry is staged in `tmp/<key>.<random>/`, a directory its writer holds locked (`flock`
//!   on the directory) for as long as it exists there; a writer cleans away only what no one
//!   holds ([`Store::clean_staging`]), so a staged entry of a running writer is never touched.
//! - It goes into place in one `renameat2`: `RENAME_NOREPLACE` for a new entry, else
//!   `RENAME_EXCHANGE` with the old one, which then sits in `tmp/` to be removed: `pairs/<key>`
//!   is at every moment the old entry or the new one.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, openat, renameat_with, FlockOperation, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use super::check::{check_file, identity, is_key, read_record, Identity, Lookup};
use super::{sync_dir, write_atomic, write_synced, FarmError, Record, Status, Store, RESULT};

/// The lock of one pair: one writer at a time. Let go when dropped (or its process dies).
#[derive(Debug)]
pub struct PairLock {
    _file: File,
}

/// An entry being written in `tmp/`, locked by its writer; removed when dropped uncommitted.
#[derive(Debug)]
pub struct Staging {
    pub(super) dir: PathBuf,
    /// The directory itself, locked: what tells cleaners its writer is alive.
    _held: File,
    /// Moved out of `tmp/`: nothing to remove.
    pub(super) placed: bool,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the staged entry to `to` (outside `tmp/`, e.g. `--check`'s `check/<key>/`).
    pub fn keep_at(mut self, to: &Path) -> Result<(), FarmError> {
        std::fs::rename(&self.dir, to).map_err(FarmError::io(to))?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.placed {
            // Still locked while it is removed (fields drop after this).
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Pair `key` written at most once among every writer of `store`: under the pair's lock, an
/// entry already there is taken when `reuse` accepts it (another run built it meanwhile),
/// else `build` stages one, which is committed before the lock is let go.
pub async fn once<F, Fut>(
    store: &Store,
    key: &str,
    reuse: impl Fn(&Record) -> bool,
    build: F,
) -> Result<Status, FarmError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(Staging, Record), FarmError>>,
{
    let _lock = store.lock_waiting(key).await?;
    if let Lookup::Found(r) = store.get(key) {
        if reuse(&r) {
            return Ok(r.status);
        }
    }
    let (staged, record) = build().await?;
    store.commit(staged, &record)?;
    Ok(record.status)
}

impl Store {
    /// Waits for the lock of pair `key`.
    pub fn lock(&self, key: &str) -> Result<PairLock, FarmError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        if !is_key(key) {
            return Err(FarmError::Store { path, message: "not a store key".into() });
        }
        let dir = self.root.join("locks");
        // Made when first needed: a reader of a store it cannot write never needs it.
        std::fs::create_dir_all(&dir).map_err(FarmError::io(&dir))?;
        let file = crate::lockfile::exclusive(&path).map_err(FarmError::io(&path))?;
        Ok(PairLock { _file: file })
    }

    /// [`Store::lock`], waited for off the async workers.
    pub async fn lock_waiting(&self, key: &str) -> Result<PairLock, FarmError> {
        let (store, owned) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || store.lock(&owned)).await.map_err(|e| FarmError::Store {
            path: self.root.join("locks").join(key),
            message: format!("waiting for the pair's lock: {e}"),
        })?
    }

    /// A fresh directory under `tmp/`, locked, to write an entry into before [`Store::commit`].
    pub fn staging(&self, key: &str) -> Result<Staging, FarmError> {
        let tmp = self.root.join("tmp");
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{key}."))
                .tempdir_in(&tmp)
                .map_err(FarmError::io(&tmp))?
                .keep();
            let held = match File::open(&dir) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FarmError::io(&dir)(e)),
            };
            crate::lockfile::wait(&held).map_err(FarmError::io(&dir))?;
            // A cleaner may have taken it for a dead writer's before it was locked: then it
            // is gone, and another is made.
            if same_file(&dir, &held) {
                return Ok(Staging { dir, _held: held, placed: false });
            }
        }
        Err(FarmError::Store { path: tmp, message: "no staging directory stayed: something removes them".into() })
    }

    /// Writes `record` into the staged entry `staged` (every file it names must be there and
    /// match), then puts the entry in place, swapping out a damaged or outdated one. The
    /// caller holds the pair's lock.
    pub fn commit(&self, mut staged: Staging, record: &Record) -> Result<(), FarmError> {
        let dir = staged.path().to_path_buf();
        let target = self.entry_dir(&record.key);
        if !is_key(&record.key) {
            return Err(FarmError::Store { path: target, message: "the record's key is not a store key".into() });
        }
        for f in record.files() {
            check_file(&dir, f).map_err(|why| FarmError::Store { path: dir.clone(), message: why })?;
        }
        let text = serde_json::to_string_pretty(record)
            .map_err(|e| FarmError::Store { path: dir.join(RESULT), message: e.to_string() })?;
        write_synced(&dir.join(RESULT), format!("{text}\n").as_bytes())?;
        sync_dir(&dir)?;
        put_in_place(&dir, &target).map_err(FarmError::io(&target))?;
        staged.placed = true;
        sync_dir(&self.root.join("pairs"))
    }

    /// Puts a proof of load into the record of `key`: the proof is not an input, so the entry
    /// keeps its key.
    pub fn set_proof(&self, key: &str, proof: super::Proof) -> Result<(), FarmError> {
        self.amend(key, |r| r.proof = Some(proof))
    }

    /// Changes what the record of `key` says beside its inputs (rewritten atomically, under
    /// the pair's lock, so that no new entry is swapped in under the rewrite).
    pub fn amend(&self, key: &str, change: impl FnOnce(&mut Record)) -> Result<(), FarmError> {
        let _lock = self.lock(key)?;
        let dir = self.entry_dir(key);
        let path = dir.join(RESULT);
        let mut record = read_record(&dir).map_err(|message| FarmError::Store { path: path.clone(), message })?;
        change(&mut record);
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| FarmError::Store { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, format!("{text}\n").as_bytes())
    }

    /// Removes from `tmp/` what writers that are gone left there (entries never committed,
    /// replaced entries not yet removed): whatever no one holds locked. Best effort: what
    /// cannot be removed now is tried again by the next writer.
    pub fn clean_staging(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else { return };
        for path in rd.filter_map(Result::ok).map(|e| e.path()) {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let fd = match openat(CWD, &path, flags, Mode::empty()) {
                Ok(fd) => File::from(fd),
                // A link is no one's staging.
                Err(Errno::LOOP) => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(_) => continue,
            };
            if flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue; // its writer is alive
            }
            if same_file(&path, &fd) {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

/// Whether `path` (not followed) is the file `file` holds open.
fn same_file(path: &Path, file: &File) -> bool {
    let open = file.metadata().ok().as_ref().map(Identity::of);
    open.is_some() && identity(path) == open
}

/// Moves the directory `from` to `to` in one step, swapping out what `to` held (then removed).
fn put_in_place(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(()),
        Err(Errno::EXIST | Errno::NOTEMPTY) => {}
        Err(Errno::INVAL | Errno::NOSYS) => return moved_aside(from, to),
        Err(e) => return Err(e.into()),
    }
    match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
        Ok(()) => {
            // `from` is the old entry now; a writer that dies here leaves it to the cleaners.
            let _ = std::fs::remove_dir_all(from);
            Ok(())
        }
        Err(Errno::INVAL | Errno::NOSYS) => moved_aside(from, to),
        Err(e) => Err(e.into()),
    }
}

/// For a file system without renameat2's flags (NFS): the old entry is moved aside first, so
/// a reader may miss the entry for that moment.
fn moved_aside(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(to).is_ok() {
        let aside = PathBuf::from(format!("{}.old", from.display()));
        std::fs::rename(to, &aside)?;
        std::fs::rename(from, to)?;
        let _ = std::fs::remove_dir_all(&aside);
        Ok(())
    } else {
        std::fs::rename(from, to)
    }
}
