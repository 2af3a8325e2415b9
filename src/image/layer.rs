//! Turning package contents into one deterministic, uncompressed OCI layer tar.
//!
//! Determinism is what lets every kernel of a distro release share the base and toolchain
//! layers in the engine, so every header is rebuilt from scratch rather than copied: GNU
//! format always (long names as GNU `L`/`K` records, written the same way every time), no
//! uname/gname, no atime/ctime, no PAX records. What is kept from the .deb (mode, uid/gid,
//! mtime) is itself reproducible in Debian packages.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};
use thiserror::Error;

use super::paths::{map_path, Mapped, Moved};
pub use super::paths::{FsRules, Relocation};
use crate::diagnose::{code, Diagnose};

/// Buffer sizes for the hot path: large enough that syscalls and decoder calls are rare.
const READ_BUF: usize = 256 * 1024;
const WRITE_BUF: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("{origin}: reading the package data failed: {source}")]
    Read { origin: String, source: io::Error },
    #[error("writing the layer failed (at {path} from {origin}): {source}")]
    Write { origin: String, path: String, source: io::Error },
    #[error("{origin}: entry {path:?} has an unsafe path: {why}")]
    UnsafePath { origin: String, path: String, why: &'static str },
    #[error("{origin}: entry {path} has tar type {kind:?}, which ckms does not put in layers")]
    UnsupportedEntry { origin: String, path: String, kind: EntryType },
}

impl Diagnose for LayerError {
    fn exit_code(&self) -> i32 {
        code::IO
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            LayerError::Read { .. } => {
                "the cached package is probably damaged: remove it from the cache so that it is downloaded again".into()
            }
            LayerError::Write { source, .. } if source.raw_os_error() == Some(28) => {
                "the disk holding the cache is full: free space, or point the cache elsewhere with --cache-dir or CKMS_CACHE_DIR".into()
            }
            LayerError::Write { .. } => "check that the cache directory is writable and has free space".into(),
            LayerError::UnsafePath { .. } | LayerError::UnsupportedEntry { .. } => {
                "this package cannot be used in an image; report it, or leave it out of the image's package set".into()
            }
        })
    }
}

/// The identity of a finished layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigest {
    /// "sha256:<hex>" of the uncompressed tar.
    pub diff_id: String,
    /// Length of the uncompressed tar in bytes.
    pub size: u64,
}

/// Hashes and counts everything written through it, so the digest costs no second pass.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Remembers whether the input failed, because the tar builder reports input and output
/// errors of one entry alike and the two need different advice.
struct Tracked<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

/// Writes one layer tar. Build it, add entries, then [`LayerWriter::finish`].
pub struct LayerWriter<W: Write> {
    tar: tar::Builder<BufWriter<HashingWriter<W>>>,
    rules: FsRules,
    /// Every path written so far (after rewriting), for the duplicate rule below.
    seen: HashSet<Vec<u8>>,
    /// Non-directory paths skipped as duplicates, as "path (origin)".
    duplicates: Vec<String>,
    /// Reused per entry to avoid allocation churn.
    path: Vec<u8>,
    link: Vec<u8>,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W, rules: FsRules) -> Self {
        let hashing = HashingWriter { inner: out, hasher: Sha256::new(), len: 0 };
        LayerWriter {
            tar: tar::Builder::new(BufWriter::with_capacity(WRITE_BUF, hashing)),
            rules,
            seen: HashSet::new(),
            duplicates: Vec::new(),
            path: Vec::with_capacity(256),
            link: Vec::with_capacity(256),
        }
    }

    /// Non-directory entries that were skipped because their path was already in the layer,
    /// as "path (origin)", for callers that want to report overlapping packages.
    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    /// Appends every entry of a package's data.tar, rewriting paths for merged /usr
    /// ("./bin/ls" -> "usr/bin/ls", also hard-link targets; symlink targets are left alone
    /// since /bin etc. exist as symlinks), normalising "./" prefixes, skipping directories
    /// already written, skipping "." itself.
    ///
    /// Duplicates: the first entry for a path wins and later ones are skipped (and listed in
    /// [`LayerWriter::duplicates`]). Writing both would leave the outcome to the engine's
    /// extractor (replacing a file with a directory, or a hard link's target after the link,
    /// differ between Docker and containers/storage), and makes the layer bigger. In Debian
    /// two packages only share a path when the contents are identical (merged-/usr aliases,
    /// Multi-Arch: same) or when they conflict, which the resolver must not let through,
    /// so keeping the first loses nothing and is fully determined by package order.
    pub fn add_data_tar(&mut self, data_tar: impl Read, origin: &str) -> Result<(), LayerError> {
        let failed = Rc::new(Cell::new(false));
        let input = Tracked { inner: BufReader::with_capacity(READ_BUF, data_tar), failed: failed.clone() };
        let read_err = |source| LayerError::Read { origin: origin.into(), source };
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            let kind = entry.header().entry_type();
            let kind = match kind {
                EntryType::Regular | EntryType::Continuous => EntryType::Regular,
                EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Char
                | EntryType::Block
                | EntryType::Fifo => kind,
                // Global PAX records only carry metadata we normalise away anyway.
                EntryType::XGlobalHeader => continue,
                _ => {
                    return Err(LayerError::UnsupportedEntry {
                        origin: origin.into(),
                        path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                        kind,
                    })
                }
            };
            let mapped = map_path(&entry.path_bytes(), &self.rules, &mut self.path, false)
                .map_err(|why| unsafe_path(origin, &entry.path_bytes(), why))?;
            if let Mapped::Drop = mapped {
                continue;
            }
            let moved = self.rules.relocate(&mut self.path);
            if !self.first_time(kind, origin) {
                continue;
            }
            let h = entry.header();
            let mut header = new_header(kind, h.mode().map_err(read_err)?);
            header.set_uid(h.uid().map_err(read_err)?);
            header.set_gid(h.gid().map_err(read_err)?);
            header.set_mtime(h.mtime().map_err(read_err)?);
            if matches!(kind, EntryType::Char | EntryType::Block) {
                // Device numbers only exist in ustar/GNU headers; a .deb always has those.
                let major = h.device_major().map_err(read_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(read_err)?.unwrap_or(0);
                header.set_device_major(major).map_err(read_err)?;
                header.set_device_minor(minor).map_err(read_err)?;
            }
            let write_err = |source| LayerError::Write {
                origin: origin.into(),
                path: String::from_utf8_lossy(&self.path).into_owned(),
                source,
            };
            let path = Path::new(OsStr::from_bytes(&self.path));
            let res = match kind {
                EntryType::Regular => {
                    header.set_size(entry.size());
                    self.tar.append_data(&mut header, path, &mut entry)
                }
                EntryType::Symlink | EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        return Err(unsafe_path(origin, &self.path, "link without a target"));
                    };
                    let target: &[u8] = if kind == EntryType::Link {
                        // Hard links name a path in the archive, so it moves like the entry did.
                        match map_path(&target, &self.rules, &mut self.link, false) {
                            Ok(Mapped::Keep) => {
                                self.rules.relocate(&mut self.link);
                                &self.link
                            }
                            Ok(Mapped::Drop) => return Err(unsafe_path(origin, &target, "hard link to a directory")),
                            Err(why) => return Err(unsafe_path(origin, &target, why)),
                        }
                    } else {
                        // Symlinks resolve at run time through the /bin -> usr/bin symlinks.
                        self.link.clear();
                        self.link.extend_from_slice(&target);
                        &self.link
                    };
                    self.tar.append_link(&mut header, path, Path::new(OsStr::from_bytes(target)))
                }
                _ => self.tar.append_data(&mut header, path, io::empty()),
            };
            res.map_err(|e| if failed.get() { read_err(e) } else { write_err(e) })?;
            if let Some(moved) = moved {
                let mtime = entry.header().mtime().map_err(read_err)?;
                self.link_back(moved, mtime)?;
            }
        }
        Ok(())
    }

    /// What a relocated entry leaves at its old place: the directory, and a link to each entry
    /// directly in it (see [`Relocation`]). Written once, whichever package comes first.
    fn link_back(&mut self, moved: Moved, mtime: u64) -> Result<(), LayerError> {
        let (r, name) = match moved {
            Moved::Dir(r) => (r, None),
            Moved::Top(r, name) => (r, Some(name)),
            Moved::Below => return Ok(()),
        };
        let mut entries = vec![(r.from.clone(), None)];
        entries.extend(name.map(|n| (format!("{}/{n}", r.from), Some(r.link_target(&n)))));
        for (path, target) in entries {
            if !self.seen.insert(path.clone().into_bytes()) {
                continue;
            }
            let kind = if target.is_some() { EntryType::Symlink } else { EntryType::Directory };
            let mut header = new_header(kind, if target.is_some() { 0o777 } else { 0o755 });
            header.set_mtime(mtime);
            let res = match &target {
                Some(t) => self.tar.append_link(&mut header, &path, t),
                None => self.tar.append_data(&mut header, &path, io::empty()),
            };
            res.map_err(|source| LayerError::Write { origin: "ckms".into(), path, source })?;
        }
        Ok(())
    }

    pub fn add_dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Result<(), LayerError> {
        self.add_synthetic(path, EntryType::Directory, mode, uid, gid, None, b"")
    }

    pub fn add_file(&mut self, path: &str, contents: &[u8], mode: u32, uid: u64, gid: u64) -> Result<(), LayerError> {
        self.add_synthetic(path, EntryType::Regular, mode, uid, gid, None, contents)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), LayerError> {
        self.add_synthetic(path, EntryType::Symlink, 0o777, 0, 0, Some(target), b"")
    }

    /// Entries ckms makes itself: mtime 0, GNU header like the rest. A leading "/" is accepted
    /// (callers naturally write "/etc/passwd"); paths below a merged dir are rewritten like
    /// package paths, but the merged dir itself is kept so that `add_symlink("bin", "usr/bin")`
    /// works. The same first-wins rule applies.
    #[allow(clippy::too_many_arguments)]
    fn add_synthetic(
        &mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        target: Option<&str>,
        contents: &[u8],
    ) -> Result<(), LayerError> {
        const ORIGIN: &str = "ckms";
        if let Mapped::Drop = map_path(path.as_bytes(), &self.rules, &mut self.path, true)
            .map_err(|why| unsafe_path(ORIGIN, path.as_bytes(), why))?
        {
            return Ok(()); // "." itself: the root always exists.
        }
        if !self.first_time(kind, ORIGIN) {
            return Ok(());
        }
        let mut header = new_header(kind, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(0);
        header.set_size(contents.len() as u64);
        let p = Path::new(OsStr::from_bytes(&self.path));
        let res = match target {
            Some(t) => self.tar.append_link(&mut header, p, t),
            None => self.tar.append_data(&mut header, p, contents),
        };
        res.map_err(|source| LayerError::Write { origin: ORIGIN.into(), path: path.into(), source })
    }

    /// Records `self.path`; false when it was already written (and so must be skipped).
    fn first_time(&mut self, kind: EntryType, origin: &str) -> bool {
        if self.seen.contains(self.path.as_slice()) {
            if kind != EntryType::Directory {
                self.duplicates.push(format!("{} ({origin})", String::from_utf8_lossy(&self.path)));
            }
            return false;
        }
        self.seen.insert(self.path.clone());
        true
    }

    /// Ends the tar and returns the writer with the layer's digest and size.
    pub fn finish(self) -> Result<(W, LayerDigest), LayerError> {
        let write_err = |source| LayerError::Write { origin: "ckms".into(), path: "end of archive".into(), source };
        let buffered = self.tar.into_inner().map_err(write_err)?;
        let mut hashing = buffered.into_inner().map_err(|e| write_err(e.into_error()))?;
        hashing.inner.flush().map_err(write_err)?;
        let digest =
            LayerDigest { diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())), size: hashing.len };
        Ok((hashing.inner, digest))
    }
}

/// A fresh GNU header: every field not set later stays zero/empty, the same for every run.
fn new_header(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    // Permission, setuid/setgid and sticky bits only; file type bits are the entry type's job.
    h.set_mode(mode & 0o7777);
    h.set_size(0);
    h
}

fn unsafe_path(origin: &str, path: &[u8], why: &'static str) -> LayerError {
    LayerError::UnsafePath { origin: origin.into(), path: String::from_utf8_lossy(path).into_owned(), why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sha256_hex;
    use crate::deb::tests::{make_deb, make_tar, Comp, TEntry};
    use crate::deb::{data_tar, data_tar_threaded};

    fn merged() -> FsRules {
        FsRules {
            usr_merge: ["bin", "sbin", "lib", "lib32", "lib64", "libx32"].map(String::from).to_vec(),
            relocate: vec![Relocation::new("/usr/src", "/usr/ckms-src")],
        }
    }

    /// (path, type, link target, contents) of every entry of a tar.
    fn list(tar_bytes: &[u8]) -> Vec<(String, EntryType, Option<String>, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (e.path().unwrap().display().to_string(), e.header().entry_type(), link, v)
            })
            .collect()
    }

    fn sample() -> Vec<TEntry<'static>> {
        vec![
            TEntry::Dir("./"),
            TEntry::Dir("./bin/"),
            TEntry::File("./bin/busybox", b"\x7fELF busybox"),
            TEntry::Hardlink("./bin/sh", "./bin/busybox"),
            TEntry::Symlink("./bin/ash", "busybox"),
            TEntry::Dir("./lib/"),
            TEntry::Dir("./lib/x86_64-linux-gnu/"),
            TEntry::File("./lib/x86_64-linux-gnu/libc.so.6", b"libc"),
            TEntry::Symlink("./lib64", "usr/lib64"),
            TEntry::Dir("./usr/"),
            TEntry::Dir("./usr/share/"),
            TEntry::File("./usr/share/a-rather-long-directory-name/and-an-even-longer-file-name-that-pushes-the-path-past-one-hundred-bytes.txt", b"long"),
            TEntry::Symlink("./usr/share/link-with-long-target", "../../usr/share/a-rather-long-directory-name/and-an-even-longer-file-name-that-pushes-the-path-past-one-hundred-bytes.txt"),
        ]
    }

    fn layer(debs: &[Vec<u8>]) -> (Vec<u8>, LayerDigest, Vec<String>) {
        let mut w = LayerWriter::new(Vec::new(), merged());
        for (i, deb) in debs.iter().enumerate() {
            let name = format!("pkg{i}.deb");
            let data = data_tar(io::Cursor::new(deb.clone()), &name).unwrap();
            w.add_data_tar(data, &name).unwrap();
        }
        let dups = w.duplicates().to_vec();
        let (out, d) = w.finish().unwrap();
        (out, d, dups)
    }

    #[test]
    fn usr_merge_rewrites_paths_and_hard_links() {
        let deb = make_deb("Package: bb\n", &sample(), Comp::Xz);
        let (out, digest, _) = layer(&[deb]);
        let got = list(&out);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        let long = "usr/share/a-rather-long-directory-name/and-an-even-longer-file-name-that-pushes-the-path-past-one-hundred-bytes.txt";
        assert_eq!(
            names,
            [
                "usr/bin/busybox",
                "usr/bin/sh",
                "usr/bin/ash",
                "usr/lib/x86_64-linux-gnu",
                "usr/lib/x86_64-linux-gnu/libc.so.6",
                "usr",
                "usr/share",
                long,
                "usr/share/link-with-long-target",
            ]
        );
        assert_eq!(got[1].1, EntryType::Link);
        assert_eq!(got[1].2.as_deref(), Some("usr/bin/busybox"));
        assert_eq!(got[2].1, EntryType::Symlink);
        assert_eq!(got[2].2.as_deref(), Some("busybox"), "symlink targets are untouched");
        assert!(got[8].2.as_deref().unwrap().starts_with("../../usr/share/a-rather"));
        assert_eq!(got[7].3, b"long");
        assert_eq!(digest.size, out.len() as u64);
        assert_eq!(digest.diff_id, format!("sha256:{}", sha256_hex(&out)));
    }

    #[test]
    fn headers_are_normalised() {
        let deb = make_deb("Package: bb\n", &sample(), Comp::Gz);
        let (out, _, _) = layer(&[deb]);
        let mut a = tar::Archive::new(out.as_slice());
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert!(h.as_gnu().is_some());
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert_eq!(h.mtime().unwrap(), 1_700_000_000, "mtime kept from the deb");
            let gnu = h.as_gnu().unwrap();
            assert!(gnu.atime.iter().chain(&gnu.ctime).all(|&b| b == 0), "no atime/ctime");
        }
    }

    #[test]
    fn deterministic_across_runs_and_compressions() {
        let a = layer(&[make_deb("Package: bb\n", &sample(), Comp::Xz)]);
        let b = layer(&[make_deb("Package: bb\n", &sample(), Comp::Zst)]);
        let c = layer(&[make_deb("Package: bb\n", &sample(), Comp::None)]);
        assert_eq!(a.1, b.1);
        assert_eq!(a.1, c.1);
        assert_eq!(a.0, b.0);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let one = make_deb("Package: one\n", &[TEntry::Dir("./usr/"), TEntry::File("./usr/x", b"first")], Comp::Xz);
        // ./lib/y and ./usr/lib/y alias each other once /usr is merged.
        let two = make_deb(
            "Package: two\n",
            &[
                TEntry::Dir("./usr/"),
                TEntry::File("./usr/x", b"second"),
                TEntry::File("./lib/y", b"y1"),
                TEntry::File("./usr/lib/y", b"y2"),
            ],
            Comp::Xz,
        );
        let (out, _, dups) = layer(&[one, two]);
        let got = list(&out);
        let names: Vec<_> = got.iter().map(|e| (e.0.as_str(), e.3.as_slice())).collect();
        assert_eq!(names, [("usr", &b""[..]), ("usr/x", b"first"), ("usr/lib/y", b"y1")]);
        assert_eq!(dups, ["usr/x (pkg1.deb)", "usr/lib/y (pkg1.deb)"]);
    }

    #[test]
    fn bad_paths_are_rejected() {
        for bad in ["./../etc/passwd", "./usr/../../x", "/etc/shadow"] {
            let tar = make_tar(&[TEntry::File(bad, b"x")]);
            let mut w = LayerWriter::new(Vec::new(), merged());
            let e = w.add_data_tar(tar.as_slice(), "evil.deb").unwrap_err();
            assert!(matches!(e, LayerError::UnsafePath { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("evil.deb"));
        }
        let tar = make_tar(&[TEntry::File("./x", b"x"), TEntry::Hardlink("./y", "../etc/passwd")]);
        let mut w = LayerWriter::new(Vec::new(), merged());
        let e = w.add_data_tar(tar.as_slice(), "evil.deb").unwrap_err();
        assert!(matches!(e, LayerError::UnsafePath { .. }), "{e}");
    }

    #[test]
    fn devices_and_fifos_kept() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty) in
            [("./dev/null", EntryType::Char), ("./dev/sda", EntryType::Block), ("./run/fifo", EntryType::Fifo)]
        {
            let mut h = Header::new_gnu();
            h.set_entry_type(ty);
            h.set_mode(0o666);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_device_major(8).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, name, io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut w = LayerWriter::new(Vec::new(), merged());
        w.add_data_tar(tar.as_slice(), "dev.deb").unwrap();
        let (out, _) = w.finish().unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let kinds: Vec<_> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let dev =
                    (h.entry_type() != EntryType::Fifo).then(|| (h.device_major().unwrap(), h.device_minor().unwrap()));
                (h.entry_type(), dev)
            })
            .collect();
        assert_eq!(kinds[0], (EntryType::Char, Some((Some(8), Some(3)))));
        assert_eq!(kinds[1], (EntryType::Block, Some((Some(8), Some(3)))));
        assert_eq!(kinds[2].0, EntryType::Fifo);
    }

    #[test]
    fn synthetic_entries() {
        let mut w = LayerWriter::new(Vec::new(), merged());
        w.add_symlink("bin", "usr/bin").unwrap();
        w.add_symlink("/lib", "usr/lib").unwrap();
        w.add_dir("/etc", 0o755, 0, 0).unwrap();
        w.add_file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0).unwrap();
        w.add_file("bin/hello", b"#!/bin/sh\n", 0o755, 0, 0).unwrap();
        w.add_dir("etc", 0o700, 0, 0).unwrap(); // already there: skipped
        assert!(w.add_file("../x", b"", 0o644, 0, 0).is_err());
        let (out, d1) = w.finish().unwrap();
        let got = list(&out);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "lib", "etc", "etc/passwd", "usr/bin/hello"]);
        assert_eq!(got[0].2.as_deref(), Some("usr/bin"));
        let mut a = tar::Archive::new(out.as_slice());
        for e in a.entries().unwrap() {
            assert_eq!(e.unwrap().header().mtime().unwrap(), 0);
        }
        // Same calls, same bytes.
        let mut w = LayerWriter::new(Vec::new(), merged());
        w.add_symlink("bin", "usr/bin").unwrap();
        w.add_symlink("/lib", "usr/lib").unwrap();
        w.add_dir("/etc", 0o755, 0, 0).unwrap();
        w.add_file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0).unwrap();
        w.add_file("bin/hello", b"#!/bin/sh\n", 0o755, 0, 0).unwrap();
        assert_eq!(w.finish().unwrap().1, d1);
    }

    #[test]
    fn empty_layer_is_two_zero_blocks() {
        let (out, d) = LayerWriter::new(Vec::new(), FsRules::default()).finish().unwrap();
        assert_eq!(out, vec![0u8; 1024]);
        assert_eq!(d.size, 1024);
    }

    /// Throughput on real packages, not run by default:
    /// `CKMS_BENCH_DEBS="/tmp/debs/cpp-12_*.deb /tmp/debs/gcc-12_*.deb" cargo test --release --lib layer_throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn layer_throughput() {
        let debs = std::env::var("CKMS_BENCH_DEBS").expect("CKMS_BENCH_DEBS: space-separated .deb paths");
        let out = tempfile::tempfile().unwrap();
        let start = std::time::Instant::now();
        let mut w = LayerWriter::new(out, merged());
        let mut deb_bytes = 0;
        let threaded = std::env::var_os("CKMS_BENCH_THREADED").is_some();
        let open = |path: &str| -> Box<dyn Read> {
            let f = std::fs::File::open(path).unwrap();
            if threaded {
                data_tar_threaded(f, path, 64 << 20).unwrap()
            } else {
                data_tar(f, path).unwrap()
            }
        };
        let paths: Vec<&str> = debs.split_whitespace().collect();
        // Threaded: the next package is opened (and starts decompressing) before this one is
        // consumed, as a caller assembling a layer would do.
        let mut next = paths.first().map(|p| open(p));
        for (i, path) in paths.iter().enumerate() {
            deb_bytes += std::fs::metadata(path).unwrap().len();
            let data = next.take().unwrap();
            next = paths.get(i + 1).map(|p| open(p));
            w.add_data_tar(data, path).unwrap();
        }
        let (_, d) = w.finish().unwrap();
        let secs = start.elapsed().as_secs_f64();
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "layer (threaded: {threaded}): {:.1} MB of .deb -> {:.1} MB tar in {secs:.2} s = {:.0} MB/s of layer output ({:.0} MB/s of .deb input), {}",
            mb(deb_bytes),
            mb(d.size),
            mb(d.size) / secs,
            mb(deb_bytes) / secs,
            d.diff_id
        );
    }
}
