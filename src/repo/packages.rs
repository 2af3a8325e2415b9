//! Packages files (deb822 paragraphs) parsed into a compact form.
//!
//! A suite's Packages file is 50-90 MB of text for some 65,000 packages, of which ckms needs a
//! tenth: the fields below. Each package becomes one [`Entry`] (fixed size: digest, size, and
//! where its fields lie) and its fields are appended, in a fixed order, to the text of its
//! [`Part`]; relation fields are kept as text (see [`super::relation`]) and only checked here.
//! Per-package `String`s and parsed relations cost five times as much.
//!
//! The file is read in chunks that end at a paragraph boundary, hashed as it is read, and the
//! chunks are parsed on several threads, one [`Part`] each: the whole text is never held.

use std::borrow::Cow;
use std::io::Read;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::relation;
use super::RepoError;

/// The fields kept, in the order they are laid out in a part's text.
#[derive(Clone, Copy)]
pub(crate) enum Field {
    Name,
    Version,
    Arch,
    Filename,
    Source,
    PreDepends,
    Depends,
    Provides,
}
const FIELDS: usize = 8;

/// One package version: fixed-size, its fields in its part's text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub sha256: [u8; 32],
    pub size: u64,
    /// Where the fields start in the part's text; `ends` are relative to it.
    pub start: u32,
    pub ends: [u32; FIELDS],
    /// The part whose text holds the fields, within an [`super::Index`].
    pub part: u32,
    pub essential: bool,
    /// `Multi-Arch: same`: co-installable with its other architectures' builds.
    pub multi_arch_same: bool,
    pub has_source: bool,
}

impl Entry {
    /// The field's text, from the text of this entry's part.
    pub fn field<'t>(&self, text: &'t str, f: Field) -> &'t str {
        let i = f as usize;
        let from = if i == 0 { 0 } else { self.ends[i - 1] };
        &text[(self.start + from) as usize..(self.start + self.ends[i]) as usize]
    }
}

/// The packages of one chunk of a Packages file.
#[derive(Debug, Default)]
pub(crate) struct Part {
    pub text: String,
    pub entries: Vec<Entry>,
}

/// Bytes read (and parsed by one thread) at a time, cut back to the last paragraph end.
const CHUNK: usize = 4 << 20;

/// What [`parse_stream`] read: the SHA-256 (hex) of everything read, and the
/// packages, or the first error in the file. Nothing parsed may be used before the caller has
/// checked the digest; an error in a file whose digest is wrong says only that it is corrupt.
pub(crate) struct Streamed {
    pub sha256: String,
    pub parts: Result<Vec<Part>, RepoError>,
}

/// Reads a Packages file from `reader` to its end, parsing it on up to `threads` threads.
/// Read errors (I/O, decompression) end it at once.
pub(crate) fn parse_stream(
    reader: impl Read + Send,
    mirror: &str,
    suite: &str,
    threads: usize,
) -> std::io::Result<Streamed> {
    let feed = Mutex::new(Feed { reader, carry: Vec::new(), hasher: Sha256::new(), line: 1, seq: 0, eof: false });
    // (chunk number, its part or error), in completion order.
    let done: Mutex<Vec<(usize, Result<Part, RepoError>)>> = Mutex::new(Vec::new());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let worker = || -> std::io::Result<()> {
        loop {
            let next = feed.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((seq, first_line, bytes)) = next? else { return Ok(()) };
            // After an error, the rest is still read (and hashed) but not parsed.
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let part = parse_chunk(&String::from_utf8_lossy(&bytes), first_line, mirror, suite);
            drop(bytes);
            if part.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            done.lock().unwrap_or_else(PoisonError::into_inner).push((seq, part));
        }
    };
    let joined: Vec<std::thread::Result<std::io::Result<()>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(worker)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut panicked = false;
    for j in joined {
        match j {
            Ok(r) => r?,
            Err(_) => panicked = true,
        }
    }
    let feed = feed.into_inner().unwrap_or_else(PoisonError::into_inner);
    let sha256 = hex::encode(feed.hasher.finalize());
    let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
    done.sort_by_key(|(seq, _)| *seq);
    let parts = if panicked {
        Err(RepoError::Malformed { url: where_(mirror, suite), detail: "parser thread panicked".into() })
    } else {
        done.into_iter().map(|(_, p)| p).collect()
    };
    Ok(Streamed { sha256, parts })
}

/// The reading side, shared by the parser threads (one reads at a time).
struct Feed<R> {
    reader: R,
    /// The start of a paragraph the previous chunk cut off.
    carry: Vec<u8>,
    hasher: Sha256,
    /// Line number of the next chunk's first line.
    line: usize,
    seq: usize,
    eof: bool,
}

impl<R: Read> Feed<R> {
    /// The next chunk: (number, first line, bytes), ending at a paragraph end or the file's end.
    fn next(&mut self) -> std::io::Result<Option<(usize, usize, Vec<u8>)>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.carry);
        let mut scanned = 0;
        let cut = loop {
            if self.eof {
                break buf.len();
            }
            let old = buf.len();
            buf.resize(old + CHUNK, 0);
            let mut got = old;
            while got < buf.len() {
                match self.reader.read(&mut buf[got..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // The other threads stop too.
                        self.eof = true;
                        return Err(e);
                    }
                }
            }
            buf.truncate(got);
            self.hasher.update(&buf[old..]);
            // A paragraph ends at a blank line; a chunk without one is read further.
            if let Some(i) = memchr::memmem::rfind(&buf[scanned..], b"\n\n") {
                if !self.eof {
                    break scanned + i + 2;
                }
            }
            scanned = buf.len().saturating_sub(1);
        };
        self.carry = buf[cut..].to_vec();
        buf.truncate(cut);
        let first_line = self.line;
        self.line += memchr::memchr_iter(b'\n', &buf).count();
        self.seq += 1;
        Ok(Some((self.seq, first_line, buf)))
    }
}

fn where_(mirror: &str, suite: &str) -> String {
    format!("{}/dists/{suite} Packages", mirror.trim_end_matches('/'))
}

/// Which multi-line-capable field the previous line belonged to.
#[derive(Clone, Copy, PartialEq)]
enum Cur {
    Other,
    Depends,
    PreDepends,
    Provides,
}

#[derive(Default)]
struct Para<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    arch: Option<&'a str>,
    // Borrowed from the text unless a continuation line had to be joined.
    depends: Option<Cow<'a, str>>,
    pre_depends: Option<Cow<'a, str>>,
    provides: Option<Cow<'a, str>>,
    filename: Option<&'a str>,
    size: Option<&'a str>,
    sha256: Option<&'a str>,
    source: Option<&'a str>,
    essential: bool,
    multi_arch_same: bool,
    line: usize,
}

/// Parses paragraphs from `text`, whose first line is line `first_line` of the file.
pub(crate) fn parse_chunk(text: &str, first_line: usize, mirror: &str, suite: &str) -> Result<Part, RepoError> {
    // About a quarter of a Packages file is kept; untouched capacity costs no memory.
    let mut part = Part { text: String::with_capacity(text.len() / 3), entries: Vec::with_capacity(text.len() / 700) };
    let mut para = Para::default();
    let mut cur = Cur::Other;
    let mut started = false;
    let mut line_no = first_line;
    let bytes = text.as_bytes();
    let mut pos = 0;
    while pos <= bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |o| pos + o);
        let mut line = &text[pos..end];
        if line.ends_with('\r') {
            line = &line[..line.len() - 1];
        }
        pos = end + 1;
        // Blank (or whitespace-only) lines end a paragraph; checked cheaply, per line.
        let blank = match line.as_bytes().first() {
            None => true,
            Some(b' ' | b'\t') => line.trim().is_empty(),
            Some(_) => false,
        };
        if blank {
            if started {
                finish(std::mem::take(&mut para), &mut part, mirror, suite)?;
                started = false;
            }
            cur = Cur::Other;
            line_no += 1;
            continue;
        }
        if !started {
            started = true;
            para.line = line_no;
        }
        line_no += 1;
        let first = line.as_bytes()[0];
        if first == b' ' || first == b'\t' {
            // Continuation line: only relation fields are worth joining.
            let target = match cur {
                Cur::Other => continue,
                Cur::Depends => &mut para.depends,
                Cur::PreDepends => &mut para.pre_depends,
                Cur::Provides => &mut para.provides,
            };
            if let Some(s) = target {
                let s = s.to_mut();
                s.push(' ');
                s.push_str(line.trim());
            }
            continue;
        }
        if first == b'#' {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line.as_bytes()) else {
            return Err(RepoError::Malformed {
                url: where_(mirror, suite),
                detail: format!("line {}: not a field: {line:?}", line_no - 1),
            });
        };
        let (field, value) = (&line[..colon], line[colon + 1..].trim());
        cur = Cur::Other;
        // Dispatch on length and first letter: most lines are fields ckms skips, and this
        // spares a string comparison for nearly all of them.
        match (field.len(), field.as_bytes().first().copied().unwrap_or(0)) {
            (7, b'P') if field == "Package" => para.name = Some(value),
            (7, b'V') if field == "Version" => para.version = Some(value),
            (12, b'A') if field == "Architecture" => para.arch = Some(value),
            (7, b'D') if field == "Depends" => {
                para.depends = Some(Cow::Borrowed(value));
                cur = Cur::Depends;
            }
            (11, b'P') if field == "Pre-Depends" => {
                para.pre_depends = Some(Cow::Borrowed(value));
                cur = Cur::PreDepends;
            }
            (8, b'P') if field == "Provides" => {
                para.provides = Some(Cow::Borrowed(value));
                cur = Cur::Provides;
            }
            (8, b'F') if field == "Filename" => para.filename = Some(value),
            (4, b'S') if field == "Size" => para.size = Some(value),
            (6, b'S') if field == "SHA256" => para.sha256 = Some(value),
            (6, b'S') if field == "Source" => para.source = Some(value),
            (9, b'E') if field == "Essential" => para.essential = value.eq_ignore_ascii_case("yes"),
            (10, b'M') if field == "Multi-Arch" => para.multi_arch_same = value == "same",
            _ => {}
        }
    }
    if started {
        finish(para, &mut part, mirror, suite)?;
    }
    part.text.shrink_to_fit();
    part.entries.shrink_to_fit();
    Ok(part)
}

/// Checks a paragraph and appends it to `part`.
fn finish<'a>(p: Para<'a>, part: &mut Part, mirror: &str, suite: &str) -> Result<(), RepoError> {
    let bad = |detail: String| RepoError::Malformed {
        url: where_(mirror, suite),
        detail: format!("paragraph at line {}: {detail}", p.line),
    };
    let name = p.name.ok_or_else(|| bad("no Package field".into()))?;
    let need = |v: Option<&'a str>, f: &str| v.ok_or_else(|| bad(format!("package {name} has no {f} field")));
    let version = need(p.version, "Version")?;
    let filename = need(p.filename, "Filename")?;
    let sha256 = need(p.sha256, "SHA256")?;
    let size = need(p.size, "Size")?.parse::<u64>().map_err(|_| bad(format!("package {name}: bad Size")))?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(sha256, &mut digest).map_err(|_| bad(format!("package {name}: bad SHA256 {sha256:?}")))?;
    for (s, f) in [(&p.pre_depends, "Pre-Depends"), (&p.depends, "Depends"), (&p.provides, "Provides")] {
        if let Some(s) = s {
            relation::validate(s).map_err(|e| bad(format!("package {name}: {f}: {e}")))?;
        }
    }
    // "Source: linux (6.1.192-2)" names the source package and, when it differs, its version.
    let source = p.source.map(|s| s.split_whitespace().next().unwrap_or(s));
    let fields: [&str; FIELDS] = [
        name,
        version,
        p.arch.unwrap_or(""),
        filename,
        source.unwrap_or(""),
        p.pre_depends.as_deref().unwrap_or(""),
        p.depends.as_deref().unwrap_or(""),
        p.provides.as_deref().unwrap_or(""),
    ];
    let too_big = || bad(format!("package {name}: too large"));
    let start = u32::try_from(part.text.len()).map_err(|_| too_big())?;
    let mut ends = [0u32; FIELDS];
    for (end, f) in ends.iter_mut().zip(fields) {
        part.text.push_str(f);
        *end = u32::try_from(part.text.len() - start as usize).map_err(|_| too_big())?;
    }
    part.entries.push(Entry {
        sha256: digest,
        size,
        start,
        ends,
        part: 0,
        essential: p.essential,
        multi_arch_same: p.multi_arch_same,
        has_source: source.is_some(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sha256_hex;

    /// A reader that hands out a few bytes at a time, to cut chunks in awkward places.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn names(parts: &[Part]) -> Vec<String> {
        parts.iter().flat_map(|p| p.entries.iter().map(|e| e.field(&p.text, Field::Name).to_string())).collect()
    }

    #[test]
    fn stream_matches_one_chunk_and_hashes_everything() {
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!(
                "Package: p{i}\nVersion: 1.{i}\nArchitecture: amd64\nDepends: p{} (>= 1), libc6\nDescription: filler filler filler filler filler filler filler filler filler\nFilename: pool/p{i}.deb\nSize: {i}\nSHA256: {}\n\n",
                i + 1,
                "ab".repeat(32)
            ));
        }
        assert!(text.len() > 2 * CHUNK);
        let one = parse_chunk(&text, 1, "m", "s").unwrap();
        for threads in [1, 3] {
            let got = parse_stream(Trickle(text.as_bytes(), 100_000), "m", "s", threads).unwrap();
            assert_eq!(got.sha256, sha256_hex(text.as_bytes()));
            let parts = got.parts.unwrap();
            assert!(parts.len() > 2);
            assert_eq!(names(&parts), names(std::slice::from_ref(&one)));
        }
        let p = &one.entries[7];
        assert_eq!(p.field(&one.text, Field::Depends), "p8 (>= 1), libc6");
        assert_eq!(p.field(&one.text, Field::Source), "");
        assert_eq!((p.size, p.has_source, p.sha256[0]), (7, false, 0xab));
    }

    #[test]
    fn errors_name_the_line_in_the_file_and_the_rest_is_hashed() {
        let good = format!("Package: a\nVersion: 1\nFilename: f\nSize: 1\nSHA256: {}\n\n", "00".repeat(32));
        let mut text = good.repeat(CHUNK / good.len() + 10);
        let line = text.lines().count() + 1;
        text.push_str("Package: b\nVersion 2\n\n");
        text.push_str(&good.repeat(CHUNK / good.len()));
        let got = parse_stream(text.as_bytes(), "http://m.invalid", "s", 2).unwrap();
        assert_eq!(got.sha256, sha256_hex(text.as_bytes()));
        let err = got.parts.unwrap_err().to_string();
        assert!(err.contains(&format!("line {}: not a field", line + 1)), "{err}");
        assert!(err.contains("http://m.invalid/dists/s Packages"), "{err}");
    }

    #[test]
    fn read_errors_end_the_stream() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("xz: corrupt"))
            }
        }
        assert!(parse_stream(Broken, "m", "s", 2).is_err());
    }
}
