//! A pair's key: the digest of everything that decides its output, so that the same key always
//! names the same bytes, and any change to an input names a new entry.
//!
//! In: ckms's build recipe (the scripts that run in the container and this format's version),
//! the source tree's contents, the dkms override files that apply, the builder image's lock
//! (every package by SHA-256, the extra layer's too), the kernel and arch, and what else the
//! build can see: the sources of the sibling modules it declares, and the keys of the pairs it
//! depends on (BUILD_DEPENDS) for the same kernel. Out: timestamps, the engine, `-j`, the
//! signing key (signing is an output step), the store's location.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::cache::{hash_reader, sha256_hex};

/// Bumped whenever the meaning of a key's inputs changes.
pub const FORMAT: u32 = 1;

/// A sibling module whose source the build can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiblingInput {
    pub module: String,
    pub version: String,
    /// [`tree_digest`] of its source.
    pub digest: String,
}

/// Everything a key is made of.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// Digest of the build's own scripts ([`crate::build::recipe_digest`]).
    pub recipe: String,
    pub module: String,
    pub version: String,
    /// [`tree_digest`] of the source.
    pub source: String,
    /// /etc/dkms override files that apply: (name, SHA-256 of the bytes).
    pub overrides: Vec<(String, String)>,
    /// SHA-256 of the builder image's lock file.
    pub image_lock: String,
    pub kernel: String,
    pub arch: String,
    pub siblings: Vec<SiblingInput>,
    /// Keys of the pairs this one builds against (BUILD_DEPENDS), same kernel.
    pub depends: Vec<String>,
}

impl Inputs {
    /// The key: hex SHA-256 of the inputs' canonical JSON (sorted lists, fixed field order).
    pub fn key(&self) -> String {
        let mut canon = self.clone();
        canon.overrides.sort();
        canon.siblings.sort_by(|a, b| (&a.module, &a.version).cmp(&(&b.module, &b.version)));
        canon.depends.sort();
        let doc = serde_json::json!({ "format": FORMAT, "inputs": canon });
        sha256_hex(doc.to_string().as_bytes())
    }
}

/// The digest of a directory's contents: every entry's relative path, kind, permission bits,
/// and bytes or link target, in sorted order. Timestamps and owners are left out: a source
/// unpacked or copied again has the same digest. With it, the files' total size.
pub fn tree_digest(dir: &Path) -> std::io::Result<(String, u64)> {
    let mut entries = Vec::new();
    let mut size = 0;
    collect(dir, Path::new(""), &mut entries, &mut size)?;
    entries.sort();
    let mut h = Sha256::new();
    for (rel, line) in entries {
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(line.as_bytes());
        h.update([b'\n']);
    }
    Ok((hex::encode(h.finalize()), size))
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<(String, String)>, total: &mut u64) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let meta = std::fs::symlink_metadata(root.join(&rel))?;
        let mode = meta.permissions().mode() & 0o777;
        let shown = rel.to_string_lossy().into_owned();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(root.join(&rel))?;
            out.push((shown, format!("l {}", target.to_string_lossy())));
        } else if meta.is_dir() {
            out.push((shown, format!("d {mode:o}")));
            collect(root, &rel, out, total)?;
        } else if meta.is_file() {
            let (sha, size) = hash_reader(std::fs::File::open(root.join(&rel))?)?;
            out.push((shown, format!("f {mode:o} {size} {sha}")));
            *total += size;
        } else {
            out.push((shown, "other".to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            recipe: "r".into(),
            module: "hello".into(),
            version: "1".into(),
            source: "s".into(),
            overrides: vec![("b.conf".into(), "2".into()), ("a.conf".into(), "1".into())],
            image_lock: "lock".into(),
            kernel: "6.1.0-56-amd64".into(),
            arch: "x86_64".into(),
            siblings: vec![],
            depends: vec!["k2".into(), "k1".into()],
        }
    }

    #[test]
    fn the_key_follows_every_input_but_not_list_order() {
        let base = inputs().key();
        let mut reordered = inputs();
        reordered.overrides.reverse();
        reordered.depends.reverse();
        assert_eq!(reordered.key(), base);
        let changes: [fn(&mut Inputs); 7] = [
            |i| i.recipe = "r2".into(),
            |i| i.source = "s2".into(),
            |i| i.image_lock = "lock2".into(),
            |i| i.kernel = "6.1.0-55-amd64".into(),
            |i| i.overrides.truncate(1),
            |i| i.siblings.push(SiblingInput { module: "x".into(), version: "1".into(), digest: "d".into() }),
            |i| i.depends.push("k3".into()),
        ];
        for change in changes {
            let mut i = inputs();
            change(&mut i);
            assert_ne!(i.key(), base);
        }
    }

    #[test]
    fn the_tree_digest_sees_contents_modes_and_links_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.c"), "int a;").unwrap();
        std::fs::write(d.join("dkms.conf"), "PACKAGE_NAME=x").unwrap();
        std::os::unix::fs::symlink("sub/a.c", d.join("link")).unwrap();
        let first = tree_digest(d).unwrap().0;
        let f = std::fs::File::options().write(true).open(d.join("sub/a.c")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(tree_digest(d).unwrap().0, first, "mtime is not content");
        std::fs::write(d.join("sub/a.c"), "int b;").unwrap();
        let changed = tree_digest(d).unwrap().0;
        assert_ne!(changed, first);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("sub/a.c"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(tree_digest(d).unwrap().0, changed, "an executable bit is content");
    }
}
