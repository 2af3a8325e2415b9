//! Reading files whose names come from across a trust boundary (a pod's result, a store's
//! record, a cache's index): the name must be a plain relative path, every step is opened
//! without following links (`openat` + `O_NOFOLLOW`, so a directory swapped for a link after a
//! check cannot lead out), only a regular file is read (a FIFO is opened non-blocking and
//! refused, a device refused), and no more than a limit is read.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, CWD};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};

#[derive(Debug, Error)]
pub enum ConfineError {
    #[error("{dir}: refused {name:?}: {why}")]
    Refused { dir: PathBuf, name: String, why: &'static str },
    #[error("{dir}: {name:?} holds more than {limit} bytes: refused")]
    TooLarge { dir: PathBuf, name: String, limit: u64 },
    #[error("{dir}: {name:?}: {source}")]
    Io { dir: PathBuf, name: String, source: std::io::Error },
}

impl Diagnose for ConfineError {
    fn exit_code(&self) -> i32 {
        match self {
            ConfineError::Refused { .. } | ConfineError::TooLarge { .. } => code::REFUSED,
            ConfineError::Io { .. } => code::IO,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ConfineError::Refused { .. } | ConfineError::TooLarge { .. } => {
                "whoever wrote this directory named a file ckms will not read: a path leaving the directory, a link, \
                 a device or a FIFO; nothing was taken from it"
                    .into()
            }
            ConfineError::Io { .. } => "check that the directory is readable".into(),
        })
    }
}

/// `name` as a path of plain components (no root, `.`, `..` or empty name).
pub fn plain_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let plain =
        !name.is_empty() && !name.contains('\0') && path.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| path.to_path_buf())
}

/// Opens the regular file `name` inside `dir` (see the module's comment); its size too.
pub fn open_inside(dir: &Path, name: &str) -> Result<(File, u64), ConfineError> {
    let refused = |why| ConfineError::Refused { dir: dir.to_path_buf(), name: name.to_string(), why };
    let io = |e: std::io::Error| ConfineError::Io { dir: dir.to_path_buf(), name: name.to_string(), source: e };
    let path = plain_relative(name).ok_or_else(|| refused("not a plain relative path inside the directory"))?;
    let parts: Vec<_> = path.components().map(|c| c.as_os_str().to_owned()).collect();
    let (last, steps) = parts.split_last().ok_or_else(|| refused("empty name"))?;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // `dir` itself too: a result directory swapped for a link to another one is refused.
    let step_error = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => refused("a step of the path is a link or no directory"),
        e => io(e.into()),
    };
    let mut at: OwnedFd = openat(CWD, dir, dir_flags, Mode::empty()).map_err(step_error)?;
    for step in steps {
        at = openat(&at, step.as_os_str(), dir_flags, Mode::empty()).map_err(step_error)?;
    }
    // Looked at before it is opened: opening a device can act (a tape rewinds, a watchdog
    // arms). The check after the open below is the one a swap cannot get past.
    let before = statat(&at, last.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io(e.into()))?;
    match FileType::from_raw_mode(before.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(refused("a symbolic link")),
        _ => return Err(refused("not a regular file (a directory, device, FIFO or socket)")),
    }
    let file_flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = openat(&at, last.as_os_str(), file_flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => refused("a symbolic link"),
        e => io(e.into()),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refused("not a regular file (a directory, device, FIFO or socket)"));
    }
    Ok((file, meta.len()))
}

/// The bytes of the regular file `name` inside `dir`, refused when over `limit`.
pub fn read_inside(dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>, ConfineError> {
    let (file, size) = open_inside(dir, name)?;
    let too_large = || ConfineError::TooLarge { dir: dir.to_path_buf(), name: name.to_string(), limit };
    if size > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // Bounded again while reading: the file may grow after its size was read.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| ConfineError::Io {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        source: e,
    })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<Vec<u8>, ConfineError>) -> bool {
        matches!(r, Err(ConfineError::Refused { .. }))
    }

    #[test]
    fn reads_plain_files_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"ok").unwrap();
        assert_eq!(read_inside(d.path(), "a/b/f", 10).unwrap(), b"ok");
        for bad in ["/etc/passwd", "../x", "a/../a/b/f", "./a/b/f", "", "a/b"] {
            assert!(refused(read_inside(d.path(), bad, 10)), "{bad}");
        }
    }

    #[test]
    fn refuses_links_fifos_devices_and_large_files() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("dirlink")).unwrap();
        rustix::fs::mknodat(CWD, d.path().join("fifo"), rustix::fs::FileType::Fifo, Mode::from(0o600), 0).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        for bad in ["link", "dirlink/passwd", "fifo", "zero"] {
            assert!(refused(read_inside(d.path(), bad, 10)), "{bad}");
        }
        // Sparse: large without using the disk.
        let f = File::create(d.path().join("big")).unwrap();
        f.set_len(10 << 30).unwrap();
        assert!(matches!(read_inside(d.path(), "big", 1 << 20), Err(ConfineError::TooLarge { .. })));
    }

    #[test]
    fn refuses_a_directory_that_is_a_link_and_device_nodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/f"), b"ok").unwrap();
        std::os::unix::fs::symlink("real", d.path().join("alias")).unwrap();
        assert!(refused(read_inside(&d.path().join("alias"), "f", 10)));
        // Only root can make a device node: the link to /dev/zero above covers the rest.
        let dev = rustix::fs::makedev(1, 5);
        if rustix::fs::mknodat(CWD, d.path().join("real/zero"), FileType::CharacterDevice, Mode::from(0o600), dev)
            .is_ok()
        {
            assert!(refused(read_inside(&d.path().join("real"), "zero", 10)));
        }
    }
}
