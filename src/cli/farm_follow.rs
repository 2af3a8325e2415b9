//! `ckms farm follow --config FILE [--once]`: polls the archives the build's kernel selectors
//! reach (a conditional GET of each InRelease: nothing downloaded while nothing changed), and
//! after a change (or on start) runs the configured `farm build` and every `farm publish`,
//! then keeps its state in the store and its status in a JSON file and as metrics.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::Error;
use super::farm_build::{build, parse_build, BuildDone};
use super::farm_follow_kube::KubeBuild;
use super::farm_publish::{parse_publish, publish};
use super::Output;
use ckms::context::Context;
use ckms::farm::follow::{argv, now, FollowConfig, State};
use ckms::farm::ready;
use ckms::farm::store::Store;
use ckms::repo::poll::{poll, Polled};

#[derive(clap::Args)]
pub struct FollowArgs {
    /// The follow configuration (docs/farm.md, "Following the archive").
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// One cycle (poll, and build and publish when needed), then exit.
    #[arg(long)]
    once: bool,
    /// Serve the metrics at ADDR instead of the configuration's `metrics`, any address: in a
    /// pod (`farm kube follow-render`), whose NetworkPolicy decides who reaches it.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

pub async fn run(ctx: &Context, out: &Output, args: FollowArgs) -> Result<i32, Error> {
    let cfg = FollowConfig::load(&args.config)?;
    let bad = |e: String| Error::usage(format!("{}: {e}", args.config.display()), None);
    let store_arg = vec!["--store".to_string(), cfg.store.display().to_string()];
    let build_argv = [store_arg.clone(), argv(&cfg.build, "sources").map_err(bad)?].concat();
    parse_build(&build_argv).map_err(|e| bad(format!("[build]: {e}")))?;
    let mut publishes = Vec::new();
    for (i, table) in cfg.publish.iter().enumerate() {
        let a = [store_arg.clone(), argv(table, "").map_err(bad)?].concat();
        let parsed = parse_publish(&a).map_err(|e| bad(format!("[[publish]] #{}: {e}", i + 1)))?;
        if parsed.out().is_none() {
            return Err(bad(format!("[[publish]] #{}: name its out: where consumers find it", i + 1)));
        }
        publishes.push(a);
    }
    // In a cluster the builds are Jobs: the API client is made once, its failures said early.
    let kube = match &cfg.kube {
        Some(table) => {
            let k = KubeBuild::new(&cfg, table).map_err(|e| bad(e.to_string()))?;
            let client = k.client()?;
            Some((k, client))
        }
        None => None,
    };
    let builder = Builder { argv: &build_argv, kube: kube.as_ref().map(|(k, c)| (k, c.as_ref())) };
    let store = Store::open(&cfg.store)?;
    let mut state = State::load(&store);
    let metrics = Arc::new(Mutex::new(state.metrics()));
    if let Some(addr) = args.metrics.as_ref().or(cfg.metrics.as_ref()) {
        serve_metrics(addr, metrics.clone()).await.map_err(|e| bad(format!("metrics = {addr:?}: {e}")))?;
        ctx.reporter().info(format!("metrics at http://{addr}/metrics"));
    }
    let names: Vec<String> = ctx.catalog.profiles.iter().map(|p| p.name.clone()).collect();
    let profiles = cfg.profiles(&names);
    let digest = ckms::cache::sha256_hex(format!("{build_argv:?}{publishes:?}").as_bytes());
    if state.config.as_deref() != Some(digest.as_str()) {
        state.pending_since.get_or_insert_with(now);
    }
    loop {
        // A fresh context each cycle: its indexes are the ones the poll just cached.
        let cycle = Context::new(ctx.config.clone(), ctx.report.clone(), false)?;
        let mut code = 0;
        let cpu = cpu_seconds();
        let polled = poll_all(&cycle, &profiles).await;
        state.last_poll_cpu_seconds = cpu_seconds() - cpu;
        match polled {
            Ok(polled) => {
                state.polls += 1;
                state.last_poll = Some(now());
                state.last_poll_bytes = polled.iter().map(|p| p.bytes).sum();
                state.consecutive_errors = 0;
                for p in polled.iter().filter(|p| p.changed) {
                    ctx.reporter().info(format!("{} {}: the index changed", p.mirror, p.suite));
                }
                if polled.iter().any(|p| p.changed) && state.pending_since.is_none() {
                    state.pending_since = Some(now());
                }
                if state.pending_since.is_some() {
                    state.config = Some(digest.clone());
                    if let Err(e) = run_cycle(&cycle, out, &builder, &publishes, &store, &mut state).await {
                        code = e.exit_code();
                        ctx.reporter().warn(format!("this cycle did not finish, the next one tries again: {e}"));
                        state.last_error = Some(e.to_string());
                        // Not published: the next cycle builds and publishes again.
                        state.pending_since.get_or_insert_with(now);
                    }
                }
            }
            Err(e) => {
                code = e.exit_code();
                state.mirror_errors += 1;
                state.consecutive_errors += 1;
                state.last_error = Some(e.to_string());
                let wait = state.wait(Duration::from_secs(cfg.interval_secs));
                ctx.reporter()
                    .warn(format!("the archive does not answer ({e}); polling again in {} s", wait.as_secs()));
            }
        }
        state.cycles += 1;
        state.save(&store)?;
        write_status(&cfg.status_file(), &state)?;
        *metrics.lock().unwrap_or_else(|p| p.into_inner()) = state.metrics();
        if args.once {
            return Ok(code);
        }
        tokio::time::sleep(state.wait(Duration::from_secs(cfg.interval_secs))).await;
    }
}

/// How a cycle builds: `farm build` here, or Jobs in a cluster.
struct Builder<'a> {
    argv: &'a [String],
    kube: Option<(&'a KubeBuild, &'a dyn ckms::kube::api::Jobs)>,
}

impl Builder<'_> {
    async fn build(&self, ctx: &Context, out: &Output) -> Result<BuildDone, Error> {
        if let Some((kube, jobs)) = self.kube {
            return kube.build(ctx, out, jobs).await;
        }
        let args = parse_build(self.argv).map_err(|e| Error::usage(e.to_string(), None))?;
        build(ctx, out, args).await
    }
}

/// Builds, then publishes every output; on success the pending change is published.
async fn run_cycle(
    ctx: &Context,
    out: &Output,
    builder: &Builder<'_>,
    publishes: &[Vec<String>],
    store: &Store,
    state: &mut State,
) -> Result<(), Error> {
    let started = Instant::now();
    let done = builder.build(ctx, out).await?;
    state.pairs_built += done.built_now as u64;
    state.pairs_failed = done.failed as u64;
    for a in publishes {
        let args = parse_publish(a).map_err(|e| Error::usage(e.to_string(), None))?;
        let at = args.out().map(|p| p.display().to_string()).unwrap_or_default();
        publish(ctx, out, args).await?;
        state.outputs.insert(at, now());
    }
    state.kernels = ready::of_store(store);
    state.kernels_seen.extend(state.kernels.iter().map(|k| k.kernel.clone()));
    if let Some(since) = state.pending_since.take() {
        state.last_latency_seconds = Some(now().saturating_sub(since) as f64);
    }
    state.last_publication = Some(now());
    state.last_error = None;
    ctx.reporter().info(format!("cycle done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(())
}

async fn poll_all(ctx: &Context, profiles: &[String]) -> Result<Vec<Polled>, Error> {
    let mut all = Vec::new();
    for name in profiles {
        let profile = ctx.catalog.profile(name)?;
        let suites = ctx.config.suites(&ctx.catalog, profile)?;
        all.extend(poll(&ctx.cache, &suites, &ctx.config.repo_options(profile, false)).await?);
    }
    Ok(all)
}

fn write_status(path: &std::path::Path, state: &State) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::usage(format!("{}: {e}", path.display()), None);
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::fs::write(tmp.path(), serde_json::to_vec_pretty(state).unwrap_or_default()).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// This process's CPU time so far (/proc/self/schedstat: nanoseconds on a CPU).
fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/schedstat").unwrap_or_default();
    text.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
}

/// Answers every request on `addr` with the current metrics (Prometheus scrapes GET /metrics;
/// one fixed answer needs no HTTP framework).
async fn serve_metrics(addr: &str, metrics: Arc<Mutex<String>>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                // The request is not needed beyond its arrival; bounded, and dropped.
                let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
                let body = metrics.lock().map(|m| m.clone()).unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(())
}
