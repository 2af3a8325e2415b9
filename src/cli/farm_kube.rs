//! `ckms farm kube render|collect|pod`: the farm's pairs built by Kubernetes Indexed Jobs.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::farm_run::{findings_text, run_pairs, HowToRun};
use ckms::context::Context;
use ckms::farm::evaluate::{evaluate, Evaluated};
use ckms::farm::exec::Signing;
use ckms::farm::plan::Work;
use ckms::farm::report::Cell;
use ckms::farm::signing::signing;
use ckms::farm::store::{Lookup, Status, Store};
use ckms::farm::verdict::{CollectRun, Findings, Verdict};
use ckms::kube::collect::{choose, transfer, Collected};
use ckms::kube::plan::KubePlan;

use super::registry::RegistryArgs;
use super::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Push the builder images the store lacks pairs for and write the manifests that build
    /// those pairs (`kubectl apply -f DIR`): per kernel an Indexed Job, one pair per index.
    Render(Box<RenderArgs>),
    /// Check the pods' results against the plan, sign them here and put them in the store.
    Collect(CollectArgs),
    /// What a build pod runs (the pod's image has ckms and the Job's plan): builds index
    /// $JOB_COMPLETION_INDEX into the results volume.
    Pod(PodArgs),
    /// `farm follow` as a Deployment: write the namespace, the follow pod's account, Role,
    /// claims, ConfigMap, Deployment and Service (`kubectl apply -f DIR`); its cycles build
    /// through Jobs it creates.
    FollowRender(Box<super::farm_kube_follow::FollowRenderArgs>),
}

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The store directory: pairs it holds are left out.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Where to push the images: HOST[:PORT][/REPOSITORY] (repository default: ckms/build).
    #[arg(long, value_name = "REF")]
    registry: String,
    #[command(flatten)]
    access: RegistryArgs,
    /// Kernels, as for `farm build`; repeatable.
    #[arg(short = 'k', long = "kernel", value_name = "SELECTOR")]
    kernels: Vec<String>,
    /// Look for kernels and deb: packages only in this profile.
    #[arg(long, short = 'p')]
    profile: Option<String>,
    /// The directory the manifests are written to.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    out: PathBuf,
    /// Pods of one Job running at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallelism: i32,
    /// Retries of an index whose pod failed (a failed build is a result, not a pod failure).
    #[arg(long, value_name = "N", default_value_t = 1)]
    backoff_limit_per_index: i32,
    /// CPUs per build pod (requested and limited; also make's -j).
    #[arg(long, value_name = "N", default_value_t = 2)]
    cpus: u32,
    /// The PersistentVolumeClaim the pods write their results to.
    #[arg(long, value_name = "NAME", default_value = "ckms-results")]
    results_claim: String,
    /// The size the rendered claim asks for, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 10)]
    results_gib: i64,
    /// The ckms binary the pods run (default: this one).
    #[arg(long, value_name = "FILE")]
    ckms_binary: Option<PathBuf>,
    /// Module sources, as for `farm build`.
    #[arg(value_name = "SOURCE")]
    sources: Vec<String>,
}

#[derive(clap::Args)]
pub struct CollectArgs {
    /// The store `render` was given.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// The results volume's contents (`<job>/<index>/` per pod).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Sign with this private key (default: as `farm build`).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The certificate of --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Then rebuild N of the collected pairs, chosen at random, on this machine's engine (as
    /// `farm build --check`): if one differs or cannot be rebuilt, nothing of this collect is
    /// stored (the collected entries are kept aside, and said where).
    #[arg(long, value_name = "N")]
    check: Option<usize>,
}

#[derive(clap::Args)]
pub struct PodArgs {
    /// The Job's index to build.
    #[arg(long, env = "JOB_COMPLETION_INDEX", value_name = "N")]
    index: usize,
    /// The pod's own result directory.
    #[arg(long, value_name = "DIR")]
    results: PathBuf,
    /// The Job's plan (default: the one in the image).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
}

/// Where the store keeps the plans it rendered, which `collect` reads.
const PLANS: &str = "kube";

pub async fn run(ctx: &Context, out: &Output, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Render(args) => render(ctx, out, *args).await,
        Command::Collect(args) => collect(ctx, out, args).await,
        Command::FollowRender(args) => super::farm_kube_follow::run(ctx, out, *args).await,
        Command::Pod(args) => {
            let recipe = ctx.catalog.recipe("builder")?;
            let plan = args.plan.unwrap_or_else(ckms::kube::pod::job_file);
            let outcome = ckms::kube::pod::run(recipe, &plan, args.index, &args.results).await?;
            eprintln!("ckms: index {}: {outcome:?}", args.index);
            Ok(0)
        }
    }
}

async fn render(ctx: &Context, out: &Output, args: RenderArgs) -> Result<i32, Error> {
    let dir = args.out.clone();
    let done = render_jobs(ctx, args).await?;
    let rendered = &done.rendered;
    out.result(rendered, || {
        let mut text: String = rendered.files.iter().map(|f| format!("{}\n", f.display())).collect();
        for l in &rendered.left_out {
            text += &format!("left out: {l}\n");
        }
        let pairs: usize = rendered.plan.jobs.iter().map(|j| j.pairs.len()).sum();
        text + &format!(
            "{} Job(s), {pairs} pair(s) to build ({} already stored); apply with: kubectl apply -f {}\n",
            rendered.plan.jobs.len(),
            done.keys.len() - done.todo,
            dir.display()
        )
    });
    Ok(0)
}

/// What [`render_jobs`] did.
pub(super) struct RenderDone {
    pub rendered: ckms::kube::render::Rendered,
    /// The key of every pair of the matrix, and how many of them the Jobs build.
    pub keys: Vec<String>,
    pub todo: usize,
}

/// `farm kube render` without its output: the Jobs written and their plan kept in the store.
pub(super) async fn render_jobs(ctx: &Context, args: RenderArgs) -> Result<RenderDone, Error> {
    if args.kernels.is_empty() || args.sources.is_empty() {
        return Err(Error::usage(
            "farm kube render needs at least one kernel selector (-k) and one source",
            Some("e.g. ckms farm kube render --store DIR --registry HOST/ckms/build -k @debian-bookworm:latest -o DIR deb:v4l2loopback-dkms".into()),
        ));
    }
    let Evaluated { store, work, plan, todo, .. } =
        evaluate(ctx, &args.store, &args.kernels, &args.sources, args.profile.as_deref(), false).await?;
    let (host, repository) = match args.registry.split_once('/') {
        Some((h, r)) => (h.to_string(), r.to_string()),
        None => (args.registry.clone(), "ckms/build".to_string()),
    };
    let binary = match args.ckms_binary {
        Some(b) => b,
        None => std::env::current_exe().map_err(|e| Error::usage(format!("the running ckms: {e}"), None))?,
    };
    let req = ckms::kube::render::Request {
        registry: args.access.registry(host)?,
        repository,
        out: args.out,
        binary,
        parallelism: args.parallelism,
        backoff_limit_per_index: args.backoff_limit_per_index,
        cpu_millis: i64::from(args.cpus.max(1)) * 1000,
        claim: args.results_claim,
        claim_bytes: args.results_gib << 30,
        sources: args.sources,
        kernels: args.kernels,
        profile: args.profile,
    };
    let rendered = ckms::kube::render::render(ctx, &plan, &work, &todo, &req).await?;
    let json = rendered.plan.to_json();
    let name = format!("{PLANS}/{}.json", &ckms::cache::sha256_hex(&json)[..16]);
    std::fs::create_dir_all(store.root().join(PLANS))
        .map_err(|e| Error::usage(format!("{}: {e}", store.root().display()), None))?;
    store.write_file(&name, &json)?;
    let keys = plan.pairs.iter().map(|p| p.key.clone()).collect();
    Ok(RenderDone { rendered, keys, todo: todo.len() })
}

/// A `farm kube render` command line, from follow's `[kube]` table.
#[derive(clap::Parser)]
#[command(name = "farm kube render", no_binary_name = true)]
struct RenderLine {
    #[command(flatten)]
    args: RenderArgs,
}

pub(super) fn parse_render(argv: &[String]) -> Result<RenderArgs, clap::Error> {
    <RenderLine as clap::Parser>::try_parse_from(argv).map(|l| l.args)
}

/// A `farm kube collect` command line, as a follow cycle collects.
#[derive(clap::Parser)]
#[command(name = "farm kube collect", no_binary_name = true)]
struct CollectLine {
    #[command(flatten)]
    args: CollectArgs,
}

pub(super) fn parse_collect(argv: &[String]) -> Result<CollectArgs, clap::Error> {
    <CollectLine as clap::Parser>::try_parse_from(argv).map(|l| l.args)
}

pub(super) async fn collect(ctx: &Context, out: &Output, args: CollectArgs) -> Result<i32, Error> {
    let key = args.key.as_deref().zip(args.cert.as_deref());
    let signing = signing(ctx, key)?;
    let plans = rendered_plans(&args.store)?;
    let mut all = Collected::default();
    // Each plan evaluated, and the matrix `farm status`, `report` and `publish` read, as
    // `farm build` leaves it (saved once the entries are in the store).
    let mut evaluated: Vec<(Evaluated, &KubePlan, Vec<Cell>)> = Vec::new();
    // --check: collected into a side store, which the store takes only once the rebuilds agree.
    let side = match args.check {
        Some(_) => Some(Side::new(ctx, &args.store)?),
        None => None,
    };
    for kube in &plans {
        if !kube.jobs.iter().any(|j| args.from.join(&j.name).is_dir()) {
            continue;
        }
        let ev = evaluate(ctx, &args.store, &kube.kernels, &kube.sources, kube.profile.as_deref(), false).await?;
        // A writer: what writers that are gone left staged goes.
        ev.store.clean_staging();
        let into = side.as_ref().map_or(&ev.store, |s| &s.store);
        let done =
            ckms::kube::collect::collect(ctx, &ev.plan, &ev.work, into, kube, &args.from, signing.clone()).await?;
        let now: std::collections::HashSet<&str> =
            kube.jobs.iter().flat_map(|j| j.pairs.iter().map(|p| p.key.as_str())).collect();
        let cells: Vec<Cell> =
            ev.plan.pairs.iter().enumerate().map(|(i, p)| ev.plan.cell(i, !now.contains(p.key.as_str()))).collect();
        all.stored.extend(done.stored);
        all.refused.extend(done.refused);
        all.missing.extend(done.missing);
        evaluated.push((ev, kube, cells));
    }
    if evaluated.is_empty() {
        return Err(Error::usage(
            format!("{} holds no results of a Job rendered for the store {}", args.from.display(), args.store.display()),
            Some("name the results volume's directory (it holds <job>/<index>/ per pod) and the store `farm kube render` was given".into()),
        ));
    }
    let check = match (side, args.check) {
        (Some(side), Some(n)) => Some(side.check(ctx, out, signing, n, &evaluated, &mut all).await?),
        _ => None,
    };
    if check.as_ref().is_none_or(|c| c.passed) {
        for (ev, _, cells) in &evaluated {
            ckms::farm::report::save_matrix(&ev.store, cells)?;
        }
    }
    let mut doc = serde_json::to_value(&all).unwrap_or_default();
    if let (Some(c), Some(map)) = (&check, doc.as_object_mut()) {
        map.insert("check".into(), serde_json::to_value(c).unwrap_or_default());
    }
    out.result(&doc, || {
        let mut text = String::new();
        for (label, status) in &all.stored {
            text += &format!("stored {status:<8} {label}\n");
        }
        for r in &all.refused {
            text += &format!("REFUSED: {r}\n");
        }
        for m in &all.missing {
            text += &format!("no result: {m}\n");
        }
        if let Some(c) = &check {
            text += &c.text;
        }
        text + &format!(
            "{} stored, {} refused, {} without a result\n",
            all.stored.len(),
            all.refused.len(),
            all.missing.len()
        )
    });
    let failed = all.stored.iter().filter(|(_, s)| *s == Status::Failed).count();
    let run = CollectRun { refused: all.refused.len(), missing: all.missing.len(), failed };
    Ok(run.verdict().exit_code())
}

/// Where `collect --check` collects: a store of its own in the farm's work area.
struct Side {
    dir: tempfile::TempDir,
    store: Store,
}

/// What `collect --check` found.
#[derive(serde::Serialize)]
struct CheckSummary {
    /// Pairs rebuilt, and rebuilt identical.
    rebuilt: usize,
    identical: usize,
    /// Every rebuild agreed: the collected entries are in the store.
    passed: bool,
    /// Where the collected entries are kept when they are not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<PathBuf>,
    #[serde(skip)]
    text: String,
}

impl Side {
    fn new(ctx: &Context, store: &Path) -> Result<Side, Error> {
        let store = std::path::absolute(store).map_err(|e| Error::usage(format!("{}: {e}", store.display()), None))?;
        let dir = Work::for_store(ctx, &store).scratch()?;
        let store = Store::open(&dir.path().join("store"))?;
        Ok(Side { dir, store })
    }

    /// Rebuilds `n` collected pairs, chosen at random, and compares them with what the pods
    /// gave. All agree: every collected entry goes into the store. Else none does (a pod that
    /// forged one result may have forged others the sample missed): they are counted as
    /// refused and kept aside.
    async fn check(
        self,
        ctx: &Context,
        out: &Output,
        signing: Option<Signing>,
        n: usize,
        evaluated: &[(Evaluated, &KubePlan, Vec<Cell>)],
        all: &mut Collected,
    ) -> Result<CheckSummary, Error> {
        let collected: Vec<(usize, usize)> = evaluated
            .iter()
            .enumerate()
            .flat_map(|(e, (ev, kube, _))| {
                let keys: Vec<&str> = kube.jobs.iter().flat_map(|j| j.pairs.iter().map(|p| p.key.as_str())).collect();
                ev.plan
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| keys.contains(&p.key.as_str()))
                    .filter(|(_, p)| matches!(self.store.get(&p.key), Lookup::Found(_)))
                    .map(move |(i, _)| (e, i))
            })
            .collect();
        let chosen = choose(n, &collected);
        let mut summary =
            CheckSummary { rebuilt: chosen.len(), identical: 0, passed: true, kept: None, text: String::new() };
        for (e, (ev, _, _)) in evaluated.iter().enumerate() {
            let mut mine: Vec<usize> = chosen.iter().filter(|(x, _)| *x == e).map(|(_, i)| *i).collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_unstable();
            let how = HowToRun { signing: signing.clone(), jobs: None, check: true, retry_failed: false };
            let (outcomes, checked) = run_pairs(ctx, out, &self.store, &ev.work, &ev.plan, &mine, &how).await?;
            let findings = Findings::of(&ev.plan, &mine, &outcomes, &checked);
            summary.identical += findings.identical;
            summary.passed &= findings.verdict() == Verdict::Done;
            summary.text += &findings_text(&ev.plan, &findings);
        }
        summary.text += &format!(
            "--check: {} of {} rebuilt pair(s) identical to the pods' ({} collected)\n",
            summary.identical,
            chosen.len(),
            collected.len()
        );
        if summary.passed {
            for &(e, i) in &collected {
                let ev = &evaluated[e].0;
                transfer(&self.store, &ev.store, &ev.plan.pairs[i].key)?;
            }
        } else {
            let kept = self.dir.keep();
            for (label, _) in all.stored.drain(..) {
                all.refused.push(format!(
                    "{label}: not stored: a pair this collect rebuilt here differs from its pod's result or could \
                     not be rebuilt"
                ));
            }
            summary.text +=
                &format!("nothing of this collect was stored; its entries are kept in {}\n", kept.display());
            summary.kept = Some(kept);
        }
        Ok(summary)
    }
}

/// Every plan `render` kept in the store.
fn rendered_plans(store: &std::path::Path) -> Result<Vec<KubePlan>, Error> {
    let dir = store.join(PLANS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| {
            Error::usage(
                format!("{}: {e}", dir.display()),
                Some("`ckms farm kube render --store` with this store writes the plans collect reads".into()),
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.iter().map(|f| KubePlan::read(f).map_err(Error::from)).collect()
}
