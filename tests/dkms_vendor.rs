//! A vendor-style driver installer (tests/fixtures/vendor-installer.sh: add, build, install,
//! `dkms status` parsing, a failing build and its make.log, remove) gives the same exit codes
//! and parsed results with real dkms and with ckms as `dkms`.
//!
//! Real dkms runs in a chroot of the kernel's dkms reference image (tests/support/
//! dkms_reference.rs: the builder image plus the distribution's `dkms`), exported from Docker,
//! as root and without network (its own network, mount and pid namespaces): there dkms installs
//! into the chroot's /usr/src, /var/lib/dkms and /lib/modules, as on a system with the headers
//! installed. ckms runs on this host as the system's `dkms` would (the tree in /var/lib/dkms,
//! builds on rootless Podman), speaking the dkms release of the chroot's distribution.
//!
//! Needs root; installs into /usr/src, /var/lib/dkms and /lib/modules/<kernel> of this machine
//! and leaves them as it found them (its own binary, so it never runs beside dkms's suite).
mod support;

#[path = "support/dkms_packages.rs"]
mod dkms_packages;
#[path = "support/dkms_reference.rs"]
mod dkms_reference;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ckms::engine::DockerApi;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn sh(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).arg("sh").args(args).output().expect("sh runs")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The kernel's reference image, exported from Docker into `root` (a chroot).
async fn reference_chroot(kernel: &str, root: &Path) -> String {
    let host = support::engine_host("CKMS_TEST_DOCKER_HOST");
    let ctx = dkms_packages::context();
    let engine = DockerApi::connect(&host, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("engine {host} does not answer: {e}"));
    let image = dkms_reference::reference_image(&ctx, &engine, kernel, &["dkms".to_string()]).await;
    let out = sh(
        r#"set -e
cid=$(docker -H "$1" create "$2" true)
trap 'docker -H "$1" rm "$cid" >/dev/null' EXIT
docker -H "$1" export "$cid" | tar -x -C "$3"
mkdir -p "$3/tmp" "$3/srv/vendor" "$3/proc" "$3/dev" "$3/lib/modules/$4/kernel"
# dkms 3.2 compresses as the installed kernel's modules are: one empty module of the kernel
# with the suffix its CONFIG_MODULE_COMPRESS_* gives stands for linux-image-<kernel>.
for c in GZIP:gz XZ:xz ZSTD:zst; do
    if grep -q "^CONFIG_MODULE_COMPRESS_${c%%:*}=y" "$3/lib/modules/$4/build/.config"; then
        : >"$3/lib/modules/$4/kernel/ckms-vendor-marker.ko.${c#*:}"
    fi
done"#,
        &[&host, &image.reference, &root.display().to_string(), kernel],
    );
    assert!(out.status.success(), "exporting {} into {}: {}", image.reference, root.display(), text(&out));
    for f in ["vendor-installer.sh", "hello-dkms", "broken-build-dkms"] {
        let cp =
            sh(r#"cp -r "$1" "$2""#, &[&format!("{FIXTURES}/{f}"), &root.join("srv/vendor").display().to_string()]);
        assert!(cp.status.success(), "copying {f} into the chroot: {}", text(&cp));
    }
    image.dkms_version
}

/// The installer with real dkms, as root in the chroot, offline.
fn with_real_dkms(root: &Path, kernel: &str) -> String {
    let out = sh(
        r#"exec unshare --net --mount --pid --fork sh -c '
mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" &&
exec chroot "$1" /bin/sh /srv/vendor/vendor-installer.sh /srv/vendor/hello-dkms /srv/vendor/broken-build-dkms "$2"' sh "$1" "$2""#,
        &[&root.display().to_string(), kernel],
    );
    assert!(out.status.success(), "the installer in the chroot did not run to its end: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installer with ckms as the system's `dkms` on this host.
fn with_ckms(kernel: &str, release: &str) -> String {
    let bin = tempfile::tempdir().expect("a directory for the dkms link");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ckms"), bin.path().join("dkms")).expect("linking dkms");
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let modules = format!("/lib/modules/{kernel}");
    let existed: Vec<bool> =
        ["", "/updates", "/updates/dkms"].iter().map(|d| Path::new(&format!("{modules}{d}")).exists()).collect();
    let out = Command::new("sh")
        .arg(format!("{FIXTURES}/vendor-installer.sh"))
        .arg(format!("{FIXTURES}/hello-dkms"))
        .arg(format!("{FIXTURES}/broken-build-dkms"))
        .arg(kernel)
        .env("PATH", path)
        .env("CKMS_CONFIG", "/nonexistent/ckms-test/config.toml")
        .env("CKMS_DATA_DIR", env!("CARGO_MANIFEST_DIR"))
        .env("CKMS_DKMS_TREE", "/var/lib/dkms")
        .env("CKMS_DKMS_RELEASE", release)
        .env("CKMS_ENGINE_HOST", support::engine_host("CKMS_TEST_PODMAN_HOST"))
        .env("CKMS_CACHE_DIR", support::shared_cache())
        .output()
        .expect("sh runs the installer");
    // The module directories the installs made, when they are left empty (as dkms's suite
    // run); a kernel's directory the run made holds only what depmod wrote there.
    for (dir, existed) in ["/updates/dkms", "/updates"].iter().zip(existed.iter().rev()) {
        if !existed {
            let _ = std::fs::remove_dir(format!("{modules}{dir}"));
        }
    }
    if !existed[0] {
        let _ = std::fs::remove_dir_all(&modules);
    }
    assert!(out.status.success(), "the installer with ckms did not run to its end: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn compare(kernel: &str) {
    let uid = Command::new("id").arg("-u").output().expect("id runs").stdout;
    assert_eq!(String::from_utf8_lossy(&uid).trim(), "0", "the installer installs modules: run the tests as root");
    let root = tempfile::Builder::new().prefix("ckms-vendor-chroot-").tempdir_in("/var/tmp").unwrap();
    let dkms_version = reference_chroot(kernel, root.path()).await;
    let release = dkms_version.split(['-', '~']).next().unwrap_or_default().to_string();
    let real = with_real_dkms(root.path(), kernel);
    let ours = with_ckms(kernel, &release);
    println!("vendor installer on {kernel}, real dkms {dkms_version}:\n{real}");
    assert!(
        real.contains("build: exit 10") && real.contains("status after install: installed"),
        "real dkms did not do what the installer expects:\n{real}"
    );
    assert_eq!(ours, real, "ckms as dkms {release} and real dkms {dkms_version} differ for the installer");
}

/// bookworm's kernel with bookworm's dkms (3.0.10), then the newest trixie kernel with
/// trixie's (3.2.2): one after the other, as both install into the same trees.
#[tokio::test(flavor = "multi_thread")]
async fn a_vendor_installer_sees_real_dkms_and_ckms_alike() {
    compare(dkms_reference::BOOKWORM_KERNEL).await;
    let trixie = dkms_reference::trixie_kernel(&dkms_packages::context()).await;
    compare(&trixie).await;
}
