use ckms::context::Context;
use ckms::error::Error;
use ckms::image;

use super::{table, Output};

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
        Command::Ls => {
            let conn = ctx.engine().await?;
            let rows = image::list(&conn.engine).await?;
            out.result(&rows, || listing(&rows));
            Ok(0)
        }
        Command::Rm { what } => {
            let conn = ctx.engine().await?;
            let mut removed = Vec::new();
            for w in &what {
                removed.extend(image::remove(&conn.engine, w).await?);
            }
            out.result(&removed, || removed.iter().map(|r| format!("Removed {}\n", r.reference)).collect());
            Ok(0)
        }
        Command::Prune { all } => {
            let conn = ctx.engine().await?;
            let (removed, freed) = image::prune(&conn.engine, &ctx.cache, all).await?;
            let result = serde_json::json!({ "removed": removed, "cache_blobs_freed": freed });
            out.result(&result, || {
                format!("Removed {} image(s); freed {} cached file(s)\n", removed.len(), freed)
            });
            Ok(0)
        }
    }
}

async fn build(ctx: &Context, out: &Output, kernels: &[String], profile: Option<&str>, force: bool) -> Result<i32, Error> {
    let conn = ctx.engine().await?;
    let mut results = Vec::new();
    for release in kernels {
        let (p, index, kernel) = ctx.find_kernel(release, profile).await?;
        let recipe = ctx.catalog.recipe("builder")?;
        let plan = image::plan(p, recipe, &index, &kernel, &[])?;
        let built = image::build(&ctx.cache, &conn.engine, p, recipe, &plan, force, ctx.reporter()).await?;
        results.push(built);
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
            vec![r.profile.clone(), r.kernel.clone(), r.compiler.clone(), id, format!("{:.0} MB", r.size as f64 / 1e6), r.reference.clone()]
        })
        .collect();
    table(&["PROFILE", "KERNEL", "COMPILER", "ID", "SIZE", "REFERENCE"], &rows)
}
