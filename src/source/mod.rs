//! Where a module source comes from when it comes from a Debian package, and what that package
//! declares: an installed package (the dpkg database).
//!
//! - [`origin`]: the record kept per module version (`origin.json`);
//! - [`deps`]: its Depends as a builder image's extra packages and sibling module sources;
//! - [`dpkg`]: the dpkg database, read as files.

pub mod deps;
pub mod dpkg;
pub mod origin;

pub use deps::{build_deps, BuildDeps};
pub use origin::Origin;

use std::path::{Path, PathBuf};

/// The dpkg database of the system whose source tree is `source_tree` (`<root>/usr/src`), and
/// that root; None for a source tree elsewhere.
pub fn dpkg_root(source_tree: &Path) -> Option<(PathBuf, PathBuf)> {
    let usr = source_tree.parent()?;
    if source_tree.file_name()? != "src" || usr.file_name()? != "usr" {
        return None;
    }
    let root = usr.parent()?;
    Some((root.join("var/lib/dpkg"), root.to_path_buf()))
}

/// The record of the installed package that owns `<source_tree>/<name>/dkms.conf` (or of
/// `package` when given), from the dpkg database; None without one.
pub fn installed(source_tree: &Path, name: &str, package: Option<&str>) -> Option<Origin> {
    let (db, _) = dpkg_root(source_tree)?;
    let package = match package {
        Some(p) => p.to_string(),
        None => dpkg::owner(&db, &format!("/usr/src/{name}/dkms.conf"))?,
    };
    let fields = dpkg::installed_fields(&db, &package)?;
    Origin::from_fields(&fields, format!("the dpkg database ({})", db.join("status").display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dpkg_database_beside_the_source_tree() {
        assert_eq!(dpkg_root(Path::new("/usr/src")), Some((PathBuf::from("/var/lib/dpkg"), PathBuf::from("/"))));
        assert_eq!(dpkg_root(Path::new("/r/usr/src")).unwrap().0, PathBuf::from("/r/var/lib/dpkg"));
        assert_eq!(dpkg_root(Path::new("/srv/sources")), None);
    }

    #[test]
    fn an_installed_package_found_by_its_dkms_conf() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("var/lib/dpkg");
        std::fs::create_dir_all(db.join("info")).unwrap();
        std::fs::write(db.join("info/m-dkms.list"), "/usr/src/m-1/dkms.conf\n").unwrap();
        std::fs::write(
            db.join("status"),
            "Package: m-dkms\nStatus: install ok installed\nVersion: 1-2\nDepends: gawk\n",
        )
        .unwrap();
        let tree = root.path().join("usr/src");
        let o = installed(&tree, "m-1", None).unwrap();
        assert_eq!((o.package.as_str(), o.depends.as_str()), ("m-dkms", "gawk"));
        assert!(o.learned_from.contains("dpkg database"));
        assert_eq!(installed(&tree, "m-1", Some("m-dkms")), Some(o));
        assert_eq!(installed(&tree, "other-1", None), None);
    }
}
