//! What comes back from a build container is untrusted: a hostile Makefile controls it.
//! Unpacking accepts regular files and directories only, inside the destination, within
//! size limits; links, devices, absolute paths and `..` are refused, never followed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("refused {path:?} from the build container: {why}")]
    Refused { path: String, why: &'static str },
    #[error("the build container returned more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("reading the tar stream from the build container: {0}")]
    Tar(std::io::Error),
}

impl Diagnose for ArtifactError {
    fn exit_code(&self) -> i32 {
        match self {
            ArtifactError::Io { .. } => code::IO,
            _ => code::ENGINE_FAILED,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ArtifactError::Refused { .. } | ArtifactError::TooLarge { .. } => {
                "the module's build produced something ckms will not copy to the host; check its Makefile".into()
            }
            ArtifactError::Io { .. } => "check free space and permissions of the destination".into(),
            ArtifactError::Tar(_) => "the engine returned a broken archive; run again with --verbose".into(),
        })
    }
}

/// Unpacks `tar` under `dest`, dropping the first `strip` path components (the engine names
/// the top directory it archived). Returns the files written, relative to `dest`. The first
/// entry that is not accepted fails the whole unpack.
pub fn unpack(tar: impl Read, dest: &Path, strip: usize, max_bytes: u64) -> Result<Vec<PathBuf>, ArtifactError> {
    unpack_entries(tar, dest, strip, max_bytes, true).map(|u| u.written)
}

/// What [`unpack_lenient`] did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Files written, relative to the destination.
    pub written: Vec<PathBuf>,
    /// Entries left out (as named in the tar) and why.
    pub refused: Vec<(String, &'static str)>,
}

/// Like [`unpack`], but an entry that is not accepted (a link, a device, a path climbing out)
/// is left out and listed instead of failing the rest: a build's make.log still comes back
/// when the build also returned a link. Size limits and I/O errors still fail.
pub fn unpack_lenient(tar: impl Read, dest: &Path, strip: usize, max_bytes: u64) -> Result<Unpacked, ArtifactError> {
    unpack_entries(tar, dest, strip, max_bytes, false)
}

fn unpack_entries(
    tar: impl Read,
    dest: &Path,
    strip: usize,
    max_bytes: u64,
    strict: bool,
) -> Result<Unpacked, ArtifactError> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Unpacked::default();
    let mut total = 0u64;
    let refuse = |path: String, why: &'static str, out: &mut Unpacked| {
        if strict {
            Err(ArtifactError::Refused { path, why })
        } else {
            out.refused.push((path, why));
            Ok(())
        }
    };
    for entry in archive.entries().map_err(ArtifactError::Tar)? {
        let mut entry = entry.map_err(ArtifactError::Tar)?;
        let raw = entry.path().map_err(ArtifactError::Tar)?.to_string_lossy().into_owned();
        let rel = match safe_relative(&raw, strip) {
            Ok(Some(rel)) => rel,
            Ok(None) => continue,
            Err(ArtifactError::Refused { path, why }) => {
                refuse(path, why, &mut out)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let target = dest.join(&rel);
        let io = |source| ArtifactError::Io { path: target.clone(), source };
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                // An earlier entry may have been refused, but what is on disk is ours.
                if std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    refuse(raw, "it would replace something that is not a directory", &mut out)?;
                    continue;
                }
                std::fs::create_dir_all(&target).map_err(io)?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total += entry.size();
                if total > max_bytes {
                    return Err(ArtifactError::TooLarge { limit: max_bytes });
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                // A link planted earlier at this path must not redirect the write.
                if std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_file()) {
                    refuse(raw, "it would replace something that is not a file", &mut out)?;
                    continue;
                }
                let mut file = std::fs::File::create(&target).map_err(io)?;
                std::io::copy(&mut (&mut entry).take(max_bytes), &mut file).map_err(io)?;
                out.written.push(rel);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => refuse(raw, "links are not accepted", &mut out)?,
            _ => refuse(raw, "only regular files and directories are accepted", &mut out)?,
        }
    }
    Ok(out)
}

fn safe_relative(raw: &str, strip: usize) -> Result<Option<PathBuf>, ArtifactError> {
    let path = Path::new(raw);
    // Engines name the archived directory itself "/" or "./" at times: nothing to write.
    if path.components().all(|c| matches!(c, Component::RootDir | Component::CurDir)) {
        return Ok(None);
    }
    let mut rel = PathBuf::new();
    for (i, c) in path.components().enumerate() {
        match c {
            Component::Normal(part) if i >= strip => rel.push(part),
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArtifactError::Refused { path: raw.into(), why: "it climbs out with .." })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArtifactError::Refused { path: raw.into(), why: "absolute paths are not accepted" })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// A tar of `dir`'s regular files, directories and symlinks, with paths under `prefix`
/// (relative; "" for none). Symlinks are stored as links, never followed: inside the sandbox
/// they resolve in the container's filesystem, so they cannot expose the host. Special files
/// are left out.
pub fn pack_dir(dir: &Path, prefix: &str) -> Result<Vec<u8>, ArtifactError> {
    let mut b = tar::Builder::new(Vec::new());
    walk_dir(dir, prefix, |header, path, link, data| match link {
        Some(target) => b.append_link(header, path, target),
        None => b.append_data(header, path, data),
    })?;
    b.into_inner().map_err(|source| ArtifactError::Io { path: dir.to_path_buf(), source })
}

/// Calls `visit` with each entry [`pack_dir`] stores, in its order: the header it writes, the
/// path, the link's target or the data. A caller can stream the tar: a big source is never
/// held whole in memory.
pub fn walk_dir(
    dir: &Path,
    prefix: &str,
    mut visit: impl FnMut(&mut tar::Header, &Path, Option<&Path>, &mut dyn std::io::Read) -> std::io::Result<()>,
) -> Result<(), ArtifactError> {
    let io = |source| ArtifactError::Io { path: dir.to_path_buf(), source };
    // Owner and time fixed (and written: a tar reader refuses empty numeric fields).
    let header = |size: u64, kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    let root = PathBuf::from(prefix);
    // Every level of the prefix gets its own entry, or the engine creates it owned by root.
    for level in root.ancestors().collect::<Vec<_>>().into_iter().rev().filter(|p| !p.as_os_str().is_empty()) {
        visit(&mut header(0, tar::EntryType::Directory, 0o755), level, None, &mut std::io::empty()).map_err(io)?;
    }
    let mut stack = vec![(dir.to_path_buf(), root)];
    while let Some((src, dst)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&src).map_err(io)?.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = std::fs::symlink_metadata(e.path()).map_err(io)?;
            let name = dst.join(e.file_name());
            if meta.is_dir() {
                visit(&mut header(0, tar::EntryType::Directory, 0o755), &name, None, &mut std::io::empty())
                    .map_err(io)?;
                stack.push((e.path(), name));
            } else if meta.is_file() {
                let exec = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
                let mut h = header(meta.len(), tar::EntryType::Regular, if exec { 0o755 } else { 0o644 });
                let mut f = std::fs::File::open(e.path()).map_err(io)?;
                visit(&mut h, &name, None, &mut f).map_err(io)?;
            } else if meta.is_symlink() {
                let target = std::fs::read_link(e.path()).map_err(io)?;
                visit(&mut header(0, tar::EntryType::Symlink, 0o777), &name, Some(&target), &mut std::io::empty())
                    .map_err(io)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses ".." and absolute paths; write the raw name like a hostile tar would.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn files_and_dirs_unpack_with_the_top_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(&[
            ("build/", tar::EntryType::Directory, b"", None),
            ("build/m/a.ko", tar::EntryType::Regular, b"ko", None),
        ]);
        let files = unpack(&t[..], dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(files, [PathBuf::from("m/a.ko")]);
        assert_eq!(std::fs::read(dir.path().join("m/a.ko")).unwrap(), b"ko");
    }

    #[test]
    fn hostile_entries_are_refused() {
        for (path, kind, link) in [
            ("build/x.ko", tar::EntryType::Symlink, Some("/etc/shadow")),
            ("build/y.ko", tar::EntryType::Link, Some("/etc/shadow")),
            ("build/../../etc/z", tar::EntryType::Regular, None),
            ("/etc/w", tar::EntryType::Regular, None),
            ("build/dev", tar::EntryType::Char, None),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let t = tar_with(&[(path, kind, b"", link)]);
            let err = unpack(&t[..], dir.path(), 1, 1 << 20).unwrap_err();
            assert!(matches!(err, ArtifactError::Refused { .. }), "{path}: {err}");
        }
    }

    #[test]
    fn lenient_unpack_lists_what_it_left_out_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(&[
            ("out/modules/x.ko", tar::EntryType::Symlink, b"", Some("/etc/shadow")),
            ("out/../../etc/z", tar::EntryType::Regular, b"z", None),
            ("out/make.log", tar::EntryType::Regular, b"log", None),
        ]);
        let u = unpack_lenient(&t[..], dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(u.written, [PathBuf::from("make.log")]);
        let refused: Vec<&str> = u.refused.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(refused, ["out/modules/x.ko", "out/../../etc/z"]);
        assert!(!dir.path().join("modules/x.ko").exists());
        assert!(std::fs::symlink_metadata(dir.path().join("modules/x.ko")).is_err(), "no link was made");
    }

    #[test]
    fn size_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(&[("b/big", tar::EntryType::Regular, &[0u8; 4096], None)]);
        assert!(matches!(unpack(&t[..], dir.path(), 1, 1000), Err(ArtifactError::TooLarge { .. })));
    }

    #[test]
    fn pack_dir_keeps_links_as_links_under_the_prefix() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/f.c"), b"int x;").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("leak")).unwrap();
        let t = pack_dir(src.path(), "m/1/build").unwrap();
        let mut a = tar::Archive::new(&t[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((e.path().unwrap().display().to_string(), link));
        }
        assert!(seen.contains(&("m/1/build/sub/f.c".into(), None)), "{seen:?}");
        // Stored, not followed: the passwd file's contents are not in the tar.
        assert!(seen.contains(&("m/1/build/leak".into(), Some("/etc/passwd".into()))), "{seen:?}");
        assert!(!t.windows(5).any(|w| w == b"root:"));
    }
}
