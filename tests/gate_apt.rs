//! The host gate with real apt, in a clean bookworm container (tests/support/bookworm.rs) with
//! the ckms Debian package (ci/package-deb, this build's binary) installed by apt, grub-common,
//! GRUB_DEFAULT=saved, and 6.1.0-56-amd64. adv-17v35x-dkms builds for that kernel and fails
//! for bookworm's newest 6.12.*+deb12-amd64; acpi-call-dkms builds for both. In one
//! container, each step through apt (the kernel's own preinst.d/postinst.d hooks):
//!
//! - `apt-get install adv-17v35x-dkms`, then the 6.12 image with `on_failure = "refuse"`: apt
//!   fails naming the module and its first compiler error; the kernels, their modules and
//!   dpkg's view of them are as they were;
//! - again with `keep-default`: apt succeeds, GRUB's saved default (grubenv, printed) is the
//!   6.1.0-56 entry, `gate status` says 6.12 NOT ready and 6.1.0-56 ready;
//! - the 6.12 image and adv-17v35x-dkms purged, `apt-get install acpi-call-dkms`, then the
//!   6.12 image: its module is in /lib/modules/<6.12>/updates/dkms when apt is done, and
//!   `gate status` says ready.
//!
//! Twice: with the builds in the host's rootless Podman (its socket mounted; ckms's engine
//! layer copies files over the API, so a client in a container works), and with `[gate]
//! prebuilt_only` and no engine, from a farm's signed cache (built on Podman, published with
//! `farm publish --format cache`, served over loopback HTTP) that has adv-17v35x for 6.1.0-56
//! only and acpi-call for both kernels.
//!
//! Docker (the outer container), Podman, gpg, openssl, dpkg-deb and mmdebstrap (for the image)
//! must be there: a missing one fails the test.
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bookworm::{bookworm_image, docker, farm_key, kept_store, need, run, served, KERNEL};
use support::{ckms, engine_host, shared_cache, HttpServer};

#[path = "support/bookworm.rs"]
mod bookworm;

const FAILS: &str = "adv-17v35x";
/// Its first compiler error for the 6.12 kernel (5.0.7.0, as in tests/gate.rs).
const FIRST_ERROR: &str = "adv17v35x.c:830:48: 'struct uart_state' has no member named 'xmit'";
/// Builds for both (bookworm's v4l2loopback and gost-crypto fail for 6.12).
const BUILDS: &str = "acpi-call";
const BUILDS_FILE: &str = "acpi_call.ko";

/// Bookworm's newest 6.12.*+deb12-amd64, as ckms knows it.
fn newer() -> &'static str {
    static NEWER: OnceLock<String> = OnceLock::new();
    NEWER.get_or_init(|| {
        let cache = shared_cache();
        let kernels = ckms(["--cache-dir", &cache.to_string_lossy(), "-q", "kernels"]).run();
        kernels.expect_code(0);
        kernels
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|k| k.starts_with("6.12.") && k.ends_with("+deb12-amd64"))
            .max_by(|a, b| ckms::repo::version::compare(a, b))
            .expect("debian-bookworm offers a 6.12.*+deb12-amd64 kernel")
            .to_string()
    })
}

/// The ckms package of this build's binary (ci/package-deb), made once per run.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        need("dpkg-deb", "dpkg");
        need("objdump", "binutils");
        let top = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = run(Command::new("bash")
            .arg(top.join("ci/package-deb"))
            .current_dir(top)
            .env("CKMS_DEB_BINARY", env!("CARGO_BIN_EXE_ckms")));
        let deb = top.join(out.lines().last().unwrap_or_default());
        assert!(deb.is_file(), "ci/package-deb made no {}", deb.display());
        deb
    })
}

/// The clean bookworm plus what the package and the test need from the mirror (ckms's
/// dependencies, grub-common) and the 6.12 image's .deb in apt's archive (downloaded once,
/// not once per case): made once and kept in Docker, by the 6.12 kernel's name.
fn image(host: &str) -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // A tag has no `+`.
        let tag = format!("ckms-test/gate-apt:{KERNEL}-{}", newer().replace('+', "_"));
        if docker(host).args(["image", "inspect", &tag]).output().is_ok_and(|o| o.status.success()) {
            return tag;
        }
        let base = bookworm_image(host);
        let name = format!("ckms-gate-apt-prepare-{}", std::process::id());
        let script = format!(
            "set -e; export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -qy install --no-install-recommends grub-common podman runc uidmap passwd debian-archive-keyring libssl3
apt-get -qy install --no-install-recommends --download-only linux-image-{}
# The initramfs is not what this test is about, and making one takes a minute.
dpkg-divert --local --rename --add /usr/sbin/update-initramfs
ln -s /bin/true /usr/sbin/update-initramfs
printf 'GRUB_DEFAULT=saved\\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\\n' >/etc/default/grub
mkdir -p /boot/grub",
            newer()
        );
        let _ = docker(host).args(["rm", "-f", &name]).output();
        run(docker(host).args(["run", "--name", &name, "--network", "host", &base, "bash", "-c", &script]));
        run(docker(host).args(["commit", &name, &tag]));
        run(docker(host).args(["rm", &name]));
        tag
    })
}

/// What a case's container runs, through apt: the three steps of the module doc, each
/// followed by what it left (dpkg's view of the kernels, /lib/modules, `ckms status`, grubenv,
/// `gate status`), between `=== step` lines, with `EXIT-<step> <code>` lines.
fn script(config: &str) -> String {
    let newer = newer();
    format!(
        r#"set -u
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -qy -o Dpkg::Use-Pty=0 install --no-install-recommends)
K={KERNEL}
N={newer}
step() {{ echo "=== $1"; }}
timed() {{ # NAME CMD...: runs it, says its exit code and its wall time
    local name=$1 t0=$(date +%s) rc=0
    shift
    "$@" 2>&1 || rc=$?
    echo "EXIT-$name $rc"
    echo "TIME-$name $(( $(date +%s) - t0 )) s"
}}
state() {{
    # A package dpkg knows of but never installed is "not-installed" (second letter n).
    dpkg-query -W -f '${{db:Status-Abbrev}} ${{Package}} ${{Version}}\n' 'linux-image-*' 2>/dev/null | awk 'substr($1, 2, 1) != "n"' | sort
    # Not empty directories: a kernel's preinst makes /lib/modules/<kver> before its hooks run,
    # and its postrm leaves it there when the installation is aborted.
    (cd /lib/modules && find . -path '*/kernel' -prune -o ! -empty -print | sort)
    ckms status 2>&1
}}
policy() {{ sed -i "s/^on_failure = .*/on_failure = \"$1\"/" /etc/ckms/config.toml; }}
step setup
timed package "${{apt[@]}}" /work/ckms.deb
cat >/etc/ckms/config.toml <<'EOF'
cache_dir = "/cache"
[build]
dkms_tree = "/var/lib/dkms"
[gate]
on_failure = "refuse"
{config}
EOF
timed {FAILS} "${{apt[@]}}" {FAILS}-dkms
for tool in gcc cc make; do command -v $tool >/dev/null && echo "HAS-$tool"; done
state >/tmp/before
step refuse
timed refuse "${{apt[@]}}" linux-image-$N
state >/tmp/after
echo "dpkg: linux-image-$N: $(dpkg-query -W -f '${{db:Status-Abbrev}}' linux-image-$N 2>&1)"
diff /tmp/before /tmp/after && echo "AS-BEFORE"
cat /tmp/after
step keep-default
policy keep-default
timed keep "${{apt[@]}}" linux-image-$N
echo "--- grub-editenv /boot/grub/grubenv list"
grub-editenv /boot/grub/grubenv list
echo "--- ckms gate status"
ckms gate status 2>&1
step builds
apt-get -qy purge linux-image-$N {FAILS}-dkms >/dev/null 2>&1 || echo PURGE-FAILED
timed {BUILDS} "${{apt[@]}}" {BUILDS}-dkms
timed builds "${{apt[@]}}" linux-image-$N
ls /lib/modules/$N/updates/dkms
echo "--- grub-editenv /boot/grub/grubenv list"
grub-editenv /boot/grub/grubenv list
echo "--- ckms gate status"
ckms gate status 2>&1
"#
    )
}

/// Runs one case's container and checks what it printed; returns it.
fn case(name: &str, config: &str, mounts: &[(String, &str)], fails_for_newer: &str) -> String {
    let host = engine_host("CKMS_TEST_DOCKER_HOST");
    let image = image(&host);
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(package(), work.path().join("ckms.deb")).unwrap();
    let mut cmd = docker(&host);
    cmd.args(["run", "--rm", "--network", "host"]);
    let cache = shared_cache();
    let mut all = vec![(work.path().display().to_string(), "/work"), (cache.display().to_string(), "/cache")];
    all.extend(mounts.iter().cloned());
    for (from, to) in &all {
        cmd.arg("-v").arg(format!("{from}:{to}"));
    }
    let started = std::time::Instant::now();
    let out = cmd.arg(image).args(["bash", "-c", &script(config)]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("--- {name} ({:.0} s) ---\n{shown}", started.elapsed().as_secs_f64());
    let part = |step: &str| {
        let from = shown.split(&format!("=== {step}\n")).nth(1).unwrap_or_default();
        from.split("\n=== ").next().unwrap_or_default().to_string()
    };
    let exit = |what: &str| shown.lines().find_map(|l| l.strip_prefix(&format!("EXIT-{what} "))).map(str::to_string);
    let newer = newer();
    for what in ["package", FAILS] {
        assert_eq!(exit(what).as_deref(), Some("0"), "{name}: installing {what} failed:\n{shown}");
    }
    assert!(!shown.contains("HAS-"), "{name}: a compiler on the host:\n{shown}");

    // refuse: apt fails, naming the module and why; everything as it was.
    let refuse = part("refuse");
    assert_ne!(exit("refuse").as_deref(), Some("0"), "{name}: apt installed a kernel that is not ready:\n{shown}");
    assert!(refuse.contains(&format!("kernel {newer} is not ready: {FAILS}/")), "{name}:\n{refuse}");
    assert!(refuse.contains(fails_for_newer), "{name}: {fails_for_newer:?} expected:\n{refuse}");
    assert!(refuse.contains("AS-BEFORE"), "{name}: the refused kernel changed the system:\n{refuse}");
    assert!(refuse.contains(&format!("{FAILS}/")) && refuse.contains(&format!("{KERNEL}, x86_64: installed")));

    // keep-default: apt succeeds, GRUB's default stays on the ready kernel.
    let keep = part("keep-default");
    assert_eq!(exit("keep").as_deref(), Some("0"), "{name}: keep-default failed apt:\n{shown}");
    assert!(
        keep.contains(&format!(
            "saved_entry=Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux {KERNEL}\n"
        )),
        "{name}: grubenv:\n{keep}"
    );
    let status = keep.split("--- ckms gate status\n").nth(1).unwrap_or_default();
    let lines: Vec<&str> = status.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        lines,
        [format!("{newer}: NOT ready (0/1 modules)"), format!("{KERNEL}: ready (1/1 modules)")],
        "{name}:\n{keep}"
    );

    // A module that is ready for the newer kernel: installed before apt is done.
    let builds = part("builds");
    assert!(!builds.contains("PURGE-FAILED"), "{name}:\n{builds}");
    for what in [BUILDS, "builds"] {
        assert_eq!(exit(what).as_deref(), Some("0"), "{name}: {what} failed:\n{builds}");
    }
    assert!(builds.contains(BUILDS_FILE), "{name}: no {BUILDS_FILE} for {newer}:\n{builds}");
    let status = builds.split("--- ckms gate status\n").nth(1).unwrap_or_default();
    assert!(status.contains(&format!("{newer}: ready (1/1 modules)")), "{name}:\n{status}");
    // Ready: the newest kernel is GRUB's default again.
    assert!(builds.contains(&format!("with Linux {newer}\n")), "{name}: grubenv:\n{builds}");
    assert!(out.status.success(), "{name}: the container failed:\n{shown}");
    shown
}

#[test]
fn apt_installs_a_kernel_only_when_its_modules_are_ready_building_them() {
    need("docker", "docker.io");
    let podman = engine_host("CKMS_TEST_PODMAN_HOST");
    let socket = podman.strip_prefix("unix://").expect("CKMS_TEST_PODMAN_HOST is a unix:// socket").to_string();
    let config = "[engine]\nhost = \"unix:///run/ckms-engine.sock\"\n";
    let shown = case("engine", config, &[(socket, "/run/ckms-engine.sock")], FIRST_ERROR);
    assert!(shown.contains("Building initial module for"), "{shown}");
}

/// A farm's store (kept between runs: a re-run builds nothing) with both modules for both
/// kernels, adv-17v35x failing for the newer one; its module certificate.
fn store(engine: &str) -> (PathBuf, PathBuf) {
    let (fails, builds) = (format!("deb:{FAILS}-dkms"), format!("deb:{BUILDS}-dkms"));
    let (dir, cert, out) = kept_store("gate-apt", engine, &["-k", KERNEL, "-k", newer(), &fails, &builds]);
    println!("farm build:{out}");
    (dir, cert)
}

#[test]
fn apt_installs_a_kernel_only_when_its_modules_are_ready_from_a_cache() {
    need("docker", "docker.io");
    let (store, cert) = store(&engine_host("CKMS_TEST_PODMAN_HOST"));
    let dir = tempfile::tempdir().unwrap();
    let key = farm_key(dir.path());
    let out = dir.path().join("cache");
    let (store_s, out_s, key_s, cert_s) =
        (store.to_string_lossy(), out.to_string_lossy(), key.to_string_lossy(), cert.to_string_lossy());
    ckms([
        "farm", "publish", "--store", &store_s, "--format", "cache", "--out", &out_s, "--key", &key_s, "--cert",
        &cert_s,
    ])
    .run()
    .expect_code(0);
    let mut files = HashMap::new();
    served(&out, "/cache", &mut files);
    let server = HttpServer::start(files);
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(out.join("farm.pub.asc"), keys.join("farm.pub.asc")).unwrap();
    // An engine that is not there: a build would fail apt, so each step that succeeds took its
    // modules from the cache.
    let config = format!(
        "prebuilt_only = true\n[engine]\nhost = \"unix:///nonexistent/engine.sock\"\n[prebuilt]\nurls = [\"{}/cache/\"]\nkeys = [\"/keys/farm.pub.asc\"]\nallow_http = true\n",
        server.base()
    );
    case("prebuilt", &config, &[(keys.display().to_string(), "/keys")], "no [prebuilt] cache has it");
}
