//! Reading `.deb` packages: an `ar` archive holding `debian-binary`, `control.tar.*` and
//! `data.tar.*`. Only what image assembly needs: the data tar as a stream, and the control
//! fields for checks.
//!
//! The `ar` layer is parsed here rather than with the `ar` crate because [`data_tar`] must hand
//! back an owning, `'static` reader over one member, and the `ar` crate's entries borrow their
//! archive. A .deb only ever uses the common `ar` format with short member names, so the parser
//! stays small.

use std::io::{self, BufRead, BufReader, Read};

use thiserror::Error;

use crate::diagnose::{code, Diagnose};

/// Read buffer for the compressed member; large reads keep syscalls and decoder calls rare.
const READ_BUF: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum DebError {
    #[error("{origin}: reading the package failed: {source}")]
    Io { origin: String, source: io::Error },
    #[error("{origin}: not a .deb package ({what})")]
    NotDeb { origin: String, what: String },
    #[error("{origin}: the package has no {member} member")]
    MissingMember { origin: String, member: &'static str },
    #[error("{origin}: member {member} uses a compression ckms does not read")]
    UnsupportedCompression { origin: String, member: String },
    #[error("{origin}: member {member} is damaged: {source}")]
    BadMember { origin: String, member: String, source: io::Error },
}

impl Diagnose for DebError {
    fn exit_code(&self) -> i32 {
        code::IO
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            DebError::Io { .. } => "check that the package file is readable and the disk is healthy".into(),
            DebError::UnsupportedCompression { .. } => {
                "ckms reads data.tar, data.tar.gz, data.tar.xz and data.tar.zst; this package needs another format".into()
            }
            _ => "the cached package is probably damaged: remove it from the cache (or run with a fresh --cache-dir) so that it is downloaded again".into(),
        })
    }
}

/// One `ar` member header: its name (without GNU's trailing `/`) and size.
struct Member {
    name: String,
    size: u64,
}

/// Reads the `!<arch>\n` magic.
fn read_magic<R: Read>(deb: &mut R, origin: &str) -> Result<(), DebError> {
    let mut magic = [0u8; 8];
    deb.read_exact(&mut magic).map_err(|e| eof_as_not_deb(e, origin, "shorter than an ar header"))?;
    if &magic != b"!<arch>\n" {
        return Err(DebError::NotDeb { origin: origin.into(), what: "no ar archive magic".into() });
    }
    Ok(())
}

fn eof_as_not_deb(e: io::Error, origin: &str, what: &str) -> DebError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DebError::NotDeb { origin: origin.into(), what: what.into() }
    } else {
        DebError::Io { origin: origin.into(), source: e }
    }
}

/// Reads the next member header, or `None` at the end of the archive.
fn next_member<R: Read>(deb: &mut R, origin: &str) -> Result<Option<Member>, DebError> {
    let mut hdr = [0u8; 60];
    // A clean end of file may only fall on a header boundary.
    let mut got = 0;
    while got < hdr.len() {
        match deb.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(DebError::NotDeb { origin: origin.into(), what: "truncated ar member header".into() }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DebError::Io { origin: origin.into(), source: e }),
        }
    }
    if &hdr[58..60] != b"`\n" {
        return Err(DebError::NotDeb { origin: origin.into(), what: "bad ar member header".into() });
    }
    let name = String::from_utf8_lossy(&hdr[..16]);
    let name = name.trim_end_matches(' ').trim_end_matches('/').to_string();
    let size = std::str::from_utf8(&hdr[48..58])
        .ok()
        .and_then(|s| s.trim_end().parse::<u64>().ok())
        .ok_or_else(|| DebError::NotDeb { origin: origin.into(), what: format!("bad size in ar header of {name}") })?;
    Ok(Some(Member { name, size }))
}

/// Skips a member's data and its padding to an even offset.
fn skip_member<R: Read>(deb: &mut R, m: &Member, origin: &str) -> Result<(), DebError> {
    let want = m.size + (m.size & 1);
    let got = io::copy(&mut deb.take(want), &mut io::sink())
        .map_err(|e| DebError::Io { origin: origin.into(), source: e })?;
    // The padding byte may be missing after the last member; anything else is truncation.
    if got < m.size {
        return Err(DebError::NotDeb { origin: origin.into(), what: format!("member {} is truncated", m.name) });
    }
    Ok(())
}

/// Finds the first member named `<prefix>` or `<prefix>.<ext>` and returns it, leaving `deb`
/// positioned at its data.
fn find_member<R: Read>(deb: &mut R, origin: &str, prefix: &'static str) -> Result<Member, DebError> {
    read_magic(deb, origin)?;
    while let Some(m) = next_member(deb, origin)? {
        if m.name == prefix || m.name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')) {
            return Ok(m);
        }
        skip_member(deb, &m, origin)?;
    }
    Err(DebError::MissingMember { origin: origin.into(), member: prefix })
}

/// A member's decompressor, as an enum rather than a boxed trait object so that it is `Send`
/// exactly when the input is, which [`data_tar_threaded`] needs.
enum Decoder<R: Read> {
    Plain(BufReader<R>),
    Gz(Box<flate2::bufread::GzDecoder<BufReader<R>>>),
    Xz(Box<liblzma::bufread::XzDecoder<BufReader<R>>>),
    Zst(Box<ruzstd::decoding::StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gz(r) => r.read(buf),
            Decoder::Xz(r) => r.read(buf),
            Decoder::Zst(r) => r.read(buf),
        }
    }
}

/// Wraps a member's bytes in the decompressor its name calls for.
fn decompress<R: Read>(raw: R, member: &str, origin: &str) -> Result<Decoder<R>, DebError> {
    let buffered = BufReader::with_capacity(READ_BUF, raw);
    let ext = member.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    Ok(match ext {
        "tar" => Decoder::Plain(buffered),
        "gz" => Decoder::Gz(Box::new(flate2::bufread::GzDecoder::new(buffered))),
        // Multi-stream: xz allows concatenated streams and some tools write them.
        "xz" => Decoder::Xz(Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered))),
        "zst" => {
            let dec = ruzstd::decoding::StreamingDecoder::new(buffered).map_err(|e| DebError::BadMember {
                origin: origin.into(),
                member: member.into(),
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            })?;
            Decoder::Zst(Box::new(dec))
        }
        _ => return Err(DebError::UnsupportedCompression { origin: origin.into(), member: member.into() }),
    })
}

/// The uncompressed data.tar stream of a .deb (members data.tar, data.tar.gz, data.tar.xz,
/// data.tar.zst). Decompression errors surface as `io::Error`s from the returned reader;
/// callers name `origin` when they report them.
pub fn data_tar<R: Read + 'static>(deb: R, origin: &str) -> Result<Box<dyn Read>, DebError> {
    let mut deb = deb;
    let m = find_member(&mut deb, origin, "data.tar")?;
    Ok(Box::new(decompress(deb.take(m.size), &m.name, origin)?))
}

/// The contents of the first regular file of a package's data whose path ends with `suffix`
/// (`bin/busybox` fits `./usr/bin/busybox`); None when the package has none.
pub fn read_data_file<R: Read + 'static>(deb: R, origin: &str, suffix: &str) -> Result<Option<Vec<u8>>, DebError> {
    let io = |source| DebError::Io { origin: origin.into(), source };
    let mut archive = tar::Archive::new(data_tar(deb, origin)?);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if entry.header().entry_type().is_file() && entry.path().is_ok_and(|p| p.ends_with(suffix)) {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).map_err(io)?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

/// Chunk size for [`data_tar_threaded`]: big enough that channel traffic is negligible.
const CHUNK: usize = 1024 * 1024;

/// Like [`data_tar`], but decompression runs on its own thread, up to `ahead` bytes ahead of
/// the reader. Decompression (xz above all) is most of the cost of building a layer, so this
/// lets it overlap with tar rewriting, hashing and writing; opening the next package this way
/// before the current one is consumed also decompresses several packages at once.
/// Errors (including the decompressor's) arrive through the reader, in order.
pub fn data_tar_threaded<R: Read + Send + 'static>(
    deb: R,
    origin: &str,
    ahead: usize,
) -> Result<Box<dyn Read + Send>, DebError> {
    let mut deb = deb;
    let m = find_member(&mut deb, origin, "data.tar")?;
    let mut dec = decompress(deb.take(m.size), &m.name, origin)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>((ahead / CHUNK).max(1));
    // Used chunks come back for reuse, so a long stream does not allocate per chunk.
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::Builder::new()
        .name("ckms-deb-decode".into())
        .spawn(move || loop {
            let mut buf = recycle_rx.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            let res = loop {
                match dec.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            let done = filled < CHUNK || res.is_err();
            // A send fails only when the reader was dropped: nobody wants the rest.
            if filled > 0 && tx.send(Ok(buf)).is_err() {
                return;
            }
            match res {
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                // An explicit end marker, so that a decoder thread that died (panicked)
                // reads as an error rather than as a clean, truncated end.
                Ok(()) if done => {
                    let _ = tx.send(Ok(Vec::new()));
                    return;
                }
                Ok(()) => {}
            }
        })
        .map_err(|e| DebError::Io { origin: origin.into(), source: e })?;
    Ok(Box::new(ChunkReader { rx, recycle: recycle_tx, cur: Vec::new(), pos: 0, eof: false }))
}

/// The reading end of [`data_tar_threaded`].
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            if self.eof {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(Ok(chunk)) => {
                    let old = std::mem::replace(&mut self.cur, chunk);
                    let _ = self.recycle.send(old); // the decoder may have finished: fine.
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the decompression thread stopped unexpectedly")),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The control file fields (Package, Version, ...) from control.tar.*, in file order.
/// Continuation lines are joined to their field with `\n`, as in the file.
pub fn control_fields<R: Read>(deb: R, origin: &str) -> Result<Vec<(String, String)>, DebError> {
    let mut deb = deb;
    let m = find_member(&mut deb, origin, "control.tar")?;
    // control.tar.* is small (kilobytes), so reading it whole is fine and gives the
    // decompressor the 'static input it wants.
    let mut raw = Vec::with_capacity(usize::try_from(m.size).unwrap_or(0).min(1 << 20));
    deb.take(m.size).read_to_end(&mut raw).map_err(|e| DebError::Io { origin: origin.into(), source: e })?;
    let bad = |source: io::Error| DebError::BadMember { origin: origin.into(), member: m.name.clone(), source };
    let tar = decompress(io::Cursor::new(raw), &m.name, origin)?;
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path_bytes();
        let path = path.strip_prefix(b"./").unwrap_or(&path);
        if path == b"control" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(bad)?;
            return Ok(parse_fields(&text));
        }
    }
    Err(DebError::MissingMember { origin: origin.into(), member: "control.tar/control" })
}

/// Parses one deb822 paragraph.
pub(crate) fn parse_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in io::Cursor::new(text).lines().map_while(Result::ok) {
        if line.trim().is_empty() {
            // One paragraph only; anything after a blank line is not part of it.
            if !fields.is_empty() {
                break;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim_start());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    fields
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::tar_entries;

    /// Compression of a synthetic member.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Comp {
        None,
        Gz,
        Xz,
        Zst,
    }

    impl Comp {
        fn ext(self) -> &'static str {
            match self {
                Comp::None => "",
                Comp::Gz => ".gz",
                Comp::Xz => ".xz",
                Comp::Zst => ".zst",
            }
        }
        fn compress(self, data: &[u8]) -> Vec<u8> {
            use std::io::Write;
            match self {
                Comp::None => data.to_vec(),
                Comp::Gz => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(data).unwrap();
                    e.finish().unwrap()
                }
                Comp::Xz => {
                    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                    e.write_all(data).unwrap();
                    e.finish().unwrap()
                }
                Comp::Zst => ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
            }
        }
    }

    /// An entry of a synthetic tar: (path, kind, contents-or-link-target).
    pub(crate) enum TEntry<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    /// Appends with the name stored verbatim (the tar crate would drop a leading "./"), as
    /// dpkg-deb writes it; long names go through the crate's GNU long-name support.
    fn append_raw(b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, path: &str, link: Option<&str>, data: &[u8]) {
        if path.len() < 100 && link.is_none_or(|l| l.len() < 100) {
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(h, data).unwrap();
        } else if let Some(l) = link {
            b.append_link(h, path, l).unwrap();
        } else {
            b.append_data(h, path, data).unwrap();
        }
    }

    /// Builds a tar the way dpkg-deb does: "./"-prefixed paths, root-owned, fixed mtime.
    pub(crate) fn make_tar(entries: &[TEntry]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_username("root").unwrap();
            h.set_groupname("root").unwrap();
            match e {
                TEntry::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    append_raw(&mut b, &mut h, p, None, b"");
                }
                TEntry::File(p, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    append_raw(&mut b, &mut h, p, None, data);
                }
                TEntry::Symlink(p, t) | TEntry::Hardlink(p, t) => {
                    let ty =
                        if matches!(e, TEntry::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                    h.set_entry_type(ty);
                    h.set_mode(0o777);
                    h.set_size(0);
                    append_raw(&mut b, &mut h, p, Some(t), b"");
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn ar_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        let hdr = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len());
        assert_eq!(hdr.len(), 60);
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }

    /// A complete .deb: debian-binary, control.tar.xz with `control`, data.tar with `comp`.
    pub(crate) fn make_deb(control: &str, data: &[TEntry], comp: Comp) -> Vec<u8> {
        let control_tar = make_tar(&[TEntry::Dir("./"), TEntry::File("./control", control.as_bytes())]);
        let mut out = b"!<arch>\n".to_vec();
        ar_member(&mut out, "debian-binary", b"2.0\n");
        ar_member(&mut out, "control.tar.xz", &Comp::Xz.compress(&control_tar));
        ar_member(&mut out, &format!("data.tar{}", comp.ext()), &comp.compress(&make_tar(data)));
        out
    }

    const CONTROL: &str =
        "Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nDescription: greets\n a longer text\n .\n more\n";

    fn sample() -> Vec<TEntry<'static>> {
        vec![TEntry::Dir("./"), TEntry::Dir("./usr/"), TEntry::File("./usr/hello", b"hi there\n")]
    }

    fn data_paths(deb: Vec<u8>) -> Vec<(String, Vec<u8>)> {
        tar_entries(data_tar(io::Cursor::new(deb), "test.deb").unwrap())
    }

    #[test]
    fn data_tar_every_compression() {
        for comp in [Comp::None, Comp::Gz, Comp::Xz, Comp::Zst] {
            let got = data_paths(make_deb(CONTROL, &sample(), comp));
            let names: Vec<_> = got.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(names, ["./", "./usr/", "./usr/hello"], "{comp:?}");
            assert_eq!(got[2].1, b"hi there\n");
        }
    }

    #[test]
    fn threaded_matches_plain() {
        for comp in [Comp::None, Comp::Gz, Comp::Xz, Comp::Zst] {
            // Big enough for several chunks, with an incompressible-ish pattern.
            let big: Vec<u8> = (0..3 * CHUNK as u32 + 777).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let entries = [TEntry::Dir("./"), TEntry::File("./big", &big), TEntry::File("./small", b"x")];
            let deb = make_deb(CONTROL, &entries, comp);
            let mut plain = Vec::new();
            data_tar(io::Cursor::new(deb.clone()), "t.deb").unwrap().read_to_end(&mut plain).unwrap();
            let mut threaded = Vec::new();
            data_tar_threaded(io::Cursor::new(deb), "t.deb", 2 * CHUNK).unwrap().read_to_end(&mut threaded).unwrap();
            assert!(plain == threaded, "{comp:?}");
        }
    }

    #[test]
    fn threaded_reports_errors() {
        let mut deb = make_deb(CONTROL, &sample(), Comp::Xz);
        let n = deb.len();
        deb[n - 30] ^= 0xff; // corrupt the xz stream's tail
        let mut out = Vec::new();
        assert!(data_tar_threaded(io::Cursor::new(deb), "t.deb", CHUNK).unwrap().read_to_end(&mut out).is_err());
    }

    #[test]
    fn control_fields_parsed_in_order() {
        let f = control_fields(io::Cursor::new(make_deb(CONTROL, &sample(), Comp::Gz)), "t.deb").unwrap();
        assert_eq!(f[0], ("Package".into(), "hello".into()));
        assert_eq!(f[1], ("Version".into(), "1.0-1".into()));
        assert_eq!(f[3], ("Description".into(), "greets\na longer text\n.\nmore".into()));
    }

    #[test]
    fn not_a_deb() {
        let e = data_tar(io::Cursor::new(b"hello world, definitely not ar".to_vec()), "x.deb").err().unwrap();
        assert!(matches!(e, DebError::NotDeb { .. }), "{e}");
        assert!(e.to_string().contains("x.deb"));
        let e = data_tar(io::Cursor::new(Vec::new()), "empty.deb").err().unwrap();
        assert!(matches!(e, DebError::NotDeb { .. }), "{e}");
    }

    #[test]
    fn missing_and_unsupported_members() {
        let mut deb = b"!<arch>\n".to_vec();
        ar_member(&mut deb, "debian-binary", b"2.0\n");
        let e = data_tar(io::Cursor::new(deb.clone()), "a.deb").err().unwrap();
        assert!(matches!(e, DebError::MissingMember { member: "data.tar", .. }), "{e}");
        ar_member(&mut deb, "data.tar.bz2", b"BZh");
        let e = data_tar(io::Cursor::new(deb), "a.deb").err().unwrap();
        assert!(matches!(e, DebError::UnsupportedCompression { .. }), "{e}");
        assert!(e.to_string().contains("data.tar.bz2"));
    }

    #[test]
    fn truncated_data_member_is_an_error() {
        let mut deb = make_deb(CONTROL, &sample(), Comp::Xz);
        deb.truncate(deb.len() - 40);
        let r = data_tar(io::Cursor::new(deb), "t.deb").unwrap();
        let mut a = tar::Archive::new(r);
        let res: Result<Vec<_>, _> = a.entries().unwrap().collect();
        let failed = match res {
            Err(_) => true,
            Ok(entries) => entries.into_iter().any(|mut e| io::copy(&mut e, &mut io::sink()).is_err()),
        };
        assert!(failed);
    }
}
