//! `ckms farm publish` of arm64 pairs, each format consumed as its consumer would, from one
//! store (v4l2loopback and acpi-call built on Docker for 6.1.0-56-arm64, cross-built, and
//! 6.1.0-56-amd64; kept between runs) on this amd64 machine:
//!
//! - apt: arm64 packages in `binary-arm64`, amd64 ones in `binary-amd64`; real apt-get in an
//!   arm64 bookworm (mmdebstrap --arch=arm64, imported into Podman as an arm64 image, run under
//!   qemu-user) installs the arm64 packages, depmod indexes them with the kernel's own modules,
//!   and it does not see the amd64 ones;
//! - sysext: the extension-release says ARCHITECTURE=arm64 (x86-64 for amd64); real
//!   `systemd-sysext merge` on this amd64 machine merges the amd64 extension and refuses the
//!   arm64 one by its architecture;
//! - kmm: the image config (and the layout's index) name arm64; pushed to Debian's
//!   docker-registry on loopback, `podman pull --arch arm64` takes the arm64 image as is and
//!   warns for the amd64 one, and KMM's worker step runs in the arm64 image under qemu-user;
//! - cache: entries of both architectures of one module coexist in the signed index; a host
//!   (a `--root` tree, no engine) installing for 6.1.0-56-arm64 with `--prebuilt-only` fetches
//!   and installs the aarch64 entry's module, never the x86_64 one.
//!
//! Every tool it needs (docker, podman, qemu-user with binfmt_misc, arch-test, mmdebstrap,
//! gpg, erofs-utils, systemd-sysext, unshare, docker-registry) must be there, and it runs as
//! root on an amd64 machine: anything else fails the test, it never skips.
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use bookworm::{bookworm_image_in_podman, farm_key, kept_store, need, need_emulation, podman, run, served, source_deb};
use support::{ckms, engine_host, shared_cache, HttpServer};

#[path = "support/bookworm.rs"]
mod bookworm;

#[path = "support/registry.rs"]
mod registry;

const ARM: &str = "6.1.0-56-arm64";
const AMD: &str = bookworm::KERNEL;
/// ELF's e_machine of each.
const EM_AARCH64: u16 = 183;
const EM_X86_64: u16 = 62;

/// The store and the certificate its modules are signed with, built once per test binary
/// (kept between runs: a re-run builds nothing).
struct Store {
    dir: PathBuf,
    cert: PathBuf,
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        assert_eq!(std::env::consts::ARCH, "x86_64", "this test shows arm64 output on an amd64 machine");
        let host = engine_host("CKMS_TEST_DOCKER_HOST");
        let args = ["-k", ARM, "-k", AMD, "deb:v4l2loopback-dkms", "deb:acpi-call-dkms"];
        let started = Instant::now();
        let (dir, cert, out) = kept_store("publish-arm64", &host, &args);
        assert!(out.code == 0 || out.code == 77, "the store could not be built{out}");
        eprintln!("store: {:.1} s (exit {})", started.elapsed().as_secs_f64(), out.code);
        Store { dir, cert }
    })
}

/// The store's record of (module, kernel).
fn record(module: &str, kernel: &str) -> serde_json::Value {
    let pairs = store().dir.join("pairs");
    for e in std::fs::read_dir(&pairs).unwrap() {
        let path = e.unwrap().path().join("result.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            if r["module"] == module && r["kernel"] == kernel && r["status"] == "built" {
                return r;
            }
        }
    }
    panic!("no built {module} for {kernel} in {}", pairs.display());
}

/// The signed module file of (module, kernel) as the store holds it.
fn stored(module: &str, kernel: &str) -> Vec<u8> {
    let r = record(module, kernel);
    let file = r["modules"][0]["signed"]["file"].as_str().unwrap();
    std::fs::read(store().dir.join("pairs").join(r["key"].as_str().unwrap()).join(file)).unwrap()
}

/// A module file's ELF machine (bookworm's 6.1 kernels ship modules uncompressed).
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn publish(format: &str, out: &Path, extra: &[&str]) -> support::Outcome {
    let s = store();
    let (store, out, cert) = (s.dir.to_string_lossy(), out.to_string_lossy(), s.cert.to_string_lossy());
    let cache = shared_cache();
    let mut args = vec!["--cache-dir", cache.to_str().unwrap(), "farm", "publish", "--store", &store];
    args.extend(["--format", format, "--out", &out, "--cert", &cert]);
    args.extend(extra);
    let run = ckms(args).run();
    run.expect_code(0);
    run
}

#[test]
fn the_store_holds_each_architectures_own_modules() {
    for module in ["v4l2loopback", "acpi-call"] {
        let (arm, amd) = (record(module, ARM), record(module, AMD));
        assert_eq!((&arm["arch"], &arm["profile"]), (&"aarch64".into(), &"debian-bookworm-arm64".into()), "{arm:#}");
        assert_eq!((&amd["arch"], &amd["profile"]), (&"x86_64".into(), &"debian-bookworm".into()), "{amd:#}");
        assert_eq!(elf_machine(&stored(module, ARM)), EM_AARCH64, "{module} for {ARM}");
        assert_eq!(elf_machine(&stored(module, AMD)), EM_X86_64, "{module} for {AMD}");
    }
}

#[test]
fn apt_arm64_packages_install_with_apt_get_in_an_arm64_debian_under_qemu_user() {
    need_emulation("aarch64");
    need("podman", "podman");
    let dir = tempfile::tempdir().unwrap();
    let key = farm_key(dir.path());
    let out = dir.path().join("apt");
    publish("apt", &out, &["--key", &key.to_string_lossy()]);

    let release = std::fs::read_to_string(out.join("dists/bookworm/Release")).unwrap();
    assert!(release.contains("Architectures: amd64 arm64\n"), "{release}");
    for (arch, kernel, other) in [("arm64", ARM, AMD), ("amd64", AMD, ARM)] {
        let packages =
            std::fs::read_to_string(out.join(format!("dists/bookworm/main/binary-{arch}/Packages"))).unwrap();
        assert_eq!(packages.matches("Package: ").count(), 2, "{packages}");
        assert_eq!(packages.matches(&format!("Architecture: {arch}\n")).count(), 2, "{packages}");
        assert_eq!(packages.matches(&format!("Depends: linux-image-{kernel}\n")).count(), 2, "{packages}");
        assert!(!packages.contains(other), "binary-{arch} names {other}:\n{packages}");
    }

    // An arm64 Debian host: bookworm of arm64 with the kernel's image, emulated; the
    // repository comes in on stdin (the rootless engine cannot read this test's directory).
    let podman_host = engine_host("CKMS_TEST_PODMAN_HOST");
    let image = bookworm_image_in_podman(&podman_host, "arm64", ARM);
    let repo = dir.path().join("repo.tar");
    run(Command::new("tar").arg("-C").arg(&out).arg("-cf").arg(&repo).arg("."));
    let script = format!(
        r#"set -eu
K={ARM}
echo "HOST $(dpkg --print-architecture) $(uname -m)"
mkdir /repo && tar -x -C /repo
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo "deb [signed-by=/repo/ckms-archive-keyring.gpg] file:/repo bookworm main" >/etc/apt/sources.list.d/ckms.list
apt-get update -q
ls /var/lib/apt/lists | grep _Packages | sed 's/^/LIST /'
apt-get install -s v4l2loopback-modules-{AMD} >/dev/null 2>&1 || echo "NO-AMD64-PACKAGE"
apt-get install -y -q v4l2loopback-modules-$K acpi-call-modules-$K
dpkg-query -W -f '${{Package}} ${{Architecture}} ${{Status}}\n' v4l2loopback-modules-$K acpi-call-modules-$K | sed 's/^/DPKG /'
echo "SHA $(sha256sum /lib/modules/$K/updates/dkms/v4l2loopback.ko)"
echo "SHA $(sha256sum /lib/modules/$K/updates/dkms/acpi_call.ko)"
grep '^updates/dkms/' /lib/modules/$K/modules.dep | sed 's/^/DEP /'
modprobe --show-depends -S $K v4l2loopback
ls /lib/modules | sed 's/^/KERNEL-DIR /'
"#
    );
    let started = Instant::now();
    let shown = run(podman(&podman_host)
        .args(["run", "--rm", "-i", "--arch", "arm64", "--network", "none", &image, "bash", "-c", &script])
        .stdin(std::fs::File::open(&repo).unwrap()));
    eprintln!("apt in arm64 bookworm under qemu-user: {:.1} s\n{shown}", started.elapsed().as_secs_f64());
    assert!(shown.contains("HOST arm64 aarch64"), "an arm64 userland, emulated:\n{shown}");
    assert!(shown.contains("LIST _repo_dists_bookworm_main_binary-arm64_Packages"), "{shown}");
    assert!(!shown.contains("binary-amd64"), "an arm64 host reads binary-arm64 only:\n{shown}");
    assert!(shown.contains("NO-AMD64-PACKAGE"), "the amd64 package is not installable there:\n{shown}");
    for module in ["v4l2loopback", "acpi-call"] {
        let package = format!("DPKG {module}-modules-{ARM} arm64 install ok installed");
        assert!(shown.contains(&package), "{package:?} missing:\n{shown}");
        let sha = ckms::cache::sha256_hex(&stored(module, ARM));
        assert!(shown.contains(&format!("SHA {sha}")), "{module}: the store's arm64 module installed:\n{shown}");
    }
    for line in [
        "DEP updates/dkms/v4l2loopback.ko: kernel/drivers/media/v4l2-core/videodev.ko kernel/drivers/media/mc/mc.ko"
            .into(),
        format!("insmod /lib/modules/{ARM}/kernel/drivers/media/v4l2-core/videodev.ko"),
        format!("insmod /lib/modules/{ARM}/updates/dkms/v4l2loopback.ko"),
        format!("KERNEL-DIR {ARM}"),
    ] {
        assert!(shown.contains(&line), "{line:?} missing:\n{shown}");
    }
    assert!(!shown.contains(&format!("KERNEL-DIR {AMD}")), "{shown}");
}

#[test]
fn sysext_arm64_extensions_are_refused_by_systemd_sysext_on_this_amd64_machine() {
    for (tool, package) in [("systemd-sysext", "systemd"), ("unshare", "util-linux"), ("fsck.erofs", "erofs-utils")] {
        need(tool, package);
    }
    assert!(rustix::process::geteuid().is_root(), "systemd-sysext merge mounts: run this test as root");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/lib/modules")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::fs::write(root.join("usr/lib/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    let extensions = root.join("var/lib/extensions");
    publish("sysext", &extensions, &["-m", "v4l2loopback"]);
    for (kernel, arch) in [(ARM, "arm64"), (AMD, "x86-64")] {
        let name = format!("v4l2loopback-{kernel}");
        let tree = dir.path().join(&name);
        run(Command::new("fsck.erofs")
            .arg(format!("--extract={}", tree.display()))
            .arg(extensions.join(format!("{name}.raw"))));
        let release =
            std::fs::read_to_string(tree.join(format!("usr/lib/extension-release.d/extension-release.{name}")))
                .unwrap();
        assert!(release.contains(&format!("\nARCHITECTURE={arch}\n")), "{name}: {release}");
        let module =
            std::fs::read(tree.join(format!("usr/lib/modules/{kernel}/updates/dkms/v4l2loopback.ko"))).unwrap();
        assert_eq!(module, stored("v4l2loopback", kernel), "{name} holds the store's module");
    }

    let r = root.display();
    let script = format!(
        r#"set -eu
# systemd-sysext wants /run a mount and / shared (its helper's mounts come back to this namespace).
mount -t tmpfs ckms-test-run /run
mount --make-rshared /
SYSTEMD_LOG_LEVEL=debug systemd-sysext merge --root={r} 2>&1 | grep -E "architecture|matches|Using extensions|Merged"
ls {r}/usr/lib/modules | sed 's/^/MERGED /'
systemd-sysext unmerge --root={r} >/dev/null 2>&1
"#
    );
    let shown = run(Command::new("unshare").args(["--mount", "--propagation", "shared", "sh", "-c", &script]));
    eprintln!("{shown}");
    // systemd-sysext compares ARCHITECTURE= with the machine it runs on (systemd 252 says why
    // at debug level), and merges only the extension of this machine's architecture.
    assert!(
        shown.contains(&format!(
            "Extension 'v4l2loopback-{ARM}' is for architecture 'arm64', but deployed on top of 'x86-64'"
        )),
        "the arm64 extension refused for its architecture:\n{shown}"
    );
    assert!(shown.contains(&format!("Using extensions 'v4l2loopback-{AMD}'.")), "only the amd64 one:\n{shown}");
    assert!(shown.contains(&format!("MERGED {AMD}")) && !shown.contains(&format!("MERGED {ARM}")), "{shown}");
}

#[test]
fn kmm_arm64_image_is_pulled_for_arm64_by_podman_and_its_worker_step_runs_under_qemu_user() {
    need_emulation("aarch64");
    need("podman", "podman");
    let registry = registry::LocalRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kmm");
    publish("kmm", &out, &["-m", "v4l2loopback", "--registry", &registry.host, "--insecure"]);
    let module = std::fs::read_to_string(out.join("module.yaml")).unwrap();
    for kernel in [ARM, AMD] {
        assert!(module.contains(&format!("literal: \"{kernel}\"")), "{module}");
    }
    for (kernel, arch) in [(ARM, "arm64"), (AMD, "amd64")] {
        let archive = out.join(format!("v4l2loopback_{kernel}.oci.tar"));
        let (config, index) = image_documents(&archive);
        assert_eq!((&config["architecture"], &config["os"]), (&arch.into(), &"linux".into()), "{kernel}");
        let platform = serde_json::json!({ "architecture": arch, "os": "linux" });
        assert_eq!(index["manifests"][0]["platform"], platform, "{kernel}: {index}");
    }

    let podman_host = engine_host("CKMS_TEST_PODMAN_HOST");
    let image = format!("{}/ckms/v4l2loopback", registry.host);
    let pull = |kernel: &str| {
        let reference = format!("{image}:{kernel}");
        let out =
            podman(&podman_host).args(["pull", "--tls-verify=false", "--arch", "arm64", &reference]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let arch = run(podman(&podman_host).args(["image", "inspect", "--format", "{{.Architecture}}", &reference]));
        (reference, String::from_utf8_lossy(&out.stderr).into_owned(), arch.trim().to_string())
    };
    // Podman checks the image it pulled against the platform asked for.
    let mismatch = "does not match the expected platform";
    let (arm, said, arch) = pull(ARM);
    assert_eq!(arch, "arm64");
    assert!(!said.contains(mismatch), "{said}");
    let (amd, said, arch) = pull(AMD);
    assert_eq!(arch, "amd64");
    assert!(said.contains(mismatch), "an amd64 image pulled for arm64 is warned about:\n{said}");
    eprintln!("podman pull --arch arm64 {amd}: {}", said.lines().last().unwrap_or_default());

    // KMM's worker on an arm64 node: the image's own (arm64) busybox copies the tree out.
    let script = format!(
        "busybox uname -m >&2 && mkdir -p /tmp/opt/lib/modules && cp -R /opt/lib/modules/{ARM} /tmp/opt/lib/modules \
         && busybox tar -C /tmp/opt -cf - lib"
    );
    let worker = podman(&podman_host)
        .args(["run", "--rm", "--arch", "arm64", "--network", "none", &arm, "sh", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&worker.stderr);
    assert!(worker.status.success(), "{said}");
    assert_eq!(said.trim(), "aarch64", "the worker step runs emulated");
    let copied = dir.path().join("kmm-worker");
    std::fs::create_dir_all(&copied).unwrap();
    tar::Archive::new(&worker.stdout[..]).unpack(&copied).unwrap();
    let kdir = copied.join(format!("lib/modules/{ARM}"));
    let module = std::fs::read(kdir.join("updates/dkms/v4l2loopback.ko")).unwrap();
    assert_eq!(module, stored("v4l2loopback", ARM), "the image holds the store's arm64 module");
    let dep = std::fs::read_to_string(kdir.join("modules.dep")).unwrap();
    assert!(dep.contains("updates/dkms/v4l2loopback.ko: host/kernel/drivers/media/v4l2-core/videodev.ko"), "{dep}");
    assert_eq!(std::fs::read_link(kdir.join("host")).unwrap(), Path::new(&format!("/lib/modules/{ARM}")));
    for reference in [arm, amd] {
        let _ = podman(&podman_host).args(["rmi", &reference]).output();
    }
}

/// The image configuration and the layout's index.json of an image archive.
fn image_documents(archive: &Path) -> (serde_json::Value, serde_json::Value) {
    let mut members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        members.insert(name, bytes);
    }
    let docker: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let config = serde_json::from_slice(&members[docker[0]["Config"].as_str().unwrap()]).unwrap();
    (config, serde_json::from_slice(&members["index.json"]).unwrap())
}

#[test]
fn cache_a_host_installs_its_own_architectures_entry_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = farm_key(dir.path());
    let out = dir.path().join("cache");
    publish("cache", &out, &["--key", &key.to_string_lossy()]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let key_of = |kernel: &str| record("v4l2loopback", kernel)["key"].as_str().unwrap().to_string();
    let (arm_key, amd_key) = (key_of(ARM), key_of(AMD));
    assert_ne!(arm_key, amd_key);
    for (k, kernel, arch) in [(&arm_key, ARM, "aarch64"), (&amd_key, AMD, "x86_64")] {
        let e = &index["entries"][k];
        assert_eq!((&e["module"], &e["kernel"], &e["arch"]), (&"v4l2loopback".into(), &kernel.into(), &arch.into()));
    }

    // A host (a root of this machine, no engine) with the module's source from its package,
    // the cache over HTTP and the farm's key.
    let mut files = HashMap::new();
    served(&out, "", &mut files);
    let server = HttpServer::start(files);
    let root = dir.path().join("host");
    let etc = root.join("etc/ckms");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(out.join("farm.pub.asc"), etc.join("farm.pub.asc")).unwrap();
    let config = etc.join("config.toml");
    let text = format!(
        "[prebuilt]\nurls = [\"{}/\"]\nkeys = [\"{}\"]\nallow_http = true\n",
        server.base(),
        etc.join("farm.pub.asc").display()
    );
    std::fs::write(&config, text).unwrap();
    let source = record("v4l2loopback", ARM)["source"].clone();
    let deb = source_deb(source["package"].as_str().unwrap(), source["package_version"].as_str().unwrap());
    let cache = shared_cache();
    let host = |args: &[&str]| {
        let root_s = root.to_string_lossy();
        let mut all =
            vec!["--engine", "unix:///nonexistent/ckms-arm64-host.sock", "--cache-dir", cache.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend(["--root", &root_s]);
        ckms(all).env("CKMS_CONFIG", &config).run()
    };
    host(&["add", deb.to_str().unwrap()]).expect_code(0);
    let started = Instant::now();
    let installed = host(&["install", "v4l2loopback/0.12.7", "-k", ARM, "--prebuilt-only"]);
    installed.expect_code(0);
    eprintln!("prebuilt install for {ARM}: {:.1} s{installed}", started.elapsed().as_secs_f64());
    assert!(installed.stderr.contains(&arm_key), "{installed}");
    assert!(installed.stderr.contains("Signature of v4l2loopback.ko verified"), "{installed}");

    let module = std::fs::read(root.join(format!("lib/modules/{ARM}/updates/dkms/v4l2loopback.ko"))).unwrap();
    assert_eq!(module, stored("v4l2loopback", ARM), "the aarch64 entry's module");
    assert_eq!(elf_machine(&module), EM_AARCH64);
    assert!(!root.join(format!("lib/modules/{AMD}")).exists(), "nothing for the amd64 kernel");
    let dep = std::fs::read_to_string(root.join(format!("lib/modules/{ARM}/modules.dep"))).unwrap();
    assert!(dep.contains("updates/dkms/v4l2loopback.ko:"), "{dep}");
    let requests = server.requests();
    assert!(requests.iter().any(|r| r.contains(&format!("pairs/{arm_key}/"))), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains(&amd_key)), "the x86_64 entry is never fetched: {requests:?}");
    let status = host(&["status"]);
    assert!(status.stdout.contains(&format!("v4l2loopback/0.12.7, {ARM}, aarch64: installed")), "{status}");
}
