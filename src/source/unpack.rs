//! A module source out of a `*-dkms` .deb: its `usr/src/<m>-<v>/` (the one directory there
//! with a dkms.conf), written as dpkg would (files with their executable bit, directories,
//! symlinks as symlinks), never through a link and never outside the destination.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::SourceError;
use crate::deb::data_tar;

/// The most a package's source may unpack to.
const MAX_BYTES: u64 = 4 << 30;

/// Unpacks `usr/src/` of the package `deb` under `dest` (an empty directory) and returns the
/// one directory holding a dkms.conf and its name (`<m>-<v>`).
pub fn usr_src(deb: &Path, dest: &Path) -> Result<(PathBuf, String), SourceError> {
    let origin = deb.display().to_string();
    let file = std::fs::File::open(deb).map_err(|source| SourceError::Io { path: deb.to_path_buf(), source })?;
    let data = data_tar(std::io::BufReader::new(file), &origin)?;
    let bad = |what: String| SourceError::BadPackage { deb: deb.to_path_buf(), what };
    let mut archive = tar::Archive::new(data);
    let mut total = 0u64;
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some(rel) = under_usr_src(&raw).map_err(|why| bad(format!("{}: {why}", raw.display())))? else {
            continue;
        };
        let target = dest.join(&rel);
        let io = |source| SourceError::Io { path: target.clone(), source };
        // Every parent is a directory this unpack made: a link in the package cannot redirect
        // a later entry.
        let mut parent = dest.to_path_buf();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            parent.push(part);
            match std::fs::symlink_metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(bad(format!("{} is written through a link", raw.display()))),
                Err(_) => std::fs::create_dir(&parent).map_err(io)?,
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        if std::fs::symlink_metadata(&target).is_ok_and(|m| !(m.is_dir() && kind.is_dir())) {
            return Err(bad(format!("{} is in the package twice", raw.display())));
        }
        match kind {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(io)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total += entry.size();
                if total > MAX_BYTES {
                    return Err(bad(format!("its source is larger than {} GiB", MAX_BYTES >> 30)));
                }
                let exec = header.mode().unwrap_or(0o644) & 0o111 != 0;
                let mut out = std::fs::File::create(&target).map_err(io)?;
                std::io::copy(&mut (&mut entry).take(MAX_BYTES), &mut out).map_err(io)?;
                let mode = if exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default().into_owned();
                std::os::unix::fs::symlink(link, &target).map_err(io)?;
            }
            tar::EntryType::Link => {
                // A hard link inside the package: a copy of the file it names, unpacked before.
                let link = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default().into_owned();
                let from = under_usr_src(&link)
                    .ok()
                    .flatten()
                    .map(|r| dest.join(r))
                    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
                    .ok_or_else(|| bad(format!("{} links to {}", raw.display(), link.display())))?;
                std::fs::copy(from, &target).map_err(io)?;
            }
            other => return Err(bad(format!("{} is a {other:?}, not a source file", raw.display()))),
        }
    }
    let dirs: Vec<String> = std::fs::read_dir(dest)
        .map_err(|source| SourceError::Io { path: dest.to_path_buf(), source })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("dkms.conf").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match dirs.as_slice() {
        [one] => Ok((dest.join(one), one.clone())),
        [] => Err(bad("it has no /usr/src/<module>-<version>/dkms.conf: not a dkms package".into())),
        many => Err(bad(format!("it has more than one module source: {}", many.join(", ")))),
    }
}

/// `./usr/src/a/b` -> `a/b`; None for anything outside usr/src (and usr/src itself); an error
/// for paths that climb or are absolute.
fn under_usr_src(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("it climbs out with .."),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(match parts.as_slice() {
        [usr, src, rest @ ..] if *usr == "usr" && *src == "src" && !rest.is_empty() => Some(rest.iter().collect()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::tests::{make_deb, Comp, TEntry};

    #[test]
    fn the_source_with_its_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("m-dkms.deb");
        let data = [
            TEntry::Dir("./"),
            TEntry::Dir("./usr/"),
            TEntry::Dir("./usr/share/doc/m-dkms/"),
            TEntry::File("./usr/share/doc/m-dkms/copyright", b"x"),
            TEntry::Dir("./usr/src/"),
            TEntry::Dir("./usr/src/m-1.0/"),
            TEntry::File("./usr/src/m-1.0/dkms.conf", b"PACKAGE_NAME=m\n"),
            TEntry::File("./usr/src/m-1.0/m.c", b"int x;"),
            TEntry::Symlink("./usr/src/m-1.0/compat.c", "../other-2/compat.c"),
            TEntry::Hardlink("./usr/src/m-1.0/m2.c", "./usr/src/m-1.0/m.c"),
        ];
        std::fs::write(&deb, make_deb("Package: m-dkms\nVersion: 1.0-1\n", &data, Comp::Xz)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (src, name) = usr_src(&deb, &out).unwrap();
        assert_eq!(name, "m-1.0");
        assert_eq!(std::fs::read(src.join("m2.c")).unwrap(), b"int x;");
        assert_eq!(std::fs::read_link(src.join("compat.c")).unwrap(), Path::new("../other-2/compat.c"));
        assert!(!out.join("doc").exists() && !dir.path().join("usr").exists(), "only usr/src");
    }

    #[test]
    fn a_package_without_a_module_source() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("x.deb");
        std::fs::write(&deb, make_deb("Package: x\n", &[TEntry::File("./usr/src/x-1/README", b"")], Comp::Gz)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = usr_src(&deb, &out).unwrap_err();
        assert!(err.to_string().contains("not a dkms package"), "{err}");
    }

    #[test]
    fn links_in_the_package_do_not_redirect_writes() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("evil.deb");
        let data = [
            TEntry::Symlink("./usr/src/m-1/escape", "/tmp"),
            TEntry::File("./usr/src/m-1/escape/deeper/owned", b"x"),
            TEntry::File("./usr/src/m-1/dkms.conf", b""),
        ];
        std::fs::write(&deb, make_deb("Package: evil\n", &data, Comp::Xz)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert!(usr_src(&deb, &out).unwrap_err().to_string().contains("through a link"));
        assert!(!Path::new("/tmp/deeper").exists());
        for p in ["../etc/x", "/etc/x"] {
            assert!(under_usr_src(Path::new(p)).is_err(), "{p}");
        }
    }
}
