//! `ckms farm build|status|report|publish`: the prebuild farm over a store directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::Error;
use ckms::context::Context;
use ckms::diagnose::code;
use ckms::farm::evaluate::{cells, evaluate, in_list, Evaluated};
use ckms::farm::exec::Checked;
use ckms::farm::plan::FarmPlan;
use ckms::farm::report::{self, Counts, Matrix};
use ckms::farm::resign;
use ckms::farm::schedule::Outcome;
use ckms::farm::signing::signing;
use ckms::farm::store::{Damage, Store};
use ckms::farm::verdict::{self, BuildRun, Findings};
use ckms::publish::{signer::ModuleCert, sysext::Filesystem, Format};

use super::farm_run::{findings_text, run_pairs, HowToRun};
use super::registry::RegistryArgs;
use super::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build every module source for every selected kernel into a store, in parallel; pairs
    /// already in the store (same inputs) are not built again.
    Build(BuildArgs),
    /// The matrix of the last build: one line per pair (--json: one JSON object per line).
    Status(StoreArg),
    /// Write the matrix as one self-contained HTML file.
    Report(ReportArgs),
    /// Publish the store's built modules: a signed apt repository (apt), system extension
    /// images (sysext), a binary cache for ckms hosts (cache) or KMM images (kmm).
    Publish(Box<PublishArgs>),
    /// Scale the farm out on Kubernetes: render Indexed Jobs, collect their results.
    #[command(subcommand)]
    Kube(super::farm_kube::Command),
}

#[derive(clap::Args)]
pub struct StoreArg {
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
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

#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The HTML file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The store directory `farm build` wrote.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// What to write: apt, sysext, cache or kmm.
    #[arg(long, value_name = "FORMAT", value_parser = |s: &str| s.parse::<Format>())]
    format: Format,
    /// Where (replaced whole, atomically; default: <store>/publish/<format>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The farm's OpenPGP secret key (armored, no passphrase): signs the apt repository or the cache's index.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The certificate modules are signed with now (default: the one `farm build` signs with on
    /// this host): no module signed by another is published; cache: published for hosts.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// kmm: push the images to this registry (host[:port]) over the OCI distribution API.
    #[arg(long, value_name = "HOST")]
    registry: Option<String>,
    #[command(flatten)]
    registry_access: RegistryArgs,
    /// kmm: the images' repository; each is tagged <REF>:<kver> (default localhost/ckms/<name>).
    #[arg(long, value_name = "REF")]
    repository: Option<String>,
    /// kmm: load the images into the engine too.
    #[arg(long)]
    load: bool,
    /// Only this module (repeatable; default: every built module).
    #[arg(short = 'm', long = "module", value_name = "MODULE")]
    modules: Vec<String>,
    /// Only this kernel release (repeatable; default: every kernel).
    #[arg(short = 'k', long = "kernel", value_name = "KVER")]
    kernels: Vec<String>,
    /// Publish the other pairs when entries are damaged, leaving those out (each is named);
    /// without it a damaged entry stops publishing (exit 35).
    #[arg(long)]
    skip_damaged: bool,
    /// sysext: one image per kernel, NAME-<kernel>.raw, holding every selected module
    /// (default: one image per module and kernel). kmm: the images' and the Module's name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// sysext: the image's file system: erofs or squashfs.
    #[arg(long, value_name = "FS", default_value = "erofs", value_parser = |s: &str| s.parse::<Filesystem>())]
    filesystem: Filesystem,
    /// sysext: the target's os-release ID (default: the kernel's profile's).
    #[arg(long, value_name = "ID")]
    os_id: Option<String>,
    /// sysext: the target's os-release VERSION_ID (default: the kernel's profile's).
    #[arg(long, value_name = "VERSION")]
    os_version_id: Option<String>,
    /// sysext: match the host's SYSEXT_LEVEL instead of VERSION_ID.
    #[arg(long, value_name = "LEVEL", conflicts_with = "os_version_id")]
    sysext_level: Option<String>,
    /// sysext: the target's systemd architecture name (default: the profile's, e.g. x86-64).
    #[arg(long, value_name = "ARCH")]
    os_architecture: Option<String>,
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

pub async fn run(ctx: &Context, out: &Output, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Build(args) => build(ctx, out, args).await,
        Command::Status(args) => {
            let store = Store::open(&args.store)?;
            let Matrix { cells, damaged } = report::matrix(&store);
            if out.json {
                for (r, cached) in &cells {
                    println!("{}", serde_json::to_string(&report::line(&store, r, *cached)).unwrap_or_default());
                }
            } else {
                print!("{}", report::text(&store, &cells));
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

async fn publish(ctx: &Context, out: &Output, args: PublishArgs) -> Result<i32, Error> {
    let registry = args.registry.map(|host| args.registry_access.registry(host)).transpose()?;
    let module_cert = ModuleCert::configured(ctx, args.cert.as_deref())?;
    let req = ckms::publish::Request {
        module_cert,
        store: args.store,
        format: args.format,
        out: args.out,
        key: args.key,
        registry,
        repository: args.repository,
        load: args.load,
        skip_damaged: args.skip_damaged,
        modules: args.modules,
        kernels: args.kernels,
        name: args.name,
        filesystem: args.filesystem,
        os: ckms::publish::OsOverride {
            id: args.os_id,
            version_id: args.os_version_id,
            sysext_level: args.sysext_level,
            architecture: args.os_architecture,
        },
    };
    let published = match req.format {
        Format::Kmm if req.load => {
            let conn = ctx.image_engine().await?;
            ckms::publish::kmm::publish(&req, ctx, Some(conn.engine.as_ref())).await?
        }
        Format::Kmm => ckms::publish::kmm::publish(&req, ctx, None).await?,
        _ => ckms::publish::publish(&req, &ctx.catalog)?,
    };
    out.result(&published, || {
        let mut text: String =
            published.files.iter().map(|f| format!("{}\n", published.out.join(f).display())).collect();
        text += &format!(
            "{} file(s) written to {} ({})\n",
            published.files.len(),
            published.out.display(),
            published.format
        );
        text + &published.notes.iter().map(|n| format!("{n}\n")).collect::<String>()
    });
    Ok(0)
}

async fn build(ctx: &Context, out: &Output, mut args: BuildArgs) -> Result<i32, Error> {
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
        return Ok(0);
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
        return Ok(print_check(out, &plan, &built, &outcomes, &checked));
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
            text += &format!("{}: {} pair(s) loaded in one VM ({:.1} s)\n", b.kernel, b.loaded, b.seconds);
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
    Ok(run.verdict().exit_code())
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
