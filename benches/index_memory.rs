//! Helper of `ci/bench/memory.sh`: what the prebuild farm will do with the repository indexes,
//! in one process. Loads the index of every profile named (all kept in memory at once), finds
//! each kernel in the profile that offers it and plans its builder image (the dependency
//! resolutions an image build runs), then prints the time taken and the peak RSS.
//!
//! ```text
//! index_memory PROFILE... -- KERNEL...
//! ```
//! Cache: `$CKMS_CACHE_DIR` (else ckms's config), as for `ckms` itself.

use std::sync::Arc;
use std::time::Instant;

use ckms::config::Config;
use ckms::context::Context;
use ckms::report::Silent;

const USAGE: &str = "usage: index_memory PROFILE... -- KERNEL...";

/// The process's peak resident set (VmHWM), in kB.
fn peak_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` appends --bench.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let split = args.iter().position(|a| a == "--").unwrap_or_else(|| panic!("{USAGE}"));
    let (profiles, kernels) = (&args[..split], &args[split + 1..]);
    if profiles.is_empty() {
        panic!("{USAGE}");
    }
    let config = Config::load().unwrap_or_else(|e| panic!("ckms config: {e}"));
    let ctx = Context::new(config, Arc::new(Silent), false).unwrap_or_else(|e| panic!("ckms context: {e}"));
    let recipe = ctx.catalog.recipe("builder").unwrap_or_else(|e| panic!("builder recipe: {e}"));

    let t = Instant::now();
    let mut loaded = Vec::new();
    for name in profiles {
        let profile = ctx.catalog.profile(name).unwrap_or_else(|e| panic!("{e}"));
        let index = ctx.index(profile).await.unwrap_or_else(|e| panic!("index of {name}: {e}"));
        println!("index {name}: {} packages", index.len());
        loaded.push((profile, index));
    }
    let load_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for release in kernels {
        let (profile, index, kernel) = loaded
            .iter()
            .find_map(|(p, ix)| Some((*p, ix, ckms::kernel::find(p, ix, release)?)))
            .unwrap_or_else(|| panic!("no profile named offers kernel {release}"));
        let plan = ckms::image::plan(ckms::image::Sources::native(profile, index), recipe, &kernel, &[])
            .unwrap_or_else(|e| panic!("planning {release}: {e}"));
        println!("kernel {release} ({}): {} packages planned", profile.name, plan.packages().count());
    }
    let plan_secs = t.elapsed().as_secs_f64();
    println!("load_secs={load_secs:.3} plan_secs={plan_secs:.3} peak_rss_kb={}", peak_kb());
}
