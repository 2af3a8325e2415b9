//! Writing `.deb` packages, reproducibly: the `ar` archive (`debian-binary`, `control.tar.xz`,
//! `data.tar.xz`) with every member's and every entry's time the given SOURCE_DATE_EPOCH,
//! owner root:root (uid/gid 0, names "root"), entries sorted by path, each directory on the
//! way listed before its contents, paths `./...` as dpkg-deb writes them.
//!
//! Written here rather than by `dpkg-deb --build`: a publishing host needs no dpkg, and the
//! bytes depend on this code alone (dpkg-deb's output varies with its version and its
//! compressor's), so the same store gives the same packages on any machine.

use std::collections::BTreeMap;
use std::io::Write;

/// A file of a package: its path without the leading `./` (e.g. `lib/modules/...`).
pub struct Entry<'a> {
    pub path: String,
    pub mode: u32,
    pub data: &'a [u8],
}

/// A whole package: `control` is the control file's text, `scripts` the maintainer scripts
/// (name, text), `files` the data.
pub fn build(control: &str, scripts: &[(&str, String)], files: &[Entry], epoch: u64) -> std::io::Result<Vec<u8>> {
    let mut control_files = vec![Entry { path: "control".into(), mode: 0o644, data: control.as_bytes() }];
    control_files.extend(scripts.iter().map(|(name, text)| Entry {
        path: (*name).into(),
        mode: 0o755,
        data: text.as_bytes(),
    }));
    let control_tar = xz(&tar(&control_files, epoch)?)?;
    let data_tar = xz(&tar(files, epoch)?)?;

    let mut ar = ar::Builder::new(Vec::new());
    for (name, data) in
        [("debian-binary", &b"2.0\n"[..]), ("control.tar.xz", &control_tar[..]), ("data.tar.xz", &data_tar[..])]
    {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o100644);
        ar.append(&h, data)?;
    }
    ar.into_inner()
}

/// A tar of `files` and of every directory above them, sorted, all owned by root, all at `epoch`.
fn tar(files: &[Entry], epoch: u64) -> std::io::Result<Vec<u8>> {
    // path -> (mode, data); None: a directory.
    let mut entries: BTreeMap<String, Option<(u32, &[u8])>> = BTreeMap::new();
    entries.insert("./".into(), None);
    for f in files {
        let mut dir = String::from("./");
        let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push_str(part);
            dir.push('/');
            entries.entry(dir.clone()).or_insert(None);
        }
        entries.insert(format!("./{}", parts.join("/")), Some((f.mode, f.data)));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in &entries {
        let mut h = tar::Header::new_gnu();
        let name = path.as_bytes();
        // Set as is: the tar crate's path setter drops the `./` that dpkg-deb writes.
        if name.len() > 99 {
            return Err(std::io::Error::other(format!("{path}: longer than a tar header's 99 bytes")));
        }
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        match entry {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
            Some((mode, data)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data)?;
            }
        }
    }
    b.into_inner()
}

fn xz(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(bytes)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::{control_fields, data_tar};

    fn sample(epoch: u64) -> Vec<u8> {
        let control = "Package: hello-modules-6.1.0-56-amd64\nVersion: 1.0\nArchitecture: amd64\n";
        let files = [
            Entry { path: "lib/modules/6.1.0-56-amd64/updates/dkms/b.ko".into(), mode: 0o644, data: b"bb" },
            Entry { path: "lib/modules/6.1.0-56-amd64/updates/dkms/a.ko".into(), mode: 0o644, data: b"a" },
        ];
        build(control, &[("postinst", "#!/bin/sh\n".into())], &files, epoch).unwrap()
    }

    #[test]
    fn members_entries_and_reproducibility() {
        let deb = sample(1_700_000_000);
        assert_eq!(deb, sample(1_700_000_000), "same input, same bytes");
        assert_ne!(deb, sample(1_700_000_001));
        // Read back with ckms's own .deb reader.
        let fields = control_fields(deb.as_slice(), "t.deb").unwrap();
        assert!(fields.contains(&("Package".into(), "hello-modules-6.1.0-56-amd64".into())));
        let data = data_tar(std::io::Cursor::new(deb.clone()), "t.deb").unwrap();
        let mut archive = tar::Archive::new(data);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 1_700_000_000));
            assert_eq!(h.username().unwrap(), Some("root"));
            seen.push(String::from_utf8(e.path_bytes().to_vec()).unwrap());
        }
        assert_eq!(
            seen,
            [
                "./",
                "./lib/",
                "./lib/modules/",
                "./lib/modules/6.1.0-56-amd64/",
                "./lib/modules/6.1.0-56-amd64/updates/",
                "./lib/modules/6.1.0-56-amd64/updates/dkms/",
                "./lib/modules/6.1.0-56-amd64/updates/dkms/a.ko",
                "./lib/modules/6.1.0-56-amd64/updates/dkms/b.ko",
            ]
        );
    }

    #[test]
    fn dpkg_deb_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.deb");
        std::fs::write(&path, sample(1)).unwrap();
        let out = std::process::Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&path)
            .output()
            .expect("dpkg-deb (package dpkg) must be installed: it checks the packages ckms writes");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("root/root") && text.contains("./lib/modules/6.1.0-56-amd64/updates/dkms/a.ko"),
            "{text}"
        );
    }
}
