//! ckms as a dkms drop-in on this machine, through apt: runs `ci/deb-demo`, which packages
//! ckms (the binary cargo built for these tests), installs a Debian kernel image without
//! headers, then `apt-get install ./ckms_*.deb v4l2loopback-dkms`, and checks that the module
//! was built in a container and installed for that kernel, that the kernel hooks, the
//! kernel-install plugin and dkms.service work, that an unknown kernel is skipped without
//! failing apt, that `apt-get remove` leaves /lib/modules/<kernel> as it was, and that the
//! package's engine setup works on a user that has none. It purges the package at the end.
//!
//! Needs root, apt, the Debian mirror and a rootless Podman (the package sets it up): it fails
//! loudly when one is missing, it never skips. It changes the machine (see ci/deb-demo).

mod support;

use std::process::Command;

#[test]
fn dkms_dropin_through_apt() {
    assert!(rustix::process::getuid().is_root(), "this test installs Debian packages: run it as root (ci/test does)");
    let top = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{top}/ci/deb-demo")).current_dir(top);
    // As on a fresh machine: no ckms settings from the caller, only the shared download cache.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CKMS_") || k == "DOCKER_HOST" || k == "CONTAINER_HOST" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CKMS_CACHE_DIR", support::shared_cache()).env("CKMS_DEB_BINARY", env!("CARGO_BIN_EXE_ckms"));
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run ci/deb-demo: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success() && stdout.contains("deb-demo: PASS"),
        "ci/deb-demo failed ({}) after {:.0} s\n--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        tail(&stdout),
        tail(&stderr)
    );
    let times = stdout.split("==> times").nth(1).unwrap_or_default();
    eprintln!("ci/deb-demo passed in {:.0} s; its steps:{times}", started.elapsed().as_secs_f64());
}
