//! The dpkg database, read as files: which installed package owns a path (`info/*.list`, what
//! `dpkg -S` reads) and an installed package's control fields (`status`).

use std::path::Path;

use crate::deb::parse_fields;

/// The installed package that owns `path` (as dpkg records it, e.g.
/// `/usr/src/m-1/dkms.conf`), from `<db>/info/<package>[:<arch>].list`; None when no package
/// does or there is no database.
pub fn owner(db: &Path, path: &str) -> Option<String> {
    let mut lists: Vec<_> = std::fs::read_dir(db.join("info"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "list"))
        .collect();
    // Deterministic when two packages claim a path (diversions).
    lists.sort();
    lists.into_iter().find_map(|list| {
        let text = std::fs::read_to_string(&list).ok()?;
        text.lines().any(|l| l == path).then(|| {
            let stem = list.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            stem.split(':').next().unwrap_or_default().to_string()
        })
    })
}

/// The control fields of `package` in `<db>/status`, if it is there and not merely
/// remembered (`not-installed`, `config-files`: its files are gone).
pub fn installed_fields(db: &Path, package: &str) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(db.join("status")).ok()?;
    text.split("\n\n").map(parse_fields).find(|fields| {
        let get = |k: &str| fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
        get("Package") == Some(package)
            && get("Status").is_some_and(|s| !s.ends_with("not-installed") && !s.ends_with("config-files"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("info")).unwrap();
        std::fs::write(
            d.path().join("info/west-chamber-dkms.list"),
            "/.\n/usr\n/usr/src\n/usr/src/west-chamber-1\n/usr/src/west-chamber-1/dkms.conf\n",
        )
        .unwrap();
        std::fs::write(d.path().join("info/libc6:amd64.list"), "/usr/lib/x86_64-linux-gnu/libc.so.6\n").unwrap();
        std::fs::write(
            d.path().join("status"),
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36\n\n\
             Package: west-chamber-dkms\nStatus: install ok half-configured\nVersion: 1-14\n\
             Depends: bzip2, dkms,\n libxtables-dev\n\n\
             Package: gone-dkms\nStatus: deinstall ok config-files\nVersion: 1\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn the_owner_of_a_path() {
        let d = db();
        assert_eq!(owner(d.path(), "/usr/src/west-chamber-1/dkms.conf").as_deref(), Some("west-chamber-dkms"));
        assert_eq!(owner(d.path(), "/usr/lib/x86_64-linux-gnu/libc.so.6").as_deref(), Some("libc6"));
        assert_eq!(owner(d.path(), "/usr/src/other-1/dkms.conf"), None);
        assert_eq!(owner(&d.path().join("nothing"), "/usr/src/west-chamber-1/dkms.conf"), None);
    }

    #[test]
    fn the_fields_of_an_installed_package() {
        let d = db();
        let fields = installed_fields(d.path(), "west-chamber-dkms").unwrap();
        assert!(fields.contains(&("Depends".into(), "bzip2, dkms,\nlibxtables-dev".into())), "{fields:?}");
        assert_eq!(installed_fields(d.path(), "gone-dkms"), None, "only its conffiles are left");
        assert_eq!(installed_fields(d.path(), "nothing"), None);
    }
}
