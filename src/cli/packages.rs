use super::error::Error;
use ckms::context::Context;
use ckms::repo::listing::{self, Filter, Listing};

use super::Output;
use ckms::report::table;

#[derive(clap::Args)]
pub struct Args {
    /// Only this profile (default: all).
    #[arg(long, short = 'p')]
    profile: Option<String>,
    /// Only module source packages: those that depend on dkms (leaves out dh-dkms, the debhelper addon).
    #[arg(long)]
    dkms: bool,
    /// Only names matching this regular expression (e.g. '-dkms$').
    #[arg(value_name = "REGEX", value_parser = regex::Regex::new)]
    pattern: Option<regex::Regex>,
}

pub async fn run(ctx: &Context, out: &Output, args: Args) -> Result<i32, Error> {
    let filter = Filter { name: args.pattern, dkms_only: args.dkms };
    let mut all = Listing { suites: Vec::new(), packages: Vec::new() };
    for p in ctx.profiles(args.profile.as_deref())? {
        let index = ctx.index(p).await?;
        let found = listing::list(&index, &filter);
        all.suites.extend(found.suites);
        all.packages.extend(found.packages);
    }
    out.result(&all, || {
        let rows: Vec<Vec<String>> =
            all.packages.iter().map(|p| vec![p.name.clone(), p.version.clone(), p.suite.clone()]).collect();
        table(&["PACKAGE", "VERSION", "SUITE"], &rows)
    });
    Ok(0)
}
