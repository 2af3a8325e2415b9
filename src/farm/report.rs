//! The matrix as people and programs read it: a text table, JSON lines, and one
//! self-contained HTML file (minijinja template, inline CSS and script, make.log folded in).
//!
//! What the matrix is: the pairs of the last `farm build` (`matrix.json` in the store, with
//! which of them came from the store rather than a build), else every entry of the store.

use serde::{Deserialize, Serialize};

use std::io::{Read, Seek};

use super::store::{Damage, Lookup, Record, SignedBy, Status, Store};
use super::FarmError;
use crate::confine;
use crate::diagnose::code;
use crate::makelog::{self, FirstError};
use crate::repo::version;
use crate::report::table;

const MATRIX: &str = "matrix.json";

/// One pair of the last run: its key, whether it came from the store, and which pair it is
/// (so that a pair with no entry is still named: not built yet, or lost).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cell {
    pub key: String,
    pub cached: bool,
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kernel: String,
}

/// Remembers the last run's pairs.
pub fn save_matrix(store: &Store, cells: &[Cell]) -> Result<(), FarmError> {
    let text = serde_json::to_string_pretty(cells)
        .map_err(|e| FarmError::Store { path: store.root().join(MATRIX), message: e.to_string() })?;
    store.write_file(MATRIX, format!("{text}\n").as_bytes())
}

/// The matrix as its entries were found: the records, with whether each was cached, and the
/// damaged entries, each named (pairs whose entry is missing are left out: not built).
#[derive(Debug, Default)]
pub struct Matrix {
    pub cells: Vec<(Record, bool)>,
    pub damaged: Vec<Damage>,
}

pub fn matrix(store: &Store) -> Matrix {
    let mut m = Matrix::default();
    for (cell, lookup) in lookups(store) {
        let cached = cell.cached;
        match lookup {
            Lookup::Found(r) => m.cells.push((*r, cached)),
            Lookup::Damaged(d) => m.damaged.push(d),
            Lookup::Missing => {}
        }
    }
    m.cells.sort_by(|(a, _), (b, _)| (&a.module, &a.version, &a.kernel).cmp(&(&b.module, &b.version, &b.kernel)));
    m
}

/// Every pair of the matrix as its entry was found (checked file by file), with whether it
/// was cached; without a matrix, every entry of the store.
pub fn lookups(store: &Store) -> Vec<(Cell, Lookup)> {
    let cells: Option<Vec<Cell>> = store.read_file(MATRIX).and_then(|b| serde_json::from_slice(&b).ok());
    let cells = cells.unwrap_or_else(|| store.keys().into_iter().map(|key| Cell { key, ..Cell::default() }).collect());
    cells
        .into_iter()
        .map(|c| {
            let lookup = store.get(&c.key);
            (c, lookup)
        })
        .collect()
}

/// `farm status --json`: one object per pair.
#[derive(Debug, Serialize)]
pub struct Line<'r> {
    pub module: &'r str,
    pub version: &'r str,
    pub kernel: &'r str,
    pub arch: &'r str,
    pub status: Status,
    pub cached: bool,
    pub modules: Vec<&'r str>,
    pub seconds: f64,
    /// How long make ran in the container (the rest of `seconds` is ckms's per-pair cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub make_seconds: Option<f64>,
    pub key: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'r str>,
    /// From `--verify`: whether its modules loaded in a VM running the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<bool>,
    /// Who signed its modules (certificate SHA-256, subject, hash); absent when unsigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<&'r SignedBy>,
    /// When make failed: its log's first compiler or linker error (see [`first_error`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<FirstError>,
}

/// The pair `r` of `store` as `farm status --json` shows it.
pub fn line<'r>(store: &Store, r: &'r Record, cached: bool) -> Line<'r> {
    Line {
        module: &r.module,
        version: &r.version,
        kernel: &r.kernel,
        arch: &r.arch,
        status: r.status,
        cached,
        modules: r
            .modules
            .iter()
            .filter_map(|m| m.signed.as_ref().or(Some(&m.unsigned)))
            .map(|f| file_name(&f.file))
            .collect(),
        seconds: r.seconds,
        make_seconds: r.make_seconds,
        key: &r.key,
        reason: r.reason.as_deref(),
        loaded: r.proof.as_ref().map(|p| p.loaded),
        signer: r.signer.as_ref(),
        first_error: first_error(store, r),
    }
}

/// The first compiler or linker error of the pair `r` of `store` when make failed, from its
/// make.log: read inside the entry only, at most [`makelog::WINDOW`] bytes of each end.
pub fn first_error(store: &Store, r: &Record) -> Option<FirstError> {
    if r.status != Status::Failed || r.exit_code != code::BUILD_FAILED {
        return None;
    }
    let log = r.make_log.as_ref()?;
    let (file, size) = confine::open_inside(&store.entry_dir(&r.key), &log.file).ok()?;
    makelog::first_error_in(file, size)
}

/// How many hex digits of a certificate's SHA-256 the table and the report show.
const SHORT_FINGERPRINT: usize = 16;

/// The first digits of the signer's certificate SHA-256 (`sha256sum` of the DER file).
pub fn short_fingerprint(s: &SignedBy) -> &str {
    s.fingerprint.get(..SHORT_FINGERPRINT).unwrap_or(&s.fingerprint)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Counts by status, and cached.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub built: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cached: usize,
}

impl Counts {
    pub fn of<'r>(cells: impl IntoIterator<Item = (&'r Record, bool)>) -> Counts {
        let mut c = Counts::default();
        for (r, cached) in cells {
            match r.status {
                Status::Built => c.built += 1,
                Status::Failed => c.failed += 1,
                Status::Skipped => c.skipped += 1,
            }
            c.cached += usize::from(cached);
        }
        c
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} built, {} failed, {} skipped ({} from the store)",
            self.built, self.failed, self.skipped, self.cached
        )
    }
}

/// The median of what pairs built now cost beyond their make (seconds), when make ran.
pub fn overhead(cells: &[(Record, bool)]) -> Option<f64> {
    let mut o: Vec<f64> =
        cells.iter().filter(|(_, cached)| !cached).filter_map(|(r, _)| Some(r.seconds - r.make_seconds?)).collect();
    o.sort_by(f64::total_cmp);
    (!o.is_empty()).then(|| o[o.len() / 2])
}

/// The text table of `farm status`, then the first error of each pair whose make failed.
pub fn text(store: &Store, cells: &[(Record, bool)]) -> String {
    let mut errors = String::new();
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|(r, cached)| {
            let l = line(store, r, *cached);
            if let Some(e) = &l.first_error {
                errors += &format!("first error of {}: {e}\n", r.label());
            }
            vec![
                format!("{}/{}", r.module, r.version),
                r.kernel.clone(),
                r.arch.clone(),
                if *cached { format!("{} (cached)", r.status) } else { r.status.to_string() },
                format!("{:.1}", r.seconds),
                r.signer.as_ref().map_or("-", short_fingerprint).to_string(),
                if l.modules.is_empty() { r.reason.clone().unwrap_or_default() } else { l.modules.join(" ") },
            ]
        })
        .collect();
    let mut out = table(&["MODULE", "KERNEL", "ARCH", "STATUS", "SECONDS", "SIGNER", "MODULES"], &rows);
    out.push_str(&errors);
    out.push_str(&format!("{}\n", Counts::of(cells.iter().map(|(r, c)| (r, *c)))));
    out
}

const TEMPLATE: &str = include_str!("report.html.j2");

/// The HTML report: modules as rows, kernels as columns.
pub fn html(store: &Store, cells: &[(Record, bool)]) -> Result<String, FarmError> {
    let mut kernels: Vec<&str> = cells.iter().map(|(r, _)| r.kernel.as_str()).collect();
    kernels.sort_by(|a, b| version::compare(a, b));
    kernels.dedup();
    let mut modules: Vec<String> = cells.iter().map(|(r, _)| format!("{}/{}", r.module, r.version)).collect();
    modules.dedup();
    // Each cell by (module/version, kernel), rather than a search per cell of the table.
    let by_place: std::collections::HashMap<(String, &str), &(Record, bool)> =
        cells.iter().map(|c| ((format!("{}/{}", c.0.module, c.0.version), c.0.kernel.as_str()), c)).collect();
    let rows: Vec<serde_json::Value> = modules
        .iter()
        .map(|m| {
            let row: Vec<serde_json::Value> = kernels
                .iter()
                .map(|k| {
                    match by_place.get(&(m.clone(), *k)) {
                        Some((r, cached)) => {
                            let log = r.make_log.as_ref().and_then(|f| log_tail(&store.entry_dir(&r.key), &f.file));
                            let l = line(store, r, *cached);
                            serde_json::json!({
                                "status": r.status,
                                "cached": cached,
                                "seconds": format!("{:.1}", r.seconds),
                                "modules": l.modules,
                                "first_error": l.first_error.as_ref().map(ToString::to_string),
                                "signer": r.signer.as_ref().map(|s| format!("{} ({}, {})", s.subject, short_fingerprint(s), s.hash)),
                                "reason": r.reason,
                                "log": log,
                                "key": r.key,
                                "proof": r.proof,
                            })
                        }
                        None => serde_json::json!({ "status": "none" }),
                    }
                })
                .collect();
            serde_json::json!({ "module": m, "cells": row })
        })
        .collect();
    let counts = Counts::of(cells.iter().map(|(r, c)| (r, *c)));
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    let fail = |e: minijinja::Error| FarmError::Store { path: store.root().to_path_buf(), message: e.to_string() };
    env.add_template("report", TEMPLATE).map_err(fail)?;
    let ctx = minijinja::context! {
        store => store.root().display().to_string(),
        kernels => kernels,
        rows => rows,
        counts => counts,
        version => env!("CARGO_PKG_VERSION"),
    };
    env.get_template("report").and_then(|t| t.render(ctx)).map_err(fail)
}

/// How much of the end of a make.log the report reads for its last lines.
const LOG_TAIL_BYTES: u64 = 256 << 10;

/// The last 200 lines of the make.log `name` of the entry `dir`, read inside the entry only.
fn log_tail(dir: &std::path::Path, name: &str) -> Option<String> {
    let (mut file, size) = confine::open_inside(dir, name).ok()?;
    file.seek(std::io::SeekFrom::Start(size.saturating_sub(LOG_TAIL_BYTES))).ok()?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    Some(tail(&String::from_utf8_lossy(&bytes), 200))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::store::{stored_file, tests::stage};

    /// A store with three pairs: two kernels of one module (one failed with a log), one of another.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        for (key, module, kernel, status) in [
            ("k1", "hello", "6.1.0-56-amd64", Status::Built),
            ("k2", "hello", "6.12.118+deb13-amd64", Status::Failed),
            ("k3", "<b>evil</b>", "6.1.0-56-amd64", Status::Skipped),
        ] {
            let (staged, mut r) = stage(&store, key, b"\x7fELF");
            (r.module, r.kernel, r.status) = (module.into(), kernel.into(), status);
            if status == Status::Built {
                r.signer = Some(SignedBy {
                    fingerprint: "0123456789abcdef".repeat(4),
                    subject: "CN=farm key B".into(),
                    hash: "sha256".into(),
                });
            }
            if status == Status::Failed {
                r.exit_code = code::BUILD_FAILED;
                let log = "  CC [M]  /var/lib/dkms/hello/1/build/hello.o\n/var/lib/dkms/hello/1/build/hello.c:1:7: error: <oops>\n";
                std::fs::write(staged.path().join("make.log"), log).unwrap();
                r.make_log = Some(stored_file(staged.path(), "make.log").unwrap());
            }
            store.commit(staged, &r).unwrap();
        }
        save_matrix(
            &store,
            &[
                Cell { key: "k1".into(), cached: true, ..Cell::default() },
                Cell { key: "k2".into(), ..Cell::default() },
                Cell { key: "k3".into(), ..Cell::default() },
            ],
        )
        .unwrap();
        (dir, store)
    }

    #[test]
    fn the_matrix_is_the_last_run_with_what_came_from_the_store() {
        let (_dir, store) = store();
        let cells = matrix(&store).cells;
        assert_eq!(cells.len(), 3);
        let counts = Counts::of(cells.iter().map(|(r, c)| (r, *c)));
        assert_eq!(counts, Counts { built: 1, failed: 1, skipped: 1, cached: 1 });
        let text = text(&store, &cells);
        assert!(
            text.contains("built (cached)") && text.contains("1 built, 1 failed, 1 skipped (1 from the store)"),
            "{text}"
        );
        // The signer: its certificate's short SHA-256 in the table, all of it in the JSON line.
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[0].contains("SIGNER") && rows[0].contains(" ARCH "), "{text}");
        let signed = rows.iter().find(|l| l.contains("built (cached)")).unwrap();
        assert!(signed.contains(" 0123456789abcdef ") && !signed.contains("0123456789abcdef0"), "{text}");
        let unsigned = rows.iter().find(|l| l.contains("failed")).unwrap();
        assert!(unsigned.contains(" - "), "{text}");
        let (built, _) = cells.iter().find(|(r, _)| r.status == Status::Built).unwrap();
        let json = serde_json::to_value(line(&store, built, true)).unwrap();
        assert_eq!(json["signer"]["fingerprint"], "0123456789abcdef".repeat(4));
        assert_eq!(json["signer"]["subject"], "CN=farm key B");
        assert_eq!(json["signer"]["hash"], "sha256");
        let (failed, _) = cells.iter().find(|(r, _)| r.status == Status::Failed).unwrap();
        let json = serde_json::to_value(line(&store, failed, false)).unwrap();
        assert!(json.get("signer").is_none());
        // make's first error, with its file relative to the build directory.
        assert_eq!(
            json["first_error"],
            serde_json::json!({ "file": "hello.c", "line": 1, "column": 7, "message": "<oops>" })
        );
        assert!(text.contains("first error of hello/1.0 for 6.12.118+deb13-amd64: hello.c:1:7: <oops>\n"), "{text}");
        assert!(serde_json::to_value(line(&store, built, true)).unwrap().get("first_error").is_none());
    }

    #[test]
    fn the_html_has_a_cell_per_pair_a_column_per_kernel_and_escapes_what_modules_name() {
        let (_dir, store) = store();
        let html = html(&store, &matrix(&store).cells).unwrap();
        assert_eq!(html.matches("<td class=\"cell ").count(), 4, "3 pairs and one empty cell"); // 2 rows x 2 kernels
        assert_eq!(html.matches("<th>6.").count(), 2);
        assert!(
            html.contains("&lt;b&gt;evil&lt;&#x2f;b&gt;") && !html.contains("<b>evil</b>"),
            "module names are escaped"
        );
        assert!(html.contains("error: &lt;oops&gt;"), "make.log folded in, escaped");
        assert!(html.contains("first error: hello.c:1:7: &lt;oops&gt;"), "and its first error above it");
    }

    #[test]
    fn damaged_entries_are_named_and_a_log_outside_its_entry_is_not_read() {
        let (_dir, store) = store();
        std::fs::write(store.entry_dir("k1").join("modules/hello.ko"), b"flipped").unwrap();
        std::fs::write(store.entry_dir("k3").join("result.json"), b"{").unwrap();
        let m = matrix(&store);
        assert_eq!(m.cells.len(), 1);
        let keys: Vec<&str> = m.damaged.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k3"]);
        // A record naming a make.log outside its entry: not read into the report.
        std::fs::write(store.root().join("secret"), "SECRET").unwrap();
        let (mut r, cached) = m.cells[0].clone();
        r.make_log =
            Some(crate::farm::store::StoredFile { file: "../../secret".into(), sha256: String::new(), size: 6 });
        let html = html(&store, &[(r, cached)]).unwrap();
        assert!(!html.contains("SECRET"), "{html}");
    }
}
