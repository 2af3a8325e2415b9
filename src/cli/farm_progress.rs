//! The farm's live view: on a terminal, indicatif bars (pairs finished, one line per running
//! build with its elapsed time); elsewhere one line per finished pair; with --json, one JSON
//! event per line on stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use ckms::farm::schedule::{Progress, Task};
use ckms::farm::store::Status;
use ckms::makelog::FirstError;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Live {
    json: bool,
    labels: Vec<String>,
    bars: Option<Bars>,
    tally: Mutex<Tally>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    running: Mutex<HashMap<usize, ProgressBar>>,
}

#[derive(Default)]
struct Tally {
    built: usize,
    failed: usize,
    skipped: usize,
    not_built: usize,
}

impl Live {
    pub fn new(json: bool, tasks: &[Task]) -> Live {
        let bars = (!json && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::new();
            let total = multi.add(ProgressBar::new(tasks.len() as u64));
            total.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} pairs  {msg}  [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            total.enable_steady_tick(Duration::from_millis(500));
            Bars { multi, total, running: Mutex::new(HashMap::new()) }
        });
        Live {
            json,
            labels: tasks.iter().map(|t| t.label.clone()).collect(),
            bars,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// Shows `p`; `first_error` is a failed pair's first compiler or linker error.
    pub fn event(&self, p: &Progress, first_error: Option<&FirstError>) {
        if self.json {
            let doc = match p {
                Progress::Provisioning { image } => serde_json::json!({ "event": "provisioning", "image": image }),
                Progress::Provisioned { image, error } => {
                    serde_json::json!({ "event": "provisioned", "image": image, "error": error })
                }
                Progress::Started { index, jobs } => {
                    serde_json::json!({ "event": "started", "pair": self.labels[*index], "jobs": jobs })
                }
                Progress::Finished { index, status, seconds } => {
                    let mut doc = serde_json::json!({ "event": "finished",
                        "pair": self.labels[*index], "status": status, "seconds": seconds });
                    if let Some(e) = first_error {
                        doc["first_error"] = serde_json::json!(e);
                    }
                    doc
                }
            };
            ckms::report::outln(doc);
            return;
        }
        match p {
            Progress::Provisioning { .. } | Progress::Started { .. } => {}
            Progress::Provisioned { error: None, .. } => {}
            Progress::Provisioned { error: Some(e), .. } => self.say(format!("builder image failed: {e}")),
            Progress::Finished { index, status, seconds } => {
                let shown = status.map_or("not built".to_string(), |s| s.to_string());
                self.say(format!("{shown:<9} {} ({seconds:.1} s)", self.labels[*index]));
                if let Some(e) = first_error {
                    self.say(format!("{:<9} first error: {e}", ""));
                }
            }
        }
        if let Progress::Finished { status, .. } = p {
            if let Ok(mut t) = self.tally.lock() {
                match status {
                    Some(Status::Built) => t.built += 1,
                    Some(Status::Failed) => t.failed += 1,
                    Some(Status::Skipped) => t.skipped += 1,
                    None => t.not_built += 1,
                }
            }
        }
        let Some(bars) = &self.bars else { return };
        let Ok(mut running) = bars.running.lock() else { return };
        match p {
            Progress::Started { index, jobs } => {
                let bar = bars.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(format!("{} (-j{jobs})", self.labels[*index]));
                bar.enable_steady_tick(Duration::from_millis(200));
                running.insert(*index, bar);
            }
            Progress::Finished { index, .. } => {
                if let Some(bar) = running.remove(index) {
                    bar.finish_and_clear();
                    bars.multi.remove(&bar);
                }
                bars.total.inc(1);
            }
            Progress::Provisioning { image } => bars.total.set_message(format!("provisioning image {}", image + 1)),
            Progress::Provisioned { .. } => {}
        }
        if let Ok(t) = self.tally.lock() {
            if !matches!(p, Progress::Provisioning { .. }) {
                bars.total.set_message(format!(
                    "{} built, {} failed, {} skipped, {} not built, {} running",
                    t.built,
                    t.failed,
                    t.skipped,
                    t.not_built,
                    running.len()
                ));
            }
        }
    }

    fn say(&self, line: String) {
        match &self.bars {
            Some(b) => b.multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.total.finish_and_clear();
        }
    }
}
