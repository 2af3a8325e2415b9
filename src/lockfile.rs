//! Exclusive advisory locks (`flock`): the kernel releases one when its holder dies, so a
//! crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// Opens (creating it if missing) the lock file `path` and waits for its exclusive lock.
pub fn exclusive(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    wait(&file)?;
    Ok(file)
}

/// Waits for the exclusive lock on `file`; a signal (a terminal resize, say) does not end the
/// wait.
pub fn wait(file: &File) -> std::io::Result<()> {
    loop {
        match flock(file, FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
}
