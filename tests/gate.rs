//! The host gate with a real engine and a real `*-dkms` package: adv-17v35x-dkms builds for
//! 6.1.0-56-amd64 and fails for bookworm's newest 6.12.*+deb12-amd64. In a system under a
//! temporary root (`--root`: its /usr/src, dkms tree, /lib/modules, /etc/default/grub and
//! /boot/grub/grubenv):
//!
//! - `[gate] on_failure = "refuse"`: `gate preinst` for the 6.12 kernel exits 14 naming the
//!   module, and installs nothing; for 6.1.0-56 it says ready;
//! - `keep-default`: `gate postinst` installs the module for 6.1.0-56 (ready), then for the
//!   6.12 kernel says not ready, exits 0, and GRUB's saved default (grub-editenv) names the
//!   6.1.0-56 entry; `gate status` lists both, newest first.
//!
//! Podman, grub-editenv and the kernels' repository must be there: a missing one fails the test.
mod support;

use std::path::Path;

use ckms::diagnose::code;
use support::{ckms, engine_host, shared_cache};

const KERNEL: &str = "6.1.0-56-amd64";

/// `ckms` with the test's config, cache and engine, on the system under `root`.
fn gate(root: &Path, args: &[&str]) -> support::Outcome {
    let root_s = root.to_string_lossy();
    run(root, &[args, &["--root", &root_s]].concat())
}

fn run(root: &Path, args: &[&str]) -> support::Outcome {
    let host = engine_host("CKMS_TEST_PODMAN_HOST");
    let mut all = vec!["--engine", &host];
    all.extend_from_slice(args);
    ckms(all)
        .env("CKMS_CONFIG", root.join("config.toml"))
        .env("CKMS_CACHE_DIR", shared_cache())
        .env("CKMS_DKMS_MOK_DIR", root.join("mok"))
        .run()
}

fn config(root: &Path, policy: &str) {
    let text = format!("[gate]\non_failure = \"{policy}\"\nstate_dir = \"{}\"\n", root.join("gate").display());
    std::fs::write(root.join("config.toml"), text).unwrap();
}

/// A kernel as its linux-image package leaves /lib/modules/<kver>.
fn install_kernel(root: &Path, kernel: &str) {
    let dir = root.join("lib/modules").join(kernel);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modules.order"), "").unwrap();
}

#[test]
fn a_kernel_its_modules_fail_for_is_refused_or_never_the_default() {
    assert!(
        std::process::Command::new("grub-editenv").arg("--version").output().is_ok(),
        "grub-editenv is missing: ci/setup-build-deps.sh installs grub-common"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc/default")).unwrap();
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(root.join("etc/default/grub"), "GRUB_DEFAULT=saved\n").unwrap();
    config(root, "refuse");
    let kernels = run(root, &["-q", "kernels"]).expect_code(0).stdout.clone();
    let newer = kernels
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.starts_with("6.12.") && k.ends_with("+deb12-amd64"))
        .max_by(|a, b| ckms::repo::version::compare(a, b))
        .expect("debian-bookworm offers a 6.12.*+deb12-amd64 kernel")
        .to_string();
    gate(root, &["add", "deb:adv-17v35x-dkms"]).expect_code(0);

    // refuse: the failing kernel's preinst fails, nothing is installed.
    let refused = gate(root, &["gate", "preinst", "-k", &newer]);
    refused.expect_code(code::HOOK_FAILED);
    assert!(
        refused.error_message().contains(&format!("kernel {newer} is not ready: adv-17v35x/5.0.7.0 (failed")),
        "{refused}"
    );
    assert!(!root.join("lib/modules").join(&newer).exists(), "nothing installed for {newer}");
    let ready = gate(root, &["gate", "preinst", "-k", KERNEL]);
    ready.expect_code(0);
    assert!(ready.stdout.contains(&format!("{KERNEL}: ready (1/1 modules)")), "{ready}");

    // keep-default: both kernels installed, GRUB's default stays on the ready one.
    config(root, "keep-default");
    install_kernel(root, KERNEL);
    gate(root, &["gate", "postinst", "-k", KERNEL]).expect_code(0);
    assert!(root.join(format!("lib/modules/{KERNEL}/updates/dkms")).read_dir().unwrap().count() == 1);
    install_kernel(root, &newer);
    let kept = gate(root, &["gate", "postinst", "-k", &newer]);
    kept.expect_code(0);
    assert!(kept.stderr.contains(&format!("kernel {newer} is not ready for this host's modules")), "{kept}");
    let env =
        std::process::Command::new("grub-editenv").arg(root.join("boot/grub/grubenv")).arg("list").output().unwrap();
    let env = String::from_utf8_lossy(&env.stdout);
    eprintln!("grubenv:\n{env}");
    assert!(
        env.contains(&format!(
            "saved_entry=Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux {KERNEL}\n"
        )),
        "{env}"
    );
    let status = gate(root, &["gate", "status"]);
    status.expect_code(0);
    let lines: Vec<&str> = status.stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        lines,
        [format!("{newer}: NOT ready (0/1 modules)"), format!("{KERNEL}: ready (1/1 modules)")],
        "{status}"
    );
}
