//! ckms vs real dkms on real Debian packages (issue: "ckms builds exactly the set of .ko files
//! that real dkms builds, or fails where dkms fails").
//!
//! The reference side runs Debian's own `dkms` in the kernel's builder image (plus a layer with
//! `dkms`), on the source of the real `*-dkms` package of the suite that ships the kernel
//! (tests/support/dkms_reference.rs). Its results are pinned in [`EXPECTED`] and in
//! docs/dkms-comparison.md. The ckms side ([`ckms_build`]) runs `dkms add` and `dkms build` with ckms
//! as `dkms` (as a package's maintainer script does) on the same source
//! for the same kernel and is compared with dkms's result: same exit (built or failed), the
//! same module files, and for a failure dkms's reason in ckms's make.log.
//!
//! What runs by default (CKMS_TEST_DKMS_COMPARE=all runs every side of every pair on both):
//! on Podman, ckms builds all 13 pairs and real dkms the quick ones (v4l2loopback, digimend);
//! on Docker, whose images are the same bytes, both sides build the quick pairs.
mod support;

#[path = "support/dkms_packages.rs"]
mod dkms_packages;
#[path = "support/dkms_reference.rs"]
mod dkms_reference;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ckms::engine::DockerApi;
use dkms_packages::DkmsSource;
use dkms_reference::{is_module_file, RefResult};

// ---------------------------------------------------------------------------------------------
// ckms's side: ckms as `dkms`.
// ---------------------------------------------------------------------------------------------

/// What ckms as `dkms` did for one pair.
#[derive(Debug)]
struct CkmsResult {
    exit_code: i32,
    /// Module files under `<dkmstree>/<m>/<v>/<kernel>/x86_64/module/`.
    kos: BTreeSet<String>,
    make_log: String,
    /// Wall time of `dkms add` and `dkms build`.
    secs: f64,
    /// The run, for messages.
    shown: String,
}

/// ckms's side of one pair, through the dkms verbs a package's maintainer script runs: ckms
/// called as `dkms` (speaking `release`, the dkms of the kernel's distribution) adds the
/// unpacked source and builds it for the kernel, with its own tree in `dkmstree`.
fn ckms_build(engine_host: &str, kernel: &str, release: &str, source: &DkmsSource, dkmstree: &Path) -> CkmsResult {
    let sourcetree = source.dir.parent().expect("sources are unpacked as <sourcetree>/<module>-<version>");
    let trees = [
        "--sourcetree".to_string(),
        sourcetree.display().to_string(),
        "--dkmstree".into(),
        dkmstree.display().to_string(),
    ];
    let bin = tempfile::tempdir().expect("a directory for the dkms link");
    let dkms = |verb: &[&str]| {
        support::dkms(bin.path(), verb.iter().copied().chain(trees.iter().map(String::as_str)))
            .env("CKMS_ENGINE_HOST", engine_host)
            .env("CKMS_CACHE_DIR", support::shared_cache())
            .env("CKMS_DKMS_RELEASE", release)
            .run()
    };
    let started = Instant::now();
    let added = dkms(&["add", "-m", &source.module, "-v", &source.version]);
    let run = if added.code == 0 {
        dkms(&["build", "-m", &source.module, "-v", &source.version, "-k", kernel])
    } else {
        added
    };
    let secs = started.elapsed().as_secs_f64();
    let pair = dkmstree.join(&source.module).join(&source.version);
    let built = pair.join(kernel).join("x86_64");
    let make_log = std::fs::read_to_string(built.join("log/make.log"))
        .or_else(|_| std::fs::read_to_string(pair.join("build/make.log")))
        .unwrap_or_default();
    CkmsResult {
        exit_code: run.code,
        kos: support::entries(&built.join("module")).into_iter().filter(|f| is_module_file(f)).collect(),
        make_log,
        secs,
        shown: run.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// What real dkms does (measured; see docs/dkms-comparison.md).
// ---------------------------------------------------------------------------------------------

/// One (package, kernel) pair: the package comes from `source_profile`'s index, the kernel is
/// `Bookworm` (6.1.0-56-amd64) or `Trixie` (the newest 6.12.*+deb13-amd64).
struct Expected {
    package: &'static str,
    source_profile: &'static str,
    kernel: Kernel,
    /// dkms's exit code: 0 built, 10 make failed.
    exit_code: i64,
    /// Module names (without `.ko` and compression suffix) in dkms's module directory.
    modules: &'static [&'static str],
    /// For a failure: a line make.log must hold.
    make_log_says: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    Bookworm,
    Trixie,
}

impl Kernel {
    /// The dkms release the kernel's distribution ships.
    fn dkms_release(self) -> &'static str {
        match self {
            Kernel::Bookworm => "3.0.10",
            Kernel::Trixie => "3.2.2",
        }
    }
}

const fn built(package: &'static str, kernel: Kernel, modules: &'static [&'static str]) -> Expected {
    let source_profile = match kernel {
        Kernel::Bookworm => "debian-bookworm",
        Kernel::Trixie => "debian-trixie",
    };
    Expected { package, source_profile, kernel, exit_code: 0, modules, make_log_says: None }
}

const DAHDI_2_11: &[&str] = &[
    "dahdi",
    "dahdi_dummy",
    "dahdi_dynamic",
    "dahdi_dynamic_eth",
    "dahdi_dynamic_loc",
    "dahdi_echocan_jpah",
    "dahdi_echocan_kb1",
    "dahdi_echocan_mg2",
    "dahdi_echocan_oslec",
    "dahdi_echocan_sec",
    "dahdi_echocan_sec2",
    "dahdi_transcode",
    "dahdi_voicebus",
    "oct612x",
    "opvxa1200",
    "pciradio",
    "tor2",
    "wcb4xxp",
    "wcfxo",
    "wct1xxp",
    "wct4xxp",
    "wctc4xxp",
    "wctdm",
    "wctdm24xxp",
    "wcte11xp",
    "wcte12xp",
    "xpd_bri",
    "xpd_fxo",
    "xpd_fxs",
    "xpd_pri",
    "xpp",
    "xpp_usb",
];

const DAHDI_3_1: &[&str] = &[
    "dahdi",
    "dahdi_dummy",
    "dahdi_dynamic",
    "dahdi_dynamic_eth",
    "dahdi_dynamic_ethmf",
    "dahdi_dynamic_loc",
    "dahdi_echocan_jpah",
    "dahdi_echocan_kb1",
    "dahdi_echocan_mg2",
    "dahdi_echocan_oslec",
    "dahdi_echocan_sec",
    "dahdi_echocan_sec2",
    "dahdi_transcode",
    "dahdi_voicebus",
    "echo",
    "icE1usb",
    "oct612x",
    "wcaxx",
    "wcb4xxp",
    "wct4xxp",
    "wctc4xxp",
    "wctdm24xxp",
    "wcte11xp",
    "wcte12xp",
    "wcte13xp",
    "wcte43x",
    "xpd_bri",
    "xpd_echo",
    "xpd_fxo",
    "xpd_fxs",
    "xpd_pri",
    "xpp",
    "xpp_usb",
    "zaphfc",
];

const XTABLES_ADDONS_3_23: &[&str] = &[
    "compat_xtables",
    "xt_ACCOUNT",
    "xt_CHAOS",
    "xt_DELUDE",
    "xt_DHCPMAC",
    "xt_DNETMAP",
    "xt_ECHO",
    "xt_IPMARK",
    "xt_LOGMARK",
    "xt_PROTO",
    "xt_SYSRQ",
    "xt_TARPIT",
    "xt_condition",
    "xt_fuzzy",
    "xt_geoip",
    "xt_iface",
    "xt_ipp2p",
    "xt_ipv4options",
    "xt_length2",
    "xt_lscan",
    "xt_pknock",
    "xt_psd",
    "xt_quota2",
];

/// 3.27 adds xt_asn.
const XTABLES_ADDONS_3_27: &[&str] = &[
    "compat_xtables",
    "xt_ACCOUNT",
    "xt_CHAOS",
    "xt_DELUDE",
    "xt_DHCPMAC",
    "xt_DNETMAP",
    "xt_ECHO",
    "xt_IPMARK",
    "xt_LOGMARK",
    "xt_PROTO",
    "xt_SYSRQ",
    "xt_TARPIT",
    "xt_asn",
    "xt_condition",
    "xt_fuzzy",
    "xt_geoip",
    "xt_iface",
    "xt_ipp2p",
    "xt_ipv4options",
    "xt_length2",
    "xt_lscan",
    "xt_pknock",
    "xt_psd",
    "xt_quota2",
];

const GOST_CRYPTO: &[&str] = &[
    "gost-test",
    "gost28147_generic",
    "gosthash94_generic",
    "kuznyechik_generic",
    "magma_generic",
    "streebog_generic",
];

/// The 12 pairs, then one cross pair that real dkms fails on.
const EXPECTED: &[Expected] = &[
    built("v4l2loopback-dkms", Kernel::Bookworm, &["v4l2loopback"]),
    built("xtables-addons-dkms", Kernel::Bookworm, XTABLES_ADDONS_3_23),
    built("dahdi-dkms", Kernel::Bookworm, DAHDI_2_11),
    built("jool-dkms", Kernel::Bookworm, &["jool", "jool_common", "jool_siit"]),
    built("gost-crypto-dkms", Kernel::Bookworm, GOST_CRYPTO),
    built("digimend-dkms", Kernel::Bookworm, &["hid-kye", "hid-polostar", "hid-uclogic", "hid-viewsonic"]),
    built("v4l2loopback-dkms", Kernel::Trixie, &["v4l2loopback"]),
    built("xtables-addons-dkms", Kernel::Trixie, XTABLES_ADDONS_3_27),
    built("dahdi-dkms", Kernel::Trixie, DAHDI_3_1),
    built("jool-dkms", Kernel::Trixie, &["jool", "jool_common", "jool_siit"]),
    built("gost-crypto-dkms", Kernel::Trixie, GOST_CRYPTO),
    built(
        "digimend-dkms",
        Kernel::Trixie,
        &["hid-digimend-kye", "hid-digimend-polostar", "hid-digimend-uclogic", "hid-digimend-viewsonic"],
    ),
    // Not one of the distro's pairings: bookworm's v4l2loopback 0.12.7 is older than the 6.12
    // kernel's V4L2 API, so dkms's make fails; ckms must fail too, with the same make.log.
    Expected {
        package: "v4l2loopback-dkms",
        source_profile: "debian-bookworm",
        kernel: Kernel::Trixie,
        exit_code: 10,
        modules: &[],
        make_log_says: Some("error: implicit declaration of function 'strlcpy'"),
    },
];

/// The kernel's modules are compressed like this (dkms follows the installed kernel): 6.1.0-56
/// ships plain `.ko`, trixie's 6.12 kernels `.ko.xz`.
fn module_suffix(kernel: Kernel) -> &'static str {
    match kernel {
        Kernel::Bookworm => ".ko",
        Kernel::Trixie => ".ko.xz",
    }
}

// ---------------------------------------------------------------------------------------------
// The comparison.
// ---------------------------------------------------------------------------------------------

/// One row of the printed table.
struct Row {
    expected: &'static Expected,
    kernel: String,
    reference: Option<RefResult>,
    source: DkmsSource,
    ckms: Option<CkmsResult>,
}

/// Runs the reference side for the pairs `reference_for` selects and the ckms side (once
/// ready) for all pairs on `var`'s engine; fails on any difference from [`EXPECTED`] or
/// between the two sides.
async fn compare(var: &str, reference_for: impl Fn(&Expected) -> bool, ckms_for: impl Fn(&Expected) -> bool) {
    let host = support::engine_host(var);
    let started = Instant::now();
    let ctx = dkms_packages::context();
    let engine = DockerApi::connect(&host, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("engine {host} ({var}) does not answer: {e}"));
    let trixie = dkms_reference::trixie_kernel(&ctx).await;
    let recipe = ctx.catalog.recipe("builder").expect("the builder recipe");
    let work = tempfile::tempdir().expect("a work directory");
    let mut images = HashMap::new();
    let mut indexes = HashMap::new();
    let mut rows = Vec::new();
    let mut failures = Vec::new();

    for (i, e) in EXPECTED.iter().enumerate() {
        let kernel = match e.kernel {
            Kernel::Bookworm => dkms_reference::BOOKWORM_KERNEL.to_string(),
            Kernel::Trixie => trixie.clone(),
        };
        let src_dir = work.path().join(format!("src-{i}"));
        if !indexes.contains_key(e.source_profile) {
            indexes.insert(e.source_profile, dkms_packages::index(&ctx, e.source_profile).await);
        }
        let source = dkms_packages::fetch_source(&ctx, &indexes[e.source_profile], e.package, &src_dir).await;
        let pair = format!("{} {} ({}) on {kernel}", e.package, source.package_version, e.source_profile);

        let reference = if reference_for(e) {
            let extra = dkms_reference::reference_packages(e.package);
            let key = (kernel.clone(), extra.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = images.entry(key.clone()) {
                slot.insert(dkms_reference::reference_image(&ctx, &engine, &kernel, &extra).await);
            }
            let image = &images[&key];
            let r = dkms_reference::run_dkms(&engine, recipe, image, &kernel, &source).await;
            let expected_kos: BTreeSet<String> =
                e.modules.iter().map(|m| format!("{m}{}", module_suffix(e.kernel))).collect();
            if r.exit_code != e.exit_code || r.kos != expected_kos {
                failures.push(format!(
                    "real dkms, {pair}: exit code {} and modules {:?}, expected {} and {:?}\n--- dkms output\n{}\n--- make.log (end)\n{}",
                    r.exit_code,
                    r.kos,
                    e.exit_code,
                    expected_kos,
                    r.dkms_log,
                    tail(&r.make_log, 40)
                ));
            }
            if let Some(needle) = e.make_log_says {
                if !r.make_log.contains(needle) {
                    failures.push(format!("real dkms, {pair}: make.log lacks {needle:?}:\n{}", tail(&r.make_log, 40)));
                }
            }
            Some(r)
        } else {
            None
        };

        let tree = work.path().join(format!("ckms-tree-{i}"));
        let ckms = ckms_for(e).then(|| ckms_build(&host, &kernel, e.kernel.dkms_release(), &source, &tree));
        if let Some(c) = &ckms {
            let want_kos = match &reference {
                Some(r) => r.kos.clone(),
                None => e.modules.iter().map(|m| format!("{m}{}", module_suffix(e.kernel))).collect(),
            };
            if (c.exit_code == 0) != (e.exit_code == 0) || c.kos != want_kos {
                failures.push(format!(
                    "ckms, {pair}: exit code {} and modules {:?}; real dkms: exit code {} and modules {:?}\n{}\n--- ckms make.log (end)\n{}\n--- dkms make.log (end)\n{}",
                    c.exit_code,
                    c.kos,
                    e.exit_code,
                    want_kos,
                    c.shown,
                    tail(&c.make_log, 40),
                    reference.as_ref().map(|r| tail(&r.make_log, 40)).unwrap_or_default()
                ));
            }
            if let Some(needle) = e.make_log_says.filter(|_| c.exit_code != 0) {
                if !c.make_log.contains(needle) {
                    failures.push(format!(
                        "ckms, {pair}: failed like dkms, but its make.log lacks dkms's reason {needle:?}:\n{}",
                        tail(&c.make_log, 40)
                    ));
                }
            }
        }
        rows.push(Row { expected: e, kernel, reference, source, ckms });
    }

    print_table(var, &rows, started.elapsed());
    assert!(failures.is_empty(), "{} difference(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The side-by-side table, as docs/dkms-comparison.md shows it.
fn print_table(var: &str, rows: &[Row], took: Duration) {
    println!("\nckms vs real dkms on {var} ({:.0} s in all)\n", took.as_secs_f64());
    println!(
        "| package | version | kernel | dkms | dkms exit | dkms .ko | dkms modules | dkms s | container s | ckms exit | ckms .ko | ckms s | same |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (dkms, exit, count, names, secs, container) = match &r.reference {
            Some(x) => (
                x.dkms_version.clone(),
                x.exit_code.to_string(),
                x.kos.len().to_string(),
                x.kos.iter().cloned().collect::<Vec<_>>().join(" "),
                format!("{:.1}", x.dkms_secs),
                format!("{:.1}", x.container_secs),
            ),
            None => (
                "(not run here)".into(),
                r.expected.exit_code.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let (c_exit, c_count, c_secs, same) = match &r.ckms {
            Some(c) => {
                let dkms_kos: BTreeSet<String> = match &r.reference {
                    Some(x) => x.kos.clone(),
                    None => {
                        r.expected.modules.iter().map(|m| format!("{m}{}", module_suffix(r.expected.kernel))).collect()
                    }
                };
                let same = (c.exit_code == 0) == (r.expected.exit_code == 0) && c.kos == dkms_kos;
                (
                    c.exit_code.to_string(),
                    c.kos.len().to_string(),
                    format!("{:.1}", c.secs),
                    if same { "yes" } else { "NO" },
                )
            }
            None => (String::new(), String::new(), String::new(), ""),
        };
        println!(
            "| {} | {} | {} | {dkms} | {exit} | {count} | {names} | {secs} | {container} | {c_exit} | {c_count} | {c_secs} | {same} |",
            r.source.package, r.source.package_version, r.kernel
        );
    }
    println!();
    // Why dkms failed, in make.log's words.
    for r in rows {
        let Some(x) = r.reference.as_ref().filter(|x| x.exit_code != 0) else { continue };
        println!("{} {} on {}: dkms exit code {}; make.log says:", x.package, x.package_version, x.kernel, x.exit_code);
        for line in x.make_log.lines().filter(|l| l.contains("error") || l.contains("Error")) {
            println!("    {line}");
        }
        println!();
    }
}

/// Whether to run everything (`CKMS_TEST_DKMS_COMPARE=all`): real dkms takes about 13 minutes
/// for the 13 pairs on 2 cores (dahdi, jool and xtables-addons most of it), so CI re-runs it
/// for the quick pairs only and holds the others to the results pinned in [`EXPECTED`].
fn everything() -> bool {
    std::env::var("CKMS_TEST_DKMS_COMPARE").is_ok_and(|v| v == "all")
}

/// Pairs cheap enough to build with real dkms on every run.
fn quick(e: &Expected) -> bool {
    matches!(e.package, "v4l2loopback-dkms" | "digimend-dkms")
}

/// Podman: ckms builds every pair; real dkms the quick ones (all with CKMS_TEST_DKMS_COMPARE=all).
#[tokio::test(flavor = "multi_thread")]
async fn dkms_vs_ckms_podman() {
    compare("CKMS_TEST_PODMAN_HOST", |e| everything() || quick(e), |_| true).await;
}

/// Docker runs the same images (the same bytes as on Podman): both sides for the quick pairs,
/// everything with CKMS_TEST_DKMS_COMPARE=all.
#[tokio::test(flavor = "multi_thread")]
async fn dkms_vs_ckms_docker() {
    compare("CKMS_TEST_DOCKER_HOST", |e| everything() || quick(e), |e| everything() || quick(e)).await;
}
