//! Every change install and uninstall make to the trees, each one step: written atomically
//! (temporary file, fsync, rename, fsync of the directory) and counted, so that tests can
//! fail any single step (a full disk) or every step from one on (a power cut).

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::InstallError;

/// Temporary files start with this; a crash can leave them behind, and the next run
/// removes them from the directories it works in.
pub(super) const TMP_PREFIX: &str = ".ckms-tmp.";

/// Decides whether step `n` (counted from 0) fails.
pub(super) type Fault<'a> = &'a dyn Fn(usize) -> bool;

#[derive(Default)]
pub(super) struct Ops<'a> {
    steps: Cell<usize>,
    fault: Option<Fault<'a>>,
}

impl<'a> Ops<'a> {
    #[cfg(test)]
    pub(super) fn with_fault(fault: Fault<'a>) -> Ops<'a> {
        Ops { steps: Cell::new(0), fault: Some(fault) }
    }

    #[cfg(test)]
    pub(super) fn steps(&self) -> usize {
        self.steps.get()
    }

    /// Called before each change; `path` names it in the injected error.
    pub(super) fn step(&self, path: &Path) -> Result<(), InstallError> {
        let n = self.steps.get();
        self.steps.set(n + 1);
        if self.fault.is_some_and(|f| f(n)) {
            // ENOSPC: the failure a real install most likely meets half-way.
            return Err(InstallError::fs(path, io::Error::from_raw_os_error(28)));
        }
        Ok(())
    }

    /// Writes `bytes` to `path` with `mode`, replacing it atomically.
    pub(super) fn write(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
        let dir = parent(path)?;
        let tmp = self.tmp_name(dir);
        self.step(&tmp)?;
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(bytes)?;
            // Explicitly: create's mode is cut by the umask.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = self.remove_file(&tmp);
            return Err(InstallError::fs(&tmp, e));
        }
        self.rename(&tmp, path).inspect_err(|_| {
            let _ = self.remove_file(&tmp);
        })
    }

    /// Copies `from` to `to` atomically, with `from`'s permission bits.
    pub(super) fn copy(&self, from: &Path, to: &Path) -> Result<(), InstallError> {
        let bytes = fs::read(from).map_err(|e| InstallError::fs(from, e))?;
        let mode = fs::metadata(from).map_err(|e| InstallError::fs(from, e))?.permissions().mode() & 0o7777;
        self.write(to, &bytes, mode)
    }

    /// Points the symlink `link` at `target`, replacing it atomically.
    pub(super) fn symlink(&self, target: &Path, link: &Path) -> Result<(), InstallError> {
        let tmp = self.tmp_name(parent(link)?);
        self.step(&tmp)?;
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| InstallError::fs(&tmp, e))?;
        self.rename(&tmp, link).inspect_err(|_| {
            let _ = self.remove_file(&tmp);
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), InstallError> {
        self.step(to)?;
        fs::rename(from, to).map_err(|e| InstallError::fs(to, e))?;
        sync_dir(parent(to)?)
    }

    /// Removes a file or symlink; one that is already gone is fine.
    pub(super) fn remove_file(&self, path: &Path) -> Result<(), InstallError> {
        self.step(path)?;
        match fs::remove_file(path) {
            Ok(()) => sync_dir(parent(path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(InstallError::fs(path, e)),
        }
    }

    /// Creates the directory `path` (mode 0755) whose parent exists; one that exists is fine.
    pub(super) fn create_dir(&self, path: &Path) -> Result<(), InstallError> {
        self.step(path)?;
        match fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {
                fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|e| InstallError::fs(path, e))?;
                sync_dir(parent(path)?)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(e) => Err(InstallError::fs(path, e)),
        }
    }

    /// Creates `path` and its missing parents.
    pub(super) fn create_dir_all(&self, path: &Path) -> Result<(), InstallError> {
        if path.is_dir() {
            return Ok(());
        }
        self.create_dir_all(parent(path)?)?;
        self.create_dir(path)
    }

    /// Removes the directory `path` if it is empty; gone or not empty is fine.
    pub(super) fn remove_dir_if_empty(&self, path: &Path) -> Result<(), InstallError> {
        if fs::read_dir(path).map_or(true, |mut rd| rd.next().is_some()) {
            return Ok(());
        }
        self.step(path)?;
        match fs::remove_dir(path) {
            Ok(()) => sync_dir(parent(path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => Ok(()),
            Err(e) => Err(InstallError::fs(path, e)),
        }
    }

    /// Removes temporary files a crashed run left in `dir`.
    pub(super) fn sweep(&self, dir: &Path) -> Result<(), InstallError> {
        let Ok(rd) = fs::read_dir(dir) else { return Ok(()) };
        for e in rd.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                self.remove_file(&e.path())?;
            }
        }
        Ok(())
    }

    /// A fresh name in `dir`; unique within this process, and the lock keeps other
    /// processes out (a stale one from a crash is swept, and `create_new` refuses it anyway).
    fn tmp_name(&self, dir: &Path) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dir.join(format!("{TMP_PREFIX}{}.{n}", std::process::id()))
    }
}

fn parent(path: &Path) -> Result<&Path, InstallError> {
    path.parent().ok_or_else(|| InstallError::fs(path, io::Error::other("has no parent directory")))
}

/// Makes a rename or removal in `dir` durable before the next step depends on it.
pub(super) fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| InstallError::fs(dir, e))
}
