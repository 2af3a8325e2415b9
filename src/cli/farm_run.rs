//! The farm's pairs built on this machine's engine, with live progress: `farm build` (and
//! its `--check`) and `farm kube collect --check` run them the same way.

use std::sync::Arc;

use super::error::Error;
use super::Output;
use ckms::context::Context;
use ckms::farm::exec::{Checked, Farm, OnEngine, Signing};
use ckms::farm::plan::{FarmPlan, Work};
use ckms::farm::report;
use ckms::farm::schedule::{self, Capacity, Outcome, Progress, Task};
use ckms::farm::store::{Lookup, Status, Store};
use ckms::farm::verdict::Findings;

/// How [`run_pairs`] builds.
pub struct HowToRun {
    /// The key pair the farm signs with, loaded once by the command.
    pub signing: Option<Signing>,
    pub jobs: Option<u32>,
    /// Compare with the stored entries instead of storing.
    pub check: bool,
    /// Build failed pairs again.
    pub retry_failed: bool,
}

/// Builds the pairs `todo` of `plan`, with live progress on a terminal (or JSON events).
pub async fn run_pairs(
    ctx: &Context,
    out: &Output,
    store: &Store,
    work: &Work,
    plan: &FarmPlan,
    todo: &[usize],
    how: &HowToRun,
) -> Result<(Vec<Outcome>, Vec<Checked>), Error> {
    let conn = Arc::new(ctx.engine().await?);
    if !out.json {
        let i = &conn.info;
        eprintln!("building {} pair(s) with {:?} {} at {}", todo.len(), i.kind, i.version, i.endpoint);
    }
    let mut farm = Farm::new(ctx, plan, store, work, how.signing.clone());
    if how.check {
        farm = farm.checking();
    }
    if how.retry_failed {
        farm = farm.retrying_failed();
    }
    // The schedule's tasks are the pairs to build; a dependency already stored is no wait.
    let position = |pair: usize| todo.iter().position(|&t| t == pair);
    // Last durations, read once: every record of the store.
    let records = store.records();
    let tasks: Vec<Task> = todo
        .iter()
        .map(|&i| {
            let p = &plan.pairs[i];
            let last = records.iter().find(|r| {
                let s = &plan.sources[p.source];
                r.module == s.mv.module && r.kernel == plan.kernels[p.kernel].release
            });
            Task {
                label: plan.label(i),
                image: p.image,
                after: p.after.iter().filter_map(|&a| position(a)).collect(),
                estimate: last.map(|r| r.seconds),
                size: plan.sources[p.source].size,
            }
        })
        .collect();
    let executor = OnEngine { farm: &farm, conn, todo };
    let live = super::farm_progress::Live::new(out.json, &tasks);
    let progress = |p: Progress| {
        let first_error = match p {
            Progress::Finished { index, status: Some(Status::Failed), .. } => {
                match store.get(&plan.pairs[todo[index]].key) {
                    Lookup::Found(r) => report::first_error(store, &r),
                    _ => None,
                }
            }
            _ => None,
        };
        live.event(&p, first_error.as_ref());
    };
    let outcomes = schedule::run(&tasks, &executor, Capacity::of_machine(how.jobs), &progress).await;
    live.finish();
    Ok((outcomes, farm.checked()))
}

/// `--check`'s differences, a line per pair and one per file.
pub fn findings_text(plan: &FarmPlan, findings: &Findings) -> String {
    let mut text = String::new();
    for c in &findings.differing {
        text += &format!("differs: {}\n", plan.label(c.pair));
        for d in c.status.iter().chain(&c.differs) {
            text += &format!("  {d}\n");
        }
    }
    for n in &findings.not_rebuilt {
        text += &format!("not rebuilt: {n}\n");
    }
    text
}
