//! Where a package's path lands in a layer: merged /usr (`./bin/ls` -> `usr/bin/ls`) and
//! relocated directories (`./usr/src/x` -> `usr/ckms-src/x`), both profile data.

use serde::Serialize;

use crate::profile::Profile;

/// How the image's file system is laid out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsRules {
    /// Top-level dirs that are symlinks into /usr, e.g. ["bin","sbin","lib","lib32","lib64","libx32"].
    pub usr_merge: Vec<String>,
    /// Directories whose package contents the image keeps elsewhere, with a link back from the
    /// old place for each top-level entry (see [`Relocation`]).
    pub relocate: Vec<Relocation>,
}

/// `from` (relative, e.g. "usr/src") is written at `to` ("usr/ckms-src"); each entry `X`
/// directly in it also gets a link `from/X -> <relative path to to/X>`, so that the image still
/// finds it at the old place while a build can mount a directory of its own over `from`.
/// Both sit at the same depth, so relative links inside the moved trees still resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relocation {
    pub from: String,
    pub to: String,
}

impl Relocation {
    /// From the profile's absolute paths.
    pub fn new(from: &str, to: &str) -> Relocation {
        Relocation { from: from.trim_matches('/').to_string(), to: to.trim_matches('/').to_string() }
    }

    /// The target of the link `from/<name>`: `../ckms-src/<name>` for usr/src -> usr/ckms-src.
    pub fn link_target(&self, name: &str) -> String {
        let from: Vec<&str> = self.from.split('/').collect();
        let to: Vec<&str> = self.to.split('/').collect();
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        let mut parts: Vec<&str> = vec![".."; from.len() - common];
        parts.extend(&to[common..]);
        parts.push(name);
        parts.join("/")
    }
}

impl FsRules {
    pub fn from_profile(profile: &Profile) -> FsRules {
        FsRules {
            usr_merge: profile.filesystem.usr_merge.clone(),
            relocate: profile.filesystem.relocate.iter().map(|r| Relocation::new(&r.from, &r.to)).collect(),
        }
    }

    /// Moves `path` (normalised, relative) when it is in a relocated directory; says where it
    /// was relative to that directory.
    pub(super) fn relocate(&self, path: &mut Vec<u8>) -> Option<Moved> {
        for r in &self.relocate {
            let Some(rest) = path.strip_prefix(r.from.as_bytes()) else { continue };
            let moved = match rest {
                [] => Moved::Dir(r.clone()),
                [b'/', name @ ..] if !name.contains(&b'/') => {
                    Moved::Top(r.clone(), String::from_utf8_lossy(name).into_owned())
                }
                [b'/', ..] => Moved::Below,
                _ => continue,
            };
            let mut new = r.to.as_bytes().to_vec();
            new.extend_from_slice(rest);
            *path = new;
            return Some(moved);
        }
        None
    }
}

/// What [`FsRules::relocate`] moved.
pub(super) enum Moved {
    /// The relocated directory itself.
    Dir(Relocation),
    /// An entry directly in it, by name: it gets its link back.
    Top(Relocation, String),
    /// Anything deeper.
    Below,
}

/// What a path from a package becomes in the layer.
pub(super) enum Mapped {
    /// "." itself, or a merged top-level dir (`bin`), which the base layer provides as a symlink.
    Drop,
    /// Written at the path left in the buffer.
    Keep,
}

/// Normalises `raw` into `out` ("./a//b/" -> "a/b") and applies the merged-/usr rewrite.
/// `lenient_root`: accept a leading "/" (synthetic entries) and keep merged dirs themselves.
pub(super) fn map_path(
    raw: &[u8],
    rules: &FsRules,
    out: &mut Vec<u8>,
    lenient_root: bool,
) -> Result<Mapped, &'static str> {
    out.clear();
    if raw.first() == Some(&b'/') && !lenient_root {
        return Err("absolute path");
    }
    let mut first: Option<&[u8]> = None;
    let mut count = 0;
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("contains `..`"),
            _ => {}
        }
        if count == 0 {
            first = Some(comp);
            if rules.usr_merge.iter().any(|d| d.as_bytes() == comp) {
                out.extend_from_slice(b"usr/");
            }
        } else {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
        count += 1;
    }
    match (count, first) {
        (0, _) => Ok(Mapped::Drop),
        (1, Some(top)) if rules.usr_merge.iter().any(|d| d.as_bytes() == top) => {
            if lenient_root {
                out.clear();
                out.extend_from_slice(top);
                Ok(Mapped::Keep)
            } else {
                Ok(Mapped::Drop)
            }
        }
        _ => Ok(Mapped::Keep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::LayerWriter;

    fn rules() -> FsRules {
        FsRules { usr_merge: vec!["lib".into()], relocate: vec![Relocation::new("/usr/src", "/usr/ckms-src")] }
    }

    fn moved(path: &str) -> (String, String) {
        let mut p = path.as_bytes().to_vec();
        let r = rules();
        let what = match r.relocate(&mut p) {
            None => "-".to_string(),
            Some(Moved::Dir(_)) => "dir".to_string(),
            Some(Moved::Top(r, name)) => format!("link {}", r.link_target(&name)),
            Some(Moved::Below) => "below".to_string(),
        };
        (String::from_utf8(p).unwrap(), what)
    }

    #[test]
    fn relocated_paths_and_their_links() {
        assert_eq!(moved("usr/src"), ("usr/ckms-src".into(), "dir".into()));
        assert_eq!(
            moved("usr/src/linux-headers-6.1.0-56-common"),
            (
                "usr/ckms-src/linux-headers-6.1.0-56-common".into(),
                "link ../ckms-src/linux-headers-6.1.0-56-common".into()
            )
        );
        assert_eq!(
            moved("usr/src/linux-headers-x/Makefile"),
            ("usr/ckms-src/linux-headers-x/Makefile".into(), "below".into())
        );
        assert_eq!(moved("usr/srcx/a"), ("usr/srcx/a".into(), "-".into()));
        assert_eq!(moved("usr/share/a"), ("usr/share/a".into(), "-".into()));
        let deeper = Relocation::new("/a/b/c", "/a/x/y");
        assert_eq!(deeper.link_target("n"), "../../x/y/n");
    }

    /// A headers package as a layer: its tree under usr/ckms-src, usr/src with one link per
    /// entry, hard links following their target, symlinks left as they are.
    #[test]
    fn a_relocated_package_in_a_layer() {
        use crate::deb::tests::{make_tar, TEntry};
        let tar = make_tar(&[
            TEntry::Dir("./usr/"),
            TEntry::Dir("./usr/src/"),
            TEntry::Dir("./usr/src/linux-headers-6.1.0-56-common/"),
            TEntry::File("./usr/src/linux-headers-6.1.0-56-common/Makefile", b"all:\n"),
            TEntry::Hardlink(
                "./usr/src/linux-headers-6.1.0-56-common/Kbuild",
                "./usr/src/linux-headers-6.1.0-56-common/Makefile",
            ),
            TEntry::Symlink("./usr/src/linux-headers-6.1.0-56-common/scripts", "../../lib/linux-kbuild-6.1/scripts"),
            TEntry::Dir("./lib/"),
            TEntry::Dir("./lib/modules/"),
            TEntry::Dir("./lib/modules/6.1.0-56-amd64/"),
            TEntry::Symlink("./lib/modules/6.1.0-56-amd64/build", "/usr/src/linux-headers-6.1.0-56-amd64"),
        ]);
        let mut w = LayerWriter::new(Vec::new(), rules());
        w.add_data_tar(tar.as_slice(), "headers.deb").unwrap();
        let (out, _) = w.finish().unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let got: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| format!(" -> {}", l.display())).unwrap_or_default();
                format!("{}{link}", e.path().unwrap().display())
            })
            .collect();
        let h = "linux-headers-6.1.0-56-common";
        assert_eq!(
            got,
            [
                "usr".to_string(),
                "usr/ckms-src".into(),
                "usr/src".into(),
                format!("usr/ckms-src/{h}"),
                format!("usr/src/{h} -> ../ckms-src/{h}"),
                format!("usr/ckms-src/{h}/Makefile"),
                format!("usr/ckms-src/{h}/Kbuild -> usr/ckms-src/{h}/Makefile"),
                format!("usr/ckms-src/{h}/scripts -> ../../lib/linux-kbuild-6.1/scripts"),
                "usr/lib/modules".into(),
                "usr/lib/modules/6.1.0-56-amd64".into(),
                "usr/lib/modules/6.1.0-56-amd64/build -> /usr/src/linux-headers-6.1.0-56-amd64".into(),
            ]
        );
    }

    #[test]
    fn merged_usr_and_normalisation() {
        let mut out = Vec::new();
        assert!(matches!(map_path(b"./lib/x.so", &rules(), &mut out, false), Ok(Mapped::Keep)));
        assert_eq!(out, b"usr/lib/x.so");
        assert!(matches!(map_path(b"./lib/", &rules(), &mut out, false), Ok(Mapped::Drop)));
        assert!(matches!(map_path(b"/lib", &rules(), &mut out, true), Ok(Mapped::Keep)));
        assert_eq!(out, b"lib");
        assert!(map_path(b"./a/../b", &rules(), &mut out, false).is_err());
        assert!(map_path(b"/etc/x", &rules(), &mut out, false).is_err());
    }
}
