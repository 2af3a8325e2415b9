use super::error::Error;
use ckms::context::Context;
use ckms::image;

use super::Output;
use ckms::report::table;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Assemble (or find up to date) the builder image for a kernel and load it into the engine.
    Build {
        /// Kernel release, as `uname -r` prints it (repeatable).
        #[arg(short = 'k', long = "kernelver", required = true)]
        kernels: Vec<String>,
        /// Look for the kernel only in this profile (default: every profile).
        #[arg(long, short = 'p')]
        profile: Option<String>,
        /// Rebuild and reload even if the engine has the image.
        #[arg(long)]
        force: bool,
    },
    /// Run a command in a kernel's builder image, sandboxed: non-root, no network, read-only
    /// root; --src is copied to the image's /build first and /build comes back into --out.
    Run {
        #[arg(short = 'k', long = "kernelver")]
        kernel: String,
        #[arg(long, short = 'p')]
        profile: Option<String>,
        /// Directory uploaded as /build (e.g. a module's sources).
        #[arg(long, value_name = "DIR")]
        src: Option<std::path::PathBuf>,
        /// Where /build is copied back to after the command (default ./ckms-out).
        #[arg(long, value_name = "DIR", default_value = "ckms-out")]
        out: std::path::PathBuf,
        /// Wall-clock limit in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List ckms's builder images.
    Ls,
    /// Remove builder images by kernel release, reference or ID.
    Rm {
        #[arg(required = true)]
        what: Vec<String>,
    },
    /// Remove images superseded by newer ones for the same kernel (or all with --all), and the
    /// cached packages and layers only they used.
    Prune {
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(ctx: &Context, out: &Output, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Build { kernels, profile, force } => build(ctx, out, &kernels, profile.as_deref(), force).await,
        Command::Run { kernel, profile, src, out: dest, timeout, command } => {
            run_in(ctx, out, &kernel, profile.as_deref(), src.as_deref(), &dest, timeout, command).await
        }
        Command::Ls => {
            let conn = ctx.image_engine().await?;
            let rows = image::list(conn.engine.as_ref()).await?;
            out.result(&rows, || listing(&rows));
            Ok(0)
        }
        Command::Rm { what } => {
            let conn = ctx.image_engine().await?;
            let mut removed = Vec::new();
            for w in &what {
                removed.extend(image::remove(conn.engine.as_ref(), w).await?);
            }
            out.result(&removed, || removed.iter().map(|r| format!("Removed {}\n", r.reference)).collect());
            Ok(0)
        }
        Command::Prune { all } => {
            let conn = ctx.image_engine().await?;
            let (removed, freed) = image::prune(conn.engine.as_ref(), &ctx.cache, all).await?;
            let result = serde_json::json!({ "removed": removed, "cache_blobs_freed": freed });
            out.result(&result, || format!("Removed {} image(s); freed {} cached file(s)\n", removed.len(), freed));
            Ok(0)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    ctx: &Context,
    out: &Output,
    kernel: &str,
    profile: Option<&str>,
    src: Option<&std::path::Path>,
    dest: &std::path::Path,
    timeout: u64,
    command: Vec<String>,
) -> Result<i32, Error> {
    let conn = ctx.engine().await?;
    let built = ctx.builder_image(conn.engine.as_ref(), kernel, profile, false).await?;
    let input = src.map(|dir| ckms::engine::Content::dir(dir, ""));
    let recipe = ctx.catalog.recipe("builder")?;
    let spec = image::run_spec(recipe, &built.reference, command, input, std::time::Duration::from_secs(timeout));
    let outcome = conn.engine.run(&spec).await?;
    let mut files = Vec::new();
    for (_, tar) in &outcome.outputs {
        std::fs::create_dir_all(dest)
            .map_err(|e| ckms::artifact::ArtifactError::Io { path: dest.into(), source: e })?;
        files.extend(ckms::artifact::unpack(&tar[..], dest, 0, 4 << 30)?);
    }
    let log = String::from_utf8_lossy(&outcome.log).into_owned();
    let result = serde_json::json!({
        "image": built.reference, "exit_code": outcome.exit_code, "timed_out": outcome.timed_out,
        "log": log, "files": files, "out": dest,
    });
    out.result(&result, || format!("{log}\n{} file(s) copied back to {}\n", files.len(), dest.display()));
    Ok(match (outcome.timed_out, outcome.exit_code) {
        (true, _) => ckms::diagnose::code::TIMEOUT,
        (false, 0) => 0,
        // dkms: "make returned non-zero".
        (false, _) => ckms::diagnose::code::BUILD_FAILED,
    })
}

async fn build(
    ctx: &Context,
    out: &Output,
    kernels: &[String],
    profile: Option<&str>,
    force: bool,
) -> Result<i32, Error> {
    let conn = ctx.image_engine().await?;
    let mut results = Vec::new();
    for release in kernels {
        results.push(ctx.builder_image(conn.engine.as_ref(), release, profile, force).await?);
    }
    out.result(&results, || {
        results
            .iter()
            .map(|b| {
                if b.loaded {
                    format!(
                        "Built {} ({}): {} package(s) downloaded ({:.1} MB), {} layer(s) written\n",
                        b.reference,
                        &b.id,
                        b.fetch.downloaded,
                        b.fetch.downloaded_bytes as f64 / 1e6,
                        b.layers_built
                    )
                } else {
                    format!("Up to date: {} ({})\n", b.reference, b.id)
                }
            })
            .collect()
    });
    Ok(0)
}

fn listing(rows: &[image::ImageRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let id = r.id.trim_start_matches("sha256:").get(..12).unwrap_or_default().to_string();
            vec![
                r.profile.clone(),
                r.kernel.clone(),
                r.compiler.clone(),
                id,
                format!("{:.0} MB", r.size as f64 / 1e6),
                r.reference.clone(),
            ]
        })
        .collect();
    table(&["PROFILE", "KERNEL", "COMPILER", "ID", "SIZE", "REFERENCE"], &rows)
}
