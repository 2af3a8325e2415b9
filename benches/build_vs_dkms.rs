//! Helper of `ci/bench/build-vs-dkms.sh`: the real-dkms side of one (kernel, package) pair, run
//! exactly as tests/dkms_compare.rs runs it (tests/support/dkms_reference.rs): Debian's own
//! `dkms` in the kernel's builder image plus a dkms layer, on the real `*-dkms` package of the
//! suite that ships the kernel.
//!
//! ```text
//! build_vs_dkms prepare KERNEL PACKAGE SRCDIR
//!     unpacks the package's source into SRCDIR/<module>-<version> (a --sourcetree for ckms),
//!     assembles the reference image; prints shell assignments: module, version,
//!     package_version, image, dkms_version
//! build_vs_dkms dkms KERNEL PACKAGE
//!     one `dkms build` on a fresh copy of the source; prints
//!     `exit=<dkms exit code> kos=<module files> dkms_secs=<the dkms command, timed inside the
//!     container> container_secs=<the whole container run, seen from the host>`
//! ```
//! Engine: `$CKMS_BENCH_ENGINE`; package cache: `$CKMS_TEST_CACHE`.

#[path = "../tests/support/dkms_packages.rs"]
mod dkms_packages;
#[path = "../tests/support/dkms_reference.rs"]
mod dkms_reference;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use ckms::engine::DockerApi;

const USAGE: &str = "usage: build_vs_dkms prepare KERNEL PACKAGE SRCDIR | build_vs_dkms dkms KERNEL PACKAGE";

#[tokio::main]
async fn main() {
    // `cargo bench` appends --bench.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let host = support::engine_host("CKMS_BENCH_ENGINE");
    let ctx = dkms_packages::context();
    let engine = DockerApi::connect(&host, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("engine {host} does not answer: {e}"));
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["prepare", kernel, package, srcdir] => {
            let source = source(&ctx, kernel, package, Path::new(srcdir)).await;
            let image =
                dkms_reference::reference_image(&ctx, &engine, kernel, &dkms_reference::reference_packages(package))
                    .await;
            for (k, v) in [
                ("module", &source.module),
                ("version", &source.version),
                ("package_version", &source.package_version),
                ("image", &image.reference),
                ("dkms_version", &image.dkms_version),
            ] {
                println!("{k}='{v}'");
            }
        }
        ["dkms", kernel, package] => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let source = source(&ctx, kernel, package, dir.path()).await;
            let image =
                dkms_reference::reference_image(&ctx, &engine, kernel, &dkms_reference::reference_packages(package))
                    .await;
            let recipe = ctx.catalog.recipe("builder").expect("the builder recipe");
            let r = dkms_reference::run_dkms(&engine, recipe, &image, kernel, &source).await;
            println!(
                "exit={} kos={} dkms_secs={:.2} container_secs={:.2}",
                r.exit_code,
                r.kos.len(),
                r.dkms_secs,
                r.container_secs
            );
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// The package from the index of the profile that offers `kernel` (the distro's pairing).
async fn source(ctx: &ckms::context::Context, kernel: &str, package: &str, dest: &Path) -> dkms_packages::DkmsSource {
    let profile = dkms_packages::profile_of(ctx, kernel).await;
    let index = dkms_packages::index(ctx, &profile).await;
    dkms_packages::fetch_source(ctx, &index, package, dest).await
}
