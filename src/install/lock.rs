//! One ckms at a time per tree: installs and uninstalls move files that another run may be
//! reading or moving too. The lock is an exclusive `flock` on `<dkms_tree>/.lock`, which the
//! kernel releases when the process dies, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::InstallError;

/// Held while it lives; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct TreeLock {
    // Closing the file releases the flock.
    _file: File,
    path: PathBuf,
}

impl TreeLock {
    /// Takes the lock on `dkms_tree` (created if missing). If another ckms holds it,
    /// `on_wait` gets a one-line message and the call blocks until the lock is free.
    pub fn acquire(dkms_tree: &Path, on_wait: impl FnOnce(&str)) -> Result<TreeLock, InstallError> {
        std::fs::create_dir_all(dkms_tree).map_err(|e| InstallError::fs(dkms_tree, e))?;
        let path = dkms_tree.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| InstallError::fs(&path, e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                on_wait(&format!("waiting for another ckms on {}", dkms_tree.display()));
                crate::lockfile::wait(&file).map_err(|e| InstallError::fs(&path, e))?;
            }
            Err(e) => return Err(InstallError::fs(&path, e.into())),
        }
        Ok(TreeLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_taker_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("var/lib/ckms");
        let first = TreeLock::acquire(&tree, |_| panic!("nobody holds it yet")).unwrap();
        assert!(first.path().is_file());

        let (tx, rx) = mpsc::channel();
        let tree2 = tree.clone();
        let waiter = std::thread::spawn(move || {
            let tx2 = tx.clone();
            let lock = TreeLock::acquire(&tree2, move |msg| tx2.send(format!("wait: {msg}")).unwrap()).unwrap();
            tx.send("got it".to_string()).unwrap();
            drop(lock);
        });
        let msg = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(msg, format!("wait: waiting for another ckms on {}", tree.display()));
        // Still held by `first`: the waiter must not get through.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "got it");
        waiter.join().unwrap();

        // Released again: a third taker does not wait.
        TreeLock::acquire(&tree, |_| panic!("the lock was released")).unwrap();
    }
}
