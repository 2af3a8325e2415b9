//! A failed build's make.log read for its first compiler or linker error: the line a person
//! would look for first (gcc's `file:line:col: error:`, ld's undefined references, modpost's
//! `ERROR:`), with the file relative to the module's build directory. make's own `*** ...`
//! lines stand in when there is no such error (a missing target, a headers tree missing).
//!
//! Depends on nothing else of the crate, so that whatever shows a failure can use it.

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

/// How much of each end of a large log is read: compilers stop at the first errors, and make
/// soon after them, so the error is near the start (a small log) or the end (a large one).
pub const WINDOW: u64 = 1 << 20;

/// Where dkms (and ckms's sandbox, which shows the build as a dkms host does) builds a module:
/// `<tree>/<module>/<version>/build/`.
const DKMS_TREE: &str = "/var/lib/dkms/";

/// The longest message kept (a template error can run for pages).
const MESSAGE_MAX: usize = 400;

/// The first error of a build, as a person would quote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstError {
    /// Relative to the module's build directory when under it; none for a program's own
    /// error (`gcc: error: unrecognized command-line option`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for FirstError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            f.write_str(file)?;
            for n in [self.line, self.column].into_iter().flatten() {
                write!(f, ":{n}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// The first error of the log `text`: a compiler's, the linker's or modpost's, else make's own.
pub fn first_error(text: &str) -> Option<FirstError> {
    text.lines().find_map(error_line).or_else(|| text.lines().find_map(make_stop))
}

/// The first error of a log held in memory, looking at most at [`WINDOW`] bytes of each end.
pub fn first_error_of(log: &[u8]) -> Option<FirstError> {
    let size = log.len() as u64;
    first_error(&excerpt(std::io::Cursor::new(log), size).ok()?)
}

/// The first error of a log file of `size` bytes, reading at most [`WINDOW`] bytes of each end.
pub fn first_error_in<R: Read + Seek>(file: R, size: u64) -> Option<FirstError> {
    first_error(&excerpt(file, size).ok()?)
}

/// The log, or only its first and last [`WINDOW`] bytes when it is larger, cut at whole lines.
pub fn excerpt<R: Read + Seek>(mut file: R, size: u64) -> std::io::Result<String> {
    let mut head = Vec::new();
    if size <= WINDOW * 2 {
        // Bounded again while reading: the file may have grown since its size was taken.
        file.take(WINDOW * 2).read_to_end(&mut head)?;
        return Ok(String::from_utf8_lossy(&head).into_owned());
    }
    (&mut file).take(WINDOW).read_to_end(&mut head)?;
    let head_end = head.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    head.truncate(head_end);
    file.seek(SeekFrom::Start(size - WINDOW))?;
    let mut tail = Vec::new();
    file.take(WINDOW).read_to_end(&mut tail)?;
    let tail_start = tail.iter().position(|b| *b == b'\n').map_or(tail.len(), |i| i + 1);
    head.extend_from_slice(&tail[tail_start..]);
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A compiler's, the linker's or modpost's error on `line`.
fn error_line(line: &str) -> Option<FirstError> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ERROR: ") {
        return Some(modpost(rest));
    }
    if let Some(found) = compiler(line) {
        return Some(found);
    }
    if let Some(found) = linker(line) {
        return Some(found);
    }
    // A Makefile's own stop: `Makefile:5: *** Kernel headers missing.  Stop.`
    let (loc, message) = line.split_once(": *** ")?;
    let found = located(loc, message)?;
    found.line.is_some().then_some(found)
}

/// gcc's and clang's `file:line[:col]: [fatal ]error: message`, or a program's own
/// `cc1: error: ...`; a warning whose text says "error:" is not one.
fn compiler(line: &str) -> Option<FirstError> {
    let (at, kind) = [": fatal error: ", ": error: "].iter().filter_map(|k| Some((line.find(k)?, k.len()))).min()?;
    let (loc, message) = (&line[..at], &line[at + kind..]);
    if loc.contains(": ") || loc.is_empty() {
        return None;
    }
    // A compiler always gives a line: without one, the program speaks of itself (`cc1`,
    // `x86_64-linux-gnu-gcc-12`).
    if !loc.contains(':') {
        let message = clean(message);
        return (!message.is_empty()).then_some(FirstError { file: None, line: None, column: None, message });
    }
    located(loc, message)
}

/// ld's `file:(.text+0x1a): undefined reference to 'x'` and `ld: ...` lines other than its
/// warnings and its "in function" context.
fn linker(line: &str) -> Option<FirstError> {
    for what in [": undefined reference to ", ": multiple definition of "] {
        if let Some(at) = line.find(what) {
            let loc = strip_ld(&line[..at]).unwrap_or(&line[..at]);
            return located(loc, &line[at + 2..]);
        }
    }
    let rest = strip_ld(line)?;
    let context = rest.contains("in function") && rest.ends_with(':');
    if context || rest.starts_with("warning:") || rest.contains(": warning:") {
        return None;
    }
    let rest = rest.strip_prefix("error: ").unwrap_or(rest);
    match rest.split_once(": ") {
        Some((loc, message)) if !loc.contains(' ') && (loc.contains('/') || loc.contains(".o")) => {
            located(loc, message)
        }
        _ => Some(FirstError { file: None, line: None, column: None, message: clean(rest) }),
    }
}

/// What follows `ld: ` (or `x86_64-linux-gnu-ld: `, `ld.lld: `, ...) on `line`.
fn strip_ld(line: &str) -> Option<&str> {
    let (program, rest) = line.split_once(": ")?;
    let name = program.strip_suffix(".bfd").or_else(|| program.strip_suffix(".lld")).unwrap_or(program);
    let name = name.strip_suffix(".gold").unwrap_or(name);
    (!program.contains(['/', ' ']) && (name == "ld" || name.ends_with("-ld"))).then_some(rest)
}

/// modpost's `ERROR: modpost: "sym" [/path/foo.ko] undefined!`: the module in brackets.
fn modpost(rest: &str) -> FirstError {
    let file = rest
        .rsplit_once('[')
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(path, _)| relative(path).to_string())
        .filter(|p| !p.is_empty());
    FirstError { file, line: None, column: None, message: clean(rest) }
}

/// make's `make[2]: *** No rule to make target ...  Stop.`: not its echo of a failed recipe
/// (`*** [target] Error 1`) nor its waiting.
fn make_stop(line: &str) -> Option<FirstError> {
    let (program, message) = line.trim_end().split_once(": *** ")?;
    let name = program.split_once('[').map_or(program, |(n, _)| n);
    let make = name == "make" || name.ends_with("/make") || name == "gmake";
    (make && !message.starts_with('[') && !message.starts_with("Waiting for unfinished jobs")).then(|| FirstError {
        file: None,
        line: None,
        column: None,
        message: clean(message),
    })
}

/// `file:line[:col]` (or `file:(.section+0x1a)`, or a program's name) and its message.
fn located(loc: &str, message: &str) -> Option<FirstError> {
    let message = clean(message);
    if message.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = loc.split(':').collect();
    // ld's section offsets name no line.
    if parts.len() > 1 && parts.last().is_some_and(|p| p.starts_with("(.")) {
        parts.pop();
    }
    let mut numbers = Vec::new();
    while parts.len() > 1 && numbers.len() < 2 {
        match parts.last().and_then(|p| p.parse::<u32>().ok()) {
            Some(n) => {
                numbers.insert(0, n);
                parts.pop();
            }
            None => break,
        }
    }
    let file = parts.join(":");
    let file = (!file.is_empty()).then(|| relative(&file).to_string());
    Some(FirstError { file, line: numbers.first().copied(), column: numbers.get(1).copied(), message })
}

/// `path` relative to the module's build directory when it is under one.
pub fn relative(path: &str) -> &str {
    build_dir_len(path).map_or(path, |n| &path[n..])
}

/// The length of `/var/lib/dkms/<m>/<v>/build/` at the start of `s`, if it is there.
fn build_dir_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix(DKMS_TREE)?;
    let mut parts = rest.splitn(4, '/');
    let (m, v, build) = (parts.next()?, parts.next()?, parts.next()?);
    let word = |p: &str| !p.is_empty() && !p.contains(char::is_whitespace);
    let tail = parts.next()?; // the slash after build/ must be there
    (word(m) && word(v) && build == "build").then(|| s.len() - tail.len())
}

/// `message` as one plain line: the module's build directory left out of the paths it names,
/// control characters (a terminal's escapes) dropped, and bounded.
fn clean(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(DKMS_TREE) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let skip = match build_dir_len(rest) {
            Some(n) => n,
            None => {
                out.push_str(DKMS_TREE);
                DKMS_TREE.len()
            }
        };
        rest = &rest[skip..];
    }
    out.push_str(rest);
    let mut out = plain(&out);
    if let Some((cut, _)) = out.char_indices().nth(MESSAGE_MAX) {
        out.truncate(cut);
        out.push('…');
    }
    out.trim().to_string()
}

/// `text` without a terminal's escape sequences and other control characters (tabs as spaces).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI: ESC [ parameters, ended by a letter.
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
