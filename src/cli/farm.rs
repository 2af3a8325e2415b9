//! `ckms farm build|status|report|publish`: the prebuild farm over a store directory.

use std::path::PathBuf;

use super::error::Error;
use ckms::context::Context;
use ckms::diagnose::code;
use ckms::farm::ready;
use ckms::farm::report::{self, Counts, Matrix};
use ckms::farm::store::{Damage, Store};

use super::farm_build::{build, BuildArgs, StoreArg};
use super::farm_publish::{publish, PublishArgs};
use super::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build every module source for every selected kernel into a store, in parallel; pairs
    /// already in the store (same inputs) are not built again.
    Build(BuildArgs),
    /// The matrix of the last build: one line per pair (--json: one JSON object per line).
    Status(StatusArgs),
    /// Write the matrix as one self-contained HTML file.
    Report(ReportArgs),
    /// Publish the store's built modules: a signed apt repository (apt), system extension
    /// images (sysext), a binary cache for ckms hosts (cache) or KMM images (kmm).
    Publish(Box<PublishArgs>),
    /// Scale the farm out on Kubernetes: render Indexed Jobs, collect their results.
    #[command(subcommand)]
    Kube(super::farm_kube::Command),
    /// Follow the archives: poll the profiles' signed indexes, and on a change build, prove
    /// and publish what is new (a service; --once: one cycle).
    Follow(super::farm_follow::FollowArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Per kernel instead: ready when every module is built, signed and proven to load, else
    /// which modules are not and why.
    #[arg(long)]
    kernels: bool,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The HTML file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

pub async fn run(ctx: &Context, out: &Output, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Build(args) => build(ctx, out, args).await.map(|b| b.code),
        Command::Status(args) if args.kernels => {
            let store = Store::open(&args.store.store)?;
            let kernels = ready::of_store(&store);
            if out.json {
                for k in &kernels {
                    ckms::report::outln(serde_json::to_string(k).unwrap_or_default());
                }
            } else {
                ckms::report::out(ready::text(&kernels));
            }
            Ok(0)
        }
        Command::Status(args) => {
            let store = Store::open(&args.store.store)?;
            let Matrix { cells, damaged } = report::matrix(&store);
            if out.json {
                for (r, cached) in &cells {
                    ckms::report::outln(serde_json::to_string(&report::line(&store, r, *cached)).unwrap_or_default());
                }
            } else {
                ckms::report::out(report::text(&store, &cells));
            }
            Ok(name_damaged(ctx, &damaged))
        }
        Command::Report(args) => {
            let store = Store::open(&args.store.store)?;
            let Matrix { cells, damaged } = report::matrix(&store);
            let html = report::html(&store, &cells)?;
            std::fs::write(&args.output, html)
                .map_err(|e| Error::usage(format!("{}: {e}", args.output.display()), None))?;
            out.result(&args.output, || {
                format!("{}: {}\n", args.output.display(), Counts::of(cells.iter().map(|(r, c)| (r, *c))))
            });
            Ok(name_damaged(ctx, &damaged))
        }
        Command::Publish(args) => publish(ctx, out, *args).await,
        Command::Kube(cmd) => super::farm_kube::run(ctx, out, cmd).await,
        Command::Follow(args) => super::farm_follow::run(ctx, out, args).await,
    }
}

/// Names each damaged entry (left out of what was shown); the exit code that says so.
fn name_damaged(ctx: &Context, damaged: &[Damage]) -> i32 {
    for d in damaged {
        ctx.reporter().warn(format!("damaged store entry {d}"));
    }
    if damaged.is_empty() {
        0
    } else {
        ctx.reporter().warn(format!(
            "{} damaged entr{} left out: `ckms farm build` with the same sources builds them again",
            damaged.len(),
            if damaged.len() == 1 { "y" } else { "ies" }
        ));
        code::DAMAGED_STORE
    }
}
