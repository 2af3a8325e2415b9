//! A publication written beside its final place and swapped into it in one step: a consumer
//! (an HTTP server, apt, a host's `ckms install`) sees the whole old tree or the whole new one,
//! never a mix and never nothing, even when the publisher is killed at any point.
//!
//! The swap is `renameat2(RENAME_EXCHANGE)` of the staged directory and the published one;
//! the old tree, now at the staged name, is removed after. Publishers of one output take
//! turns (`flock` on `.<name>.lock` beside it), and only the holder removes what a killed
//! publisher left staged: never a tree another publisher is writing.

use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};

use super::{set_mode, PublishError};

pub struct Staging {
    dir: tempfile::TempDir,
    out: PathBuf,
    /// Held until the staged tree is in place.
    _lock: std::fs::File,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging, PublishError> {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(PublishError::io(parent))?;
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "publish".into());
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = crate::lockfile::exclusive(&lock_path).map_err(PublishError::io(&lock_path))?;
        let prefix = format!(".{name}.tmp");
        // Left by a publisher killed before it finished (every publisher holds the lock).
        for entry in std::fs::read_dir(parent).map_err(PublishError::io(parent))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent).map_err(PublishError::io(parent))?;
        Ok(Staging { dir, out: out.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Puts the staged tree at `out`, replacing what was there in one step.
    pub fn commit(self) -> Result<(), PublishError> {
        let staged = self.dir.keep();
        let out = &self.out;
        // tempdir makes 0700; what is published is meant to be served.
        set_mode(&staged, 0o755)?;
        if !out.exists() {
            return std::fs::rename(&staged, out).map_err(PublishError::io(out));
        }
        match renameat_with(CWD, &staged, CWD, out, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            // A file system without RENAME_EXCHANGE: moved aside, then into place.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                let aside = staged.with_extension("old");
                std::fs::rename(out, &aside).map_err(PublishError::io(out))?;
                std::fs::rename(&staged, out).map_err(PublishError::io(out))?;
                return std::fs::remove_dir_all(&aside).map_err(PublishError::io(&aside));
            }
            Err(e) => return Err(PublishError::io(out)(e.into())),
        }
        // The old tree is at the staged name now.
        std::fs::remove_dir_all(&staged).map_err(PublishError::io(&staged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_replaces_the_old_one_whole_and_clears_what_a_killed_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cache");
        for generation in ["one", "two"] {
            let s = Staging::new(&out).unwrap();
            std::fs::write(s.path().join("index.json"), generation).unwrap();
            s.commit().unwrap();
            assert_eq!(std::fs::read_to_string(out.join("index.json")).unwrap(), generation);
        }
        // A publisher killed while staging: its tree is left, and the next one removes it.
        std::fs::create_dir(dir.path().join(".cache.tmpKILLED")).unwrap();
        let s = Staging::new(&out).unwrap();
        s.commit().unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, [".cache.lock", "cache"]);
    }
}
