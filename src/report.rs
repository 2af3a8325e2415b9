//! Progress and events. Library code emits [`Event`]s; the binary chooses how they are shown:
//! progress bars on a terminal, plain lines otherwise, or JSON lines with `--json`.

use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Something the user may want to know (one line): what dkms would say in its place.
    Info { message: String },
    /// ckms's own account beyond what dkms says (the engine, the image, the index, the
    /// sandbox): shown by `ckms`, and by `dkms` only with --verbose, since dkms's callers parse
    /// dkms's lines and the container is not theirs to know about.
    Detail { message: String },
    /// Something went wrong but work goes on (a corrupt cache entry fetched again, ...).
    Warn { message: String },
    /// A line for stderr as it is, as dkms prints some: an error in a run that goes on (one
    /// module of autoinstall), or a note (kernel_prerm's "removing module").
    Notice { message: String },
    /// A long task advanced. `task` is a stable key; `total` is known up front when possible.
    Progress { task: String, done: u64, total: Option<u64>, unit: Unit },
    /// A task finished; `message` summarises it.
    Done { task: String, message: String },
    /// Raw output of a build, as it happens (`--verbose`).
    Output { text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Bytes,
    Items,
}

/// Where events go. Implementations must be cheap to call often (progress is emitted per chunk).
pub trait Reporter: Send + Sync {
    fn emit(&self, event: Event);
}

/// Convenience calls on `&dyn Reporter`.
impl dyn Reporter + '_ {
    pub fn info(&self, message: impl Into<String>) {
        self.emit(Event::Info { message: message.into() });
    }
    pub fn detail(&self, message: impl Into<String>) {
        self.emit(Event::Detail { message: message.into() });
    }
    pub fn warn(&self, message: impl Into<String>) {
        self.emit(Event::Warn { message: message.into() });
    }
    pub fn notice(&self, message: impl Into<String>) {
        self.emit(Event::Notice { message: message.into() });
    }
    pub fn progress(&self, task: &str, done: u64, total: Option<u64>, unit: Unit) {
        self.emit(Event::Progress { task: task.to_string(), done, total, unit });
    }
    pub fn output(&self, text: impl Into<String>) {
        self.emit(Event::Output { text: text.into() });
    }
    pub fn done(&self, task: &str, message: impl Into<String>) {
        self.emit(Event::Done { task: task.to_string(), message: message.into() });
    }
    /// Emits `event` unless this process emitted the same one already: what holds for the
    /// whole command (the engine's limits, a package the repository lacks) is said once,
    /// however often the steps that find it run (a farm connects twice, plans every kernel).
    pub fn once(&self, event: Event) {
        if first_time(&event) {
            self.emit(event);
        }
    }
    pub fn warn_once(&self, message: impl Into<String>) {
        self.once(Event::Warn { message: message.into() });
    }
}

/// Whether this process meets `event` for the first time. Process-wide rather than per
/// reporter: the library's steps hand reporters around (wrapped, as [`Warnings`]), and a
/// command is one process.
fn first_time(event: &Event) -> bool {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let Ok(key) = serde_json::to_string(event) else { return true };
    SEEN.lock().map(|mut seen| seen.insert(key)).unwrap_or(true)
}

/// Drops everything (library callers that do not care).
pub struct Silent;
impl Reporter for Silent {
    fn emit(&self, _: Event) {}
}

/// Passes on only warnings: many builds at once (the farm) would interleave their lines, so
/// their progress is shown another way.
pub struct Warnings(pub std::sync::Arc<dyn Reporter>);
impl Reporter for Warnings {
    fn emit(&self, event: Event) {
        if matches!(event, Event::Warn { .. } | Event::Notice { .. }) {
            self.0.emit(event);
        }
    }
}

/// Keeps every event, for tests.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);
impl Reporter for Recorder {
    fn emit(&self, event: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`ckms status | head`) is no error: what
/// it no longer reads is dropped, where `print!` would panic.
pub fn out(text: impl std::fmt::Display) {
    let _ = write!(std::io::stdout().lock(), "{text}");
}

/// [`out`] with a newline.
pub fn outln(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// One JSON object per line on stdout.
pub struct JsonLines;
impl Reporter for JsonLines {
    fn emit(&self, event: Event) {
        if let Ok(line) = serde_json::to_string(&event) {
            outln(line);
        }
    }
}

/// For people: indicatif bars on a terminal, otherwise plain lines (progress only at the end).
/// Whose lines a person sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// ckms's: dkms's lines and ckms's details, progress on stderr.
    Ckms,
    /// dkms's, for callers of `dkms`: its lines on stdout, as dkms prints them; ckms's details
    /// and progress only when `verbose` (on stderr).
    Dkms { verbose: bool },
}

pub struct Human {
    bars: Option<indicatif::MultiProgress>,
    active: Mutex<HashMap<String, indicatif::ProgressBar>>,
    quiet: bool,
    voice: Voice,
}

impl Human {
    pub fn new(quiet: bool, voice: Voice) -> Self {
        use std::io::IsTerminal;
        let bars = (voice != Voice::Dkms { verbose: false } && std::io::stderr().is_terminal())
            .then(indicatif::MultiProgress::new);
        Human { bars, active: Mutex::new(HashMap::new()), quiet, voice }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn bar(&self, task: &str, total: Option<u64>, unit: Unit) -> Option<indicatif::ProgressBar> {
        let mp = self.bars.as_ref()?;
        let mut active = self.active.lock().ok()?;
        let bar = active.entry(task.to_string()).or_insert_with(|| {
            let template = match unit {
                Unit::Bytes => "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                Unit::Items => "{prefix:>12} [{bar:30}] {pos}/{len}",
            };
            let style = indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = mp.add(indicatif::ProgressBar::new(total.unwrap_or(0)).with_style(style));
            bar.set_prefix(task.to_string());
            bar
        });
        if let Some(t) = total {
            bar.set_length(t);
        }
        Some(bar.clone())
    }
}

impl Reporter for Human {
    fn emit(&self, event: Event) {
        let details = self.voice != Voice::Dkms { verbose: false };
        match event {
            Event::Info { .. } if self.quiet => {}
            Event::Info { message } if matches!(self.voice, Voice::Dkms { .. }) => outln(message),
            Event::Info { message } => self.line(&message),
            Event::Detail { message } if details && !self.quiet => self.line(&message),
            Event::Detail { .. } => {}
            Event::Warn { message } => self.line(&format!("Warning: {message}")),
            Event::Notice { message } => self.line(&message),
            Event::Output { text } => match &self.bars {
                Some(mp) => mp.suspend(|| eprint!("{text}")),
                None => eprint!("{text}"),
            },
            Event::Progress { task, done, total, unit } => {
                if let Some(bar) = self.bar(&task, total, unit) {
                    bar.set_position(done);
                }
            }
            Event::Done { task, message } => {
                if let Some(bar) = self.active.lock().ok().and_then(|mut a| a.remove(&task)) {
                    bar.finish_and_clear();
                }
                if details && !self.quiet {
                    self.line(&format!("{task}: {message}"));
                }
            }
        }
    }
}

/// Left-aligned columns, widths from the content.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_stable() {
        let e = Event::Progress { task: "download".into(), done: 3, total: Some(9), unit: Unit::Bytes };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"progress","task":"download","done":3,"total":9,"unit":"bytes"}"#
        );
    }

    #[test]
    fn a_warning_said_once_is_said_once_per_process() {
        let (first, second) = (Recorder::default(), Recorder::default());
        for _ in 0..3 {
            (&first as &dyn Reporter).warn_once("once-guard test: the engine cannot enforce limits");
        }
        let d: &dyn Reporter = &second;
        // Another reporter of the same process: already said.
        d.warn_once("once-guard test: the engine cannot enforce limits");
        // Another text, or the same text as another kind of event: new.
        d.warn_once("once-guard test: another warning");
        d.once(Event::Detail { message: "once-guard test: the engine cannot enforce limits".into() });
        d.once(Event::Detail { message: "once-guard test: the engine cannot enforce limits".into() });
        // Plain warnings are never held back.
        d.warn("once-guard test: another warning");
        assert_eq!(first.0.lock().unwrap().len(), 1);
        let kinds: Vec<String> =
            second.0.lock().unwrap().iter().map(|e| serde_json::to_value(e).unwrap()["event"].to_string()).collect();
        assert_eq!(kinds, [r#""warn""#, r#""detail""#, r#""warn""#]);
    }

    #[test]
    fn recorder_keeps_events() {
        let r = Recorder::default();
        let d: &dyn Reporter = &r;
        d.info("hello");
        assert_eq!(r.0.lock().unwrap().len(), 1);
    }
}
