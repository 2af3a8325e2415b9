//! `ckms farm build`: its options, and the run (follow runs it the same way).

use std::path::PathBuf;
use std::sync::Arc;

use super::error::Error;
use ckms::context::Context;
use ckms::farm::evaluate::{cells, evaluate, in_list, Evaluated};
use ckms::farm::exec::Checked;
use ckms::farm::plan::FarmPlan;
use ckms::farm::report::{self, Counts, Matrix};
use ckms::farm::resign;
use ckms::farm::schedule::Outcome;
use ckms::farm::signing::signing;
use ckms::farm::verdict::{self, BuildRun, Findings};

use super::farm_run::{findings_text, run_pairs, HowToRun};
use super::Output;

#[derive(clap::Args)]
pub struct StoreArg {
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Kernels: a release, a regular expression, @PROFILE, @PROFILE:latest or @PROFILE:latest=N
    /// (newest N per series and flavour); repeatable.
    #[arg(short = 'k', long = "kernel", value_name = "SELECTOR")]
    kernels: Vec<String>,
    /// Builds at once and make jobs in all (default: the machine's cores).
    #[arg(long, value_name = "N")]
    jobs: Option<u32>,
    /// Look for kernels and deb: packages only in this profile.
    #[arg(long, short = 'p')]
    profile: Option<String>,
    /// A TOML file with `sources = [...]` and `kernels = [...]`, added to the command line's.
    #[arg(long, value_name = "FILE")]
    matrix: Option<PathBuf>,
    /// Print the plan (pairs, images to provision, bytes to download) and build nothing.
    #[arg(long)]
    dry_run: bool,
    /// Sign with this private key (default: as `ckms build` on this host: framework.conf's,
    /// dkms's pair, or ckms's own /var/lib/ckms/mok.key, made if missing).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The certificate of --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Prove the modules load: one VM per kernel boots it and loads every module built for it.
    #[arg(long)]
    verify: bool,
    /// Rebuild the stored pairs of the matrix, ignoring the store, and report every module
    /// whose bytes (unsigned or signed) differ from the stored ones; nothing is stored.
    #[arg(long, conflicts_with_all = ["dry_run", "retry_failed"])]
    check: bool,
    /// Build again the pairs stored as failed (they are otherwise reported from the store).
    #[arg(long)]
    retry_failed: bool,
    /// Module sources: a directory with a dkms.conf, a dkms tarball, a *-dkms .deb,
    /// MODULE/VERSION from /usr/src, or deb:PACKAGE from the kernels' repository.
    #[arg(value_name = "SOURCE")]
    sources: Vec<String>,
}

/// A `farm build` command line, from follow's `[build]` table.
#[derive(clap::Parser)]
#[command(name = "farm build", no_binary_name = true)]
struct BuildLine {
    #[command(flatten)]
    args: BuildArgs,
}

pub(super) fn parse_build(argv: &[String]) -> Result<BuildArgs, clap::Error> {
    <BuildLine as clap::Parser>::try_parse_from(argv).map(|l| l.args)
}

/// What a `farm build` run came to.
#[derive(Debug, Default)]
pub(super) struct BuildDone {
    pub code: i32,
    /// Pairs built by this run (not from the store).
    pub built_now: usize,
    /// Pairs of the matrix stored as failed.
    pub failed: usize,
}

/// The matrix file: the same as the command line's sources and selectors.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    kernels: Vec<String>,
}

pub(super) async fn build(ctx: &Context, out: &Output, mut args: BuildArgs) -> Result<BuildDone, Error> {
    // Many pairs at once: their own messages would interleave; the live view says what happens.
    let ctx = &ctx.with_reporter(Arc::new(ckms::report::Warnings(ctx.report.clone())));
    if let Some(file) = &args.matrix {
        let text = std::fs::read_to_string(file).map_err(|e| Error::usage(format!("{}: {e}", file.display()), None))?;
        let m: MatrixFile = toml::from_str(&text)
            .map_err(|e| Error::usage(format!("{}: {e}", file.display()), Some(MATRIX_HINT.into())))?;
        args.sources.extend(m.sources);
        args.kernels.extend(m.kernels);
    }
    if args.kernels.is_empty() || args.sources.is_empty() {
        return Err(Error::usage(
            "farm build needs at least one kernel selector (-k) and one source",
            Some("e.g. ckms farm build --store DIR -k @debian-bookworm:latest ./mymodule deb:v4l2loopback-dkms".into()),
        ));
    }
    let Evaluated { store, work, plan, todo, built } =
        evaluate(ctx, &args.store.store, &args.kernels, &args.sources, args.profile.as_deref(), args.retry_failed)
            .await?;
    if args.dry_run {
        print_plan(ctx, out, &plan, &todo);
        return Ok(BuildDone::default());
    }
    // Loaded once, when there is something to sign (to build, to check or to sign again).
    let key = args.key.as_deref().zip(args.cert.as_deref());
    let signing = if todo.is_empty() && built.is_empty() { None } else { signing(ctx, key)? };
    let how = HowToRun { signing, jobs: args.jobs, check: args.check, retry_failed: args.retry_failed };
    // A writer from here on: what writers that are gone left staged goes.
    store.clean_staging();
    // Stored pairs signed by another key than the farm's now: signed again, no container.
    let resigned = match &how.signing {
        Some(s) if !args.check && !built.is_empty() => {
            let done = resign::stored(&store, &plan, &built, s)?;
            if !done.is_empty() && !out.json {
                eprintln!(
                    "re-signed {} stored pair(s) with the certificate {} (no container)",
                    done.len(),
                    s.fingerprint
                );
            }
            done
        }
        _ => Vec::new(),
    };
    if args.check {
        let (outcomes, checked) = run_pairs(ctx, out, &store, &work, &plan, &built, &how).await?;
        return Ok(BuildDone { code: print_check(out, &plan, &built, &outcomes, &checked), ..BuildDone::default() });
    }
    let (outcomes, _) = if todo.is_empty() {
        Default::default()
    } else {
        run_pairs(ctx, out, &store, &work, &plan, &todo, &how).await?
    };

    report::save_matrix(&store, &cells(&plan, &todo))?;
    let Matrix { cells: matrix, damaged } = report::matrix(&store);
    // Damaged since this run read the store (each was built again if it was damaged before).
    for d in &damaged {
        ctx.reporter().warn(format!("damaged store entry {d}"));
    }
    let counts = Counts::of(matrix.iter().map(|(r, c)| (r, *c)));
    let not_built = verdict::not_built(&plan, &todo, &outcomes);
    for line in &not_built {
        ctx.reporter().warn(format!("not built: {line}"));
    }
    let booted = if args.verify {
        let conn = ctx.engine().await?;
        ckms::farm::proof::verify(ctx, conn.engine.as_ref(), &plan, &store).await?
    } else {
        Vec::new()
    };
    let not_loaded: usize = booted.iter().map(|b| b.failed.len()).sum();
    let overhead = report::overhead(&matrix);
    let summary = serde_json::json!({ "pairs": plan.pairs.len(), "built_now": todo.len() - not_built.len(),
        "not_built": not_built.len(), "resigned": resigned.len(), "counts": counts, "store": store.root(), "verified": booted,
        "overhead_median_seconds": overhead });
    out.result(&summary, || {
        let mut text = String::new();
        for b in &booted {
            text += &match b.earlier {
                true => format!("{}: {} pair(s) loaded in one VM (an earlier run; no VM now)\n", b.kernel, b.loaded),
                false => format!("{}: {} pair(s) loaded in one VM ({:.1} s)\n", b.kernel, b.loaded, b.seconds),
            };
            for f in &b.failed {
                text += &format!("  NOT loaded: {f}\n");
            }
        }
        if let Some(o) = overhead {
            text += &format!("per pair beyond make: {o:.2} s (median)\n");
        }
        text + &format!("{} pair(s): {counts}; {} not built\n", plan.pairs.len(), not_built.len())
    });
    let to_build = todo.len() + resigned.len();
    let run = BuildRun { failed: counts.failed, not_built: not_built.len(), not_loaded, to_build };
    Ok(BuildDone { code: run.verdict().exit_code(), built_now: todo.len() - not_built.len(), failed: counts.failed })
}

/// Prints `--check`'s findings; returns the run's exit code.
fn print_check(out: &Output, plan: &FarmPlan, stored: &[usize], outcomes: &[Outcome], checked: &[Checked]) -> i32 {
    let findings = Findings::of(plan, stored, outcomes, checked);
    let Findings { differing, not_rebuilt, files, identical } = &findings;
    let doc = serde_json::json!({ "pairs": stored.len(), "identical": identical, "files": files,
        "differing": differing.iter().map(|c| serde_json::json!({ "pair": plan.label(c.pair), "differs": c.differs,
        "status": c.status })).collect::<Vec<_>>(), "not_rebuilt": not_rebuilt });
    out.result(&doc, || {
        findings_text(plan, &findings)
            + &format!(
                "{identical} of {} stored pair(s) rebuilt identical ({files} module files, unsigned and signed)\n",
                stored.len()
            )
    });
    findings.verdict().exit_code()
}

const MATRIX_HINT: &str = "a matrix file holds sources = [\"./mymodule\", \"deb:v4l2loopback-dkms\"] and \
                           kernels = [\"@debian-bookworm:latest\"]";

fn print_plan(ctx: &Context, out: &Output, plan: &FarmPlan, todo: &[usize]) {
    let images: std::collections::BTreeSet<usize> = todo.iter().map(|&i| plan.pairs[i].image).collect();
    let to_build = in_list(plan.pairs.len(), todo);
    let bytes = plan.download_bytes(ctx);
    let pairs: Vec<serde_json::Value> = plan
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = &plan.sources[p.source];
            serde_json::json!({ "module": s.mv.module, "version": s.mv.version, "kernel": plan.kernels[p.kernel].release,
                "key": p.key, "cached": !to_build[i], "after": p.after })
        })
        .collect();
    let doc =
        serde_json::json!({ "pairs": pairs, "to_build": todo.len(), "images": images.len(), "download_bytes": bytes });
    out.result(&doc, || {
        let mut text = String::new();
        for (i, p) in plan.pairs.iter().enumerate() {
            let state = if to_build[i] { "build" } else { "stored" };
            text += &format!("{state:<7} {}  {}\n", plan.label(i), &p.key[..16]);
        }
        text + &format!(
            "{} pair(s), {} to build; {} builder image(s); {:.1} MB to download\n",
            plan.pairs.len(),
            todo.len(),
            images.len(),
            bytes as f64 / 1e6
        )
    });
}
