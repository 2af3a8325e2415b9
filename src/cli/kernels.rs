use super::error::Error;
use ckms::context::Context;
use ckms::kernel;

use super::Output;
use ckms::report::table;

#[derive(clap::Args)]
pub struct Args {
    /// Only this profile (default: all).
    #[arg(long, short = 'p')]
    profile: Option<String>,
}

pub async fn run(ctx: &Context, out: &Output, args: Args) -> Result<i32, Error> {
    let mut all = Vec::new();
    for p in ctx.profiles(args.profile.as_deref())? {
        let index = ctx.index(p).await?;
        all.extend(kernel::list(p, &index));
    }
    out.result(&all, || {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|k| {
                vec![
                    k.release.clone(),
                    k.version.clone(),
                    k.compiler.clone().unwrap_or_else(|| "?".into()),
                    k.profile.clone(),
                    k.suite.clone(),
                ]
            })
            .collect();
        table(&["RELEASE", "VERSION", "COMPILER", "PROFILE", "SUITE"], &rows)
    });
    Ok(0)
}
