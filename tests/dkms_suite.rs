//! dkms's own test suites, dkms 3.2.2's (trixie) and 3.0.10's (bookworm), run by ci/dkms-suite
//! with ckms as `dkms` (CKMS_DKMS_RELEASE set to the suite's release, the tree in
//! /var/lib/dkms, rootless Podman): every checked command must give dkms's exit code and
//! output, except exactly the differences tests/fixtures/dkms-suite/<release>.allow lists
//! (each is explained in docs/dkms-compat.md). A difference not listed fails, and so does a
//! listed one that no longer happens (the list is kept exact).
//!
//! Needs root and the suites: `../shared/reference/dkms-tests` beside this repository, or
//! CKMS_DKMS_SUITES. It installs into /usr/src, /var/lib/dkms, /lib/modules/6.1.0-56-amd64 and
//! /etc/dkms, as dkms's suite does: the two suites run one after the other, never beside
//! another test that uses those trees.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL: &str = "6.1.0-56-amd64";

fn suites() -> PathBuf {
    let dir = std::env::var_os("CKMS_DKMS_SUITES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/dkms-tests"));
    assert!(
        dir.join("v3.2.2/run_test.sh").is_file() && dir.join("v3.0.10/run_test.sh").is_file(),
        "dkms's test suites are not in {} (v3.2.2/ and v3.0.10/, each with run_test.sh and test/): \
         set CKMS_DKMS_SUITES to the directory holding them",
        dir.display()
    );
    dir
}

/// The checks of one run that did not pass, with the run's own paths (its `work` directory,
/// the suite's mktemp names) made fixed.
fn differences(results: &str, work: &Path) -> Vec<String> {
    fixed_tmp_names(&results.replace(&work.display().to_string(), "<work>"))
        .lines()
        .filter(|l| !l.starts_with("PASS: ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `/tmp/tmp.XXXXXXXXXX` (the suite's mktemp) as `/tmp/tmp.X`.
fn fixed_tmp_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/tmp/tmp.") {
        out.push_str(&rest[..at + "/tmp/tmp.".len()]);
        rest = &rest[at + "/tmp/tmp.".len()..];
        let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
        out.push('X');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn allowed(release: &str) -> Vec<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/dkms-suite/{release}.allow"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(str::to_string).collect()
}

fn run(release: &str, out: &Path) -> Vec<String> {
    let started = std::time::Instant::now();
    let engine = support::engine_host("CKMS_TEST_PODMAN_HOST");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/dkms-suite"))
        .arg(suites().join(format!("v{release}")))
        .arg(env!("CARGO_BIN_EXE_ckms"))
        .arg(out)
        .arg(KERNEL)
        .env("CKMS_DKMS_RELEASE", release)
        .env("CKMS_DKMS_TREE", "/var/lib/dkms")
        .env("CKMS_ENGINE_HOST", engine)
        .env("CKMS_CACHE_DIR", support::shared_cache())
        .status()
        .expect("bash runs ci/dkms-suite");
    assert!(status.success(), "ci/dkms-suite for {release} failed to run ({status}); see {}", out.display());
    let results = std::fs::read_to_string(out.join("results.txt")).expect("the suite's results");
    let passed = results.lines().filter(|l| l.starts_with("PASS: ")).count();
    let differ = differences(&results, &out.join("work"));
    println!(
        "dkms {release} suite: {} checks, {passed} as dkms, {} other ({:.0} s)",
        passed + differ.len(),
        differ.len(),
        started.elapsed().as_secs_f64()
    );
    differ
}

#[test]
fn dkms_s_own_suites_pass_but_for_the_listed_differences() {
    let uid = Command::new("id").arg("-u").output().expect("id runs").stdout;
    assert_eq!(String::from_utf8_lossy(&uid).trim(), "0", "dkms's suite installs modules: run the tests as root");
    let scratch = tempfile::Builder::new().prefix("ckms-dkms-suite-").tempdir_in("/var/tmp").unwrap();
    let mut failures = Vec::new();
    for release in ["3.2.2", "3.0.10"] {
        let out = scratch.path().join(release);
        let got = run(release, &out);
        let want = allowed(release);
        let unlisted: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
        let gone: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        if !unlisted.is_empty() || !gone.is_empty() {
            let diffs = std::fs::read_to_string(out.join("diffs.log")).unwrap_or_default();
            let fails = std::fs::read_to_string(out.join("fails.log")).unwrap_or_default();
            failures.push(format!(
                "dkms {release}: {} difference(s) not listed:\n  {}\nlisted but not seen any more (remove them from the list):\n  {}\n\
                 --- diffs ---\n{diffs}\n--- failed commands ---\n{fails}",
                unlisted.len(),
                unlisted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
                gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
