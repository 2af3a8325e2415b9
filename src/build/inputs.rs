//! What a build container holds besides the image: the file system a dkms host shows a MAKE
//! line, made of copies. Two volumes:
//!
//! - `/usr/src` ([`CONTAINER_SOURCES`]): the module's own source at `<m>-<v>`, owned by the build
//!   user (a Makefile may write there, as real ones do; the host's source never changes), and
//!   every sibling's source at `<s>-<w>`, owned by uid 0 (readable, not writable). The driver
//!   links the image's own /usr/src entries (the kernel headers) back in before anything runs.
//! - `/var/lib/dkms` ([`CONTAINER_TREE`]): ckms's files (`.ckms/`), the module's `build/` (the
//!   driver copies the source there, as dkms does) and `source` link, and per sibling its
//!   `source` link and its built tree for this kernel (`module/`, `log/`), owned by uid 0.
//!
//! Nothing else of the host: which siblings are visible is the caller's choice ([`Sibling`]).

use std::path::{Path, PathBuf};

use super::BuildError;
use crate::engine::{Content, Input, Volume};

/// dkms's tree as the container sees it: real MAKE lines name `$dkms_tree/<m>/<v>/build`, and
/// some Makefiles hard-code /var/lib/dkms. The build's main volume.
pub const CONTAINER_TREE: &str = "/var/lib/dkms";
/// dkms's source tree as the container sees it: real dkms.conf files `find /usr/src` for the
/// sources of the modules they build against. A volume of its own.
pub const CONTAINER_SOURCES: &str = "/usr/src";

/// Another module of the tree, shown to a build the way a dkms host shows it, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub module: String,
    pub version: String,
    /// Its source on the host (`<source_tree>/<m>-<v>`): at `/usr/src/<m>-<v>`.
    pub source: PathBuf,
    /// What it built for the build's kernel, if it is built: at
    /// `/var/lib/dkms/<m>/<v>/<kver>/<arch>/` as a dkms host shows it.
    pub built: Option<BuiltView>,
}

/// A sibling's built modules on the host: `module/` (and `log/`) of a dkms tree's built dir,
/// or the signed modules of a farm store's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltView {
    /// The directory shown as `module/`.
    pub modules: PathBuf,
    /// The directory shown as `log/` (make.log), when there is one.
    pub log: Option<PathBuf>,
}

impl BuiltView {
    /// A dkms tree's built dir (`<dkms_tree>/<m>/<v>/<kver>/<arch>`).
    pub fn of_built_dir(dir: &Path) -> BuiltView {
        let log = dir.join("log");
        BuiltView { modules: dir.join("module"), log: log.is_dir().then_some(log) }
    }
}

/// The two volumes' inputs for building `module`/`version` from `source`: the tree's (to which
/// the caller adds ckms's own files, also the user's) and the source tree volume.
pub(super) fn layout(
    module: &str,
    version: &str,
    source: &Path,
    kernel: &str,
    arch: &str,
    siblings: &[Sibling],
) -> Result<(Vec<Input>, Volume), BuildError> {
    let mut own = tar::Builder::new(Vec::new());
    for dir in [module.to_string(), format!("{module}/{version}"), format!("{module}/{version}/build")] {
        append_dir(&mut own, &dir).map_err(BuildError::Input)?;
    }
    append_link(&mut own, &format!("{module}/{version}/source"), &sources_path(module, version))
        .map_err(BuildError::Input)?;
    let mut tree = vec![Input::user(own.into_inner().map_err(BuildError::Input)?)];
    let mut sources = vec![Input::user(Content::dir(source, &format!("{module}-{version}")))];
    for s in siblings {
        sources.push(Input::root(Content::dir(&s.source, &format!("{}-{}", s.module, s.version))));
        let mut theirs = tar::Builder::new(Vec::new());
        for dir in [s.module.clone(), format!("{}/{}", s.module, s.version)] {
            append_dir(&mut theirs, &dir).map_err(BuildError::Input)?;
        }
        append_link(&mut theirs, &format!("{}/{}/source", s.module, s.version), &sources_path(&s.module, &s.version))
            .map_err(BuildError::Input)?;
        tree.push(Input::root(theirs.into_inner().map_err(BuildError::Input)?));
        let Some(built) = &s.built else { continue };
        for (part, dir) in [("module", Some(&built.modules)), ("log", built.log.as_ref())] {
            if let Some(dir) = dir.filter(|d| d.is_dir()) {
                let at = format!("{}/{}/{kernel}/{arch}/{part}", s.module, s.version);
                tree.push(Input::root(Content::dir(dir, &at)));
            }
        }
    }
    Ok((tree, Volume { path: CONTAINER_SOURCES.to_string(), input: sources }))
}

/// `/usr/src/<m>-<v>`.
pub(super) fn sources_path(module: &str, version: &str) -> String {
    format!("{CONTAINER_SOURCES}/{module}-{version}")
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, path, std::io::empty())
}

fn append_link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, path, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Owner;
    use crate::testutil::input_entries as entries;

    #[test]
    fn own_source_writable_siblings_read_only() {
        let host = tempfile::tempdir().unwrap();
        let write = |rel: &str| {
            let p = host.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        };
        write("usr/src/user-1/dkms.conf");
        write("usr/src/base-2/shared.h");
        write("usr/src/plain-3/dkms.conf");
        write("tree/base/2/6.1.0-56-amd64/x86_64/module/base.ko");
        write("tree/base/2/6.1.0-56-amd64/x86_64/log/make.log");
        write("tree/base/2/6.1.0-56-amd64/x86_64/ckms.json");
        let siblings = [
            Sibling {
                module: "base".into(),
                version: "2".into(),
                source: host.path().join("usr/src/base-2"),
                built: Some(BuiltView::of_built_dir(&host.path().join("tree/base/2/6.1.0-56-amd64/x86_64"))),
            },
            Sibling {
                module: "plain".into(),
                version: "3".into(),
                source: host.path().join("usr/src/plain-3"),
                built: None,
            },
        ];
        let source = host.path().join("usr/src/user-1");
        let (tree, sources) = layout("user", "1", &source, "6.1.0-56-amd64", "x86_64", &siblings).unwrap();
        assert_eq!(sources.path, "/usr/src");
        let user = |p: &str| (p.to_string(), Owner::User, None);
        let root = |p: &str| (p.to_string(), Owner::Root, None);
        let link = |p: &str, o: Owner, t: &str| (p.to_string(), o, Some(t.to_string()));
        assert_eq!(
            entries(&sources.input),
            [
                user("user-1"),
                user("user-1/dkms.conf"),
                root("base-2"),
                root("base-2/shared.h"),
                root("plain-3"),
                root("plain-3/dkms.conf")
            ]
        );
        let k = "base/2/6.1.0-56-amd64";
        assert_eq!(
            entries(&tree),
            [
                user("user"),
                user("user/1"),
                user("user/1/build"),
                link("user/1/source", Owner::User, "/usr/src/user-1"),
                root("base"),
                root("base/2"),
                link("base/2/source", Owner::Root, "/usr/src/base-2"),
                root("base"),
                root("base/2"),
                root(k),
                root(&format!("{k}/x86_64")),
                root(&format!("{k}/x86_64/module")),
                root(&format!("{k}/x86_64/module/base.ko")),
                root("base"),
                root("base/2"),
                root(k),
                root(&format!("{k}/x86_64")),
                root(&format!("{k}/x86_64/log")),
                root(&format!("{k}/x86_64/log/make.log")),
                root("plain"),
                root("plain/3"),
                link("plain/3/source", Owner::Root, "/usr/src/plain-3"),
            ],
            "the build record (ckms.json) stays on the host; repeated directories are written once (engine::input_tar)"
        );
    }
}
