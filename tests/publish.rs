//! `ckms farm publish` from a real store (v4l2loopback, tp-smapi and acpi-call built for 6.1.0-56-amd64 on
//! Docker; fails when the engine is missing):
//!
//! - apt: the repository's InRelease and Release.gpg pass gpgv; real apt-get installs the
//!   packages in a clean bookworm container (made with mmdebstrap from the host's Debian
//!   sources, with the kernel's image package, `docker import`ed and cached), the module files
//!   land and depmod indexes them; `apt-get purge` leaves /lib/modules/<kver> as before;
//! - sysext: erofs and squashfs images published twice are byte-identical and hold the store's
//!   modules under their kernel's directory only, with no module index; real `systemd-sysext
//!   merge` (in a private mount namespace, over a root holding the kernel's own modules) merges
//!   two ckms extensions, and after the extensions' depmod hook modprobe resolves the modules
//!   of both, with their in-tree dependencies;
//! - kmm: images published twice are byte-identical; pushed to Debian's docker-registry on
//!   loopback, pulled back by Podman, KMM's worker steps (`cp -R /opt/lib/modules/<kver>`)
//!   find the store's module, its depmod index and the `host` link to the node's modules.
//! - each format as a host loads it, in its kernel under qemu: apt's tree and KMM's worker
//!   copy by kmod's own `modprobe -d` (`ckms verify --tree`); the two extensions merged by the
//!   real systemd-sysext in the VM, then modprobe (`ckms verify --sysext`).
//!
//! Every tool it needs (gpg, gpgv, mmdebstrap, docker, erofs-utils, squashfs-tools,
//! systemd-sysext, unshare, docker-registry, podman) must be there: a missing one fails the
//! test, it never skips.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bookworm::{bookworm_image, docker, farm_key, need, run, KERNEL};
use support::{ckms, engine_host, shared_cache};

#[path = "support/bookworm.rs"]
mod bookworm;

#[path = "support/registry.rs"]
mod registry;

/// The store, built once per test binary (kept between runs: a re-run builds nothing).
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let host = engine_host("CKMS_TEST_DOCKER_HOST");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("publish-store");
        let cache = shared_cache();
        let (cache, store) = (cache.to_string_lossy(), dir.to_string_lossy());
        // acpi_call loads without hardware (it adds /proc/acpi/call), tp_smapi's modules need a ThinkPad.
        let sources = ["deb:v4l2loopback-dkms", "deb:tp-smapi-dkms", "deb:acpi-call-dkms"];
        let out = ckms(
            ["--engine", &host, "--cache-dir", &cache, "farm", "build", "--store", &store, "-k", KERNEL]
                .into_iter()
                .chain(sources),
        )
        .run();
        assert!(out.code == 0 || out.code == 77, "the store could not be built{out}");
        dir
    })
}

/// The store's file `name` (a module as the store holds it, signed).
fn stored_module(name: &str) -> Vec<u8> {
    for e in std::fs::read_dir(store().join("pairs")).unwrap() {
        let path = e.unwrap().path().join("modules").join(name);
        if path.is_file() {
            return std::fs::read(path).unwrap();
        }
    }
    panic!("{name} is not in the store {}", store().display());
}

fn publish(format: &str, out: &Path, extra: &[&str]) -> support::Outcome {
    let store = store().to_string_lossy().into_owned();
    let out = out.to_string_lossy().into_owned();
    let mut args = vec!["farm", "publish", "--store", &store, "--format", format, "--out", &out];
    args.extend(extra);
    let run = ckms(args).run();
    run.expect_code(0);
    run
}

#[test]
fn apt_repository_installs_with_apt_get_and_purges_clean() {
    need("gpgv", "gpgv");
    need("docker", "docker.io");
    let host = engine_host("CKMS_TEST_DOCKER_HOST");
    let dir = tempfile::tempdir().unwrap();
    let key = farm_key(dir.path());
    let out = dir.path().join("apt");
    let shown = publish("apt", &out, &["--key", &key.to_string_lossy()]);
    assert!(shown.stdout.contains("signed-by=/usr/share/keyrings/ckms-archive-keyring.gpg"), "{shown}");

    let keyring = out.join("ckms-archive-keyring.gpg");
    let suite = out.join("dists/bookworm");
    run(Command::new("gpgv").arg("--keyring").arg(&keyring).arg(suite.join("InRelease")));
    run(Command::new("gpgv").arg("--keyring").arg(&keyring).arg(suite.join("Release.gpg")).arg(suite.join("Release")));

    // Publishing again gives the same repository, byte for byte.
    let again = dir.path().join("apt2");
    publish("apt", &again, &["--key", &key.to_string_lossy()]);
    for f in ["dists/bookworm/InRelease", "dists/bookworm/main/binary-amd64/Packages.gz"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f} differs");
    }

    let image = bookworm_image(&host);
    let v4l2 = support::sha256_file(&store_file("v4l2loopback.ko"));
    let script = format!(
        r#"set -eu
K={KERNEL}
snapshot() {{ cd /lib/modules/$K && find . -printf '%p %y %m\n' | sort && sha256sum modules.* | sort; }}
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo "deb [signed-by=/repo/ckms-archive-keyring.gpg] file:/repo bookworm main" >/etc/apt/sources.list.d/ckms.list
snapshot >/tmp/before
apt-get update -q
apt-get install -y -q v4l2loopback-modules-$K tp-smapi-modules-$K
echo "INSTALLED $(sha256sum /lib/modules/$K/updates/dkms/v4l2loopback.ko)"
grep -q '^updates/dkms/v4l2loopback.ko:' /lib/modules/$K/modules.dep && echo INDEXED-V4L2
grep -q '^updates/dkms/tp_smapi.ko:.*thinkpad_ec.ko' /lib/modules/$K/modules.dep && echo INDEXED-SMAPI
modprobe --show-depends -S $K v4l2loopback
# What modprobe reads for v4l2loopback (the index and the files it inserts), for the VM.
{{ ls /lib/modules/$K/modules.*; modprobe --show-depends -S $K v4l2loopback | awk '$1 == "insmod" {{ print $2 }}'; }} \
  | sed 's,^/,,' | tar -C / -cf /installed/tree.tar -T -
apt-get purge -y -q v4l2loopback-modules-$K tp-smapi-modules-$K
snapshot >/tmp/after
diff /tmp/before /tmp/after && echo PURGE-RESTORED
"#
    );
    let mount = format!("{}:/repo:ro", out.display());
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    let copied = format!("{}:/installed", installed.display());
    let shown = run(docker(&host).args([
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        "-v",
        &copied,
        &image,
        "bash",
        "-c",
        &script,
    ]));
    assert!(shown.contains(&format!("INSTALLED {v4l2}")), "the installed module is the store's:\n{shown}");
    for marker in ["INDEXED-V4L2", "INDEXED-SMAPI", "PURGE-RESTORED", "videodev.ko", "updates/dkms/v4l2loopback.ko"] {
        assert!(shown.contains(marker), "{marker} missing:\n{shown}");
    }
    // What apt installed loads in the kernel it was installed for, by modprobe.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    run(Command::new("tar").arg("-xf").arg(installed.join("tree.tar")).arg("-C").arg(&tree));
    modprobed_in_vm("apt", &tree, &["v4l2loopback"], &[]);
}

/// Boots KERNEL (its own linux-image package, under qemu in the verifier image, on Podman)
/// and loads `modules` from `tree` (a root holding lib/modules/KERNEL as the consumer left
/// it) with the distribution's own modprobe, `modprobe -d <tree> <module>`, as the consumer
/// loads them: each must load, except those named in `no_device`, drivers for hardware the
/// VM lacks, whose init must run and say so (ENODEV: the kernel took the module, its
/// signature and symbols).
fn modprobed_in_vm(what: &str, tree: &Path, modules: &[&str], no_device: &[&str]) {
    let result = loaded_in_vm(what, &["--tree".into(), tree.display().to_string()], modules, no_device);
    assert!(result.to_string().contains("insmod /ckms/root/"), "{what}: modprobe's own insmod lines{result:#}");
}

/// The same for `subject` (`--tree DIR` or `--sysext IMAGE...`); returns the VM's result.
fn loaded_in_vm(what: &str, subject: &[String], modules: &[&str], no_device: &[&str]) -> serde_json::Value {
    let podman = engine_host("CKMS_TEST_PODMAN_HOST");
    let cache = shared_cache();
    let mut args = vec!["--engine".to_string(), podman, "--cache-dir".into(), cache.display().to_string()];
    args.extend(["--json", "verify", "-k", KERNEL].map(String::from));
    args.extend(subject.iter().cloned());
    for m in modules {
        args.extend(["--modprobe".to_string(), m.to_string()]);
    }
    let run = ckms(&args).run();
    run.expect_code(if no_device.is_empty() { 0 } else { 12 });
    let result = run.json_result();
    let verified = result[0]["modules"].as_array().cloned().unwrap_or_default();
    assert_eq!(verified.len(), modules.len(), "{what}: every module verified{run}");
    for m in &verified {
        if no_device.contains(&m["name"].as_str().unwrap_or_default()) {
            assert!(m["insmod"].to_string().contains("No such device"), "{what}: {m:#}");
        } else {
            assert_eq!(m["loaded"], true, "{what}: {m:#}");
        }
    }
    eprintln!("{what}: {} module(s) loaded by modprobe in {KERNEL} under qemu", verified.len());
    result[0].clone()
}

fn store_file(name: &str) -> PathBuf {
    let bytes = stored_module(name);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("publish-{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn sysext_images_are_reproducible_and_hold_only_their_kernels_modules() {
    need("fsck.erofs", "erofs-utils");
    need("unsquashfs", "squashfs-tools");
    let dir = tempfile::tempdir().unwrap();
    let image = format!("v4l2loopback-{KERNEL}.raw");
    for (fs, extra) in [("erofs", vec![]), ("squashfs", vec!["--filesystem", "squashfs"])] {
        let (a, b) = (dir.path().join(format!("{fs}-a")), dir.path().join(format!("{fs}-b")));
        publish("sysext", &a, &extra);
        publish("sysext", &b, &extra);
        for name in [image.clone(), format!("tp_smapi-{KERNEL}.raw")] {
            assert_eq!(
                std::fs::read(a.join(&name)).unwrap(),
                std::fs::read(b.join(&name)).unwrap(),
                "{fs}: {name} differs"
            );
        }
    }

    let tree = dir.path().join("tree");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(dir.path().join("erofs-a").join(&image)));
    let module = tree.join(format!("usr/lib/modules/{KERNEL}/updates/dkms/v4l2loopback.ko"));
    assert_eq!(std::fs::read(&module).unwrap(), stored_module("v4l2loopback.ko"), "the store's signed module");
    let release = std::fs::read_to_string(
        tree.join(format!("usr/lib/extension-release.d/extension-release.v4l2loopback-{KERNEL}")),
    )
    .unwrap();
    for line in ["ID=debian\n", "VERSION_ID=12\n", "ARCHITECTURE=x86-64\n"] {
        assert!(release.contains(line), "{line:?} not in {release}");
    }
    let listing = run(Command::new("unsquashfs").arg("-l").arg(dir.path().join("squashfs-a").join(&image)));
    for path in listing.lines().filter(|l| l.contains("/usr/lib/modules/")) {
        assert!(path.contains(&format!("/usr/lib/modules/{KERNEL}")), "only its kernel's directory: {path}");
        assert!(!path.contains("modules.dep") && !path.contains("modules.alias"), "no index in an extension: {path}");
    }
    assert!(listing.contains(&format!("/usr/lib/modules/{KERNEL}/updates/dkms/v4l2loopback.ko")), "{listing}");
}

/// The kernel's own modules that v4l2loopback needs, and its index files, from its image
/// package (downloaded once into the test cache).
fn kernel_modules(root: &Path) {
    let dir = shared_cache().join("publish");
    std::fs::create_dir_all(&dir).unwrap();
    // The directory holds other tests' downloads too (v4l2loopback-dkms): find the image's.
    let find =
        || {
            std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("linux-image-{KERNEL}_")))
            })
        };
    let deb = find().unwrap_or_else(|| {
        run(Command::new("apt-get").current_dir(&dir).args(["download", &format!("linux-image-{KERNEL}")]));
        find().expect("apt-get download left no linux-image package")
    });
    let script = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './lib/modules/{KERNEL}/kernel/drivers/media/*' \
         './lib/modules/{KERNEL}/modules.order' './lib/modules/{KERNEL}/modules.builtin*'",
        deb.display(),
        root.display()
    );
    run(Command::new("sh").args(["-c", &script]));
}

#[test]
fn two_extensions_merged_by_systemd_sysext_both_resolve_after_the_hook() {
    for (tool, package) in
        [("systemd-sysext", "systemd"), ("unshare", "util-linux"), ("depmod", "kmod"), ("dpkg-deb", "dpkg")]
    {
        need(tool, package);
    }
    assert!(rustix::process::geteuid().is_root(), "systemd-sysext merge and the hook mount: run this test as root");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let staging = dir.path().join("unpacked");
    std::fs::create_dir_all(&staging).unwrap();
    kernel_modules(&staging);
    let usr_lib = root.join("usr/lib");
    std::fs::create_dir_all(usr_lib.join("modules")).unwrap();
    std::fs::rename(staging.join(format!("lib/modules/{KERNEL}")), usr_lib.join(format!("modules/{KERNEL}"))).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::fs::write(usr_lib.join("os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    run(Command::new("depmod").arg("-b").arg(&root).arg(KERNEL));
    let extensions = root.join("var/lib/extensions");
    publish("sysext", &extensions, &[]);

    let r = root.display();
    let script = format!(
        r#"set -eu
R={r}; K={KERNEL}
# systemd-sysext wants /run a mount and / shared (its helper's mounts come back to this namespace).
mount -t tmpfs ckms-test-run /run
mount --make-rshared /
before=$(cd $R/usr && find . | sort)
systemd-sysext merge --root=$R
after=$(cd $R/usr && find . | sort)
echo "ADDED:"; printf '%s\n' "$before" "$before" "$after" | sort | uniq -u
modprobe -d $R -S $K --show-depends v4l2loopback >/dev/null 2>&1 || echo "BASE-INDEX-HAS-NOT-V4L2"
$R/usr/lib/ckms/sysext-depmod $R $K
modprobe -d $R -S $K --show-depends v4l2loopback
modprobe -d $R -S $K --show-depends tp_smapi
umount $R/usr/lib/modules/$K
systemd-sysext unmerge --root=$R
"#
    );
    let shown = run(Command::new("unshare").args(["--mount", "--propagation", "shared", "sh", "-c", &script]));
    let added: Vec<&str> = shown
        .lines()
        .skip_while(|l| *l != "ADDED:")
        .skip(1)
        .take_while(|l| !l.starts_with("BASE-") && !l.starts_with("insmod"))
        .collect();
    assert!(!added.is_empty(), "the merge added nothing:\n{shown}");
    for path in &added {
        // .systemd-sysext: systemd's own record of the merge.
        let ok = path.starts_with(&format!("./lib/modules/{KERNEL}/updates"))
            || path.starts_with("./.systemd-sysext")
            || path.starts_with("./lib/extension-release.d")
            || path.starts_with("./lib/ckms")
            || path.starts_with("./lib/systemd");
        assert!(ok, "an extension added {path} (outside its kernel's directory and its hook):\n{shown}");
    }
    assert!(shown.contains("BASE-INDEX-HAS-NOT-V4L2"), "before the hook the base's index knows nothing:\n{shown}");
    for line in [
        format!("insmod {r}/lib/modules/{KERNEL}/kernel/drivers/media/v4l2-core/videodev.ko"),
        format!("insmod {r}/lib/modules/{KERNEL}/updates/dkms/v4l2loopback.ko"),
        format!("insmod {r}/lib/modules/{KERNEL}/updates/dkms/thinkpad_ec.ko"),
        format!("insmod {r}/lib/modules/{KERNEL}/updates/dkms/tp_smapi.ko"),
    ] {
        assert!(shown.contains(&line), "{line:?} missing: both extensions' modules must resolve\n{shown}");
    }
    // In their kernel, as a host does after boot: real systemd-sysext merges the images, the
    // extensions' hook indexes the merged tree, modprobe loads a module of each: v4l2loopback
    // and acpi_call load; thinkpad_ec (tp_smapi's base) is taken and its init finds no
    // ThinkPad (tp_smapi and hdaps need it loaded, so they cannot be shown without the hardware).
    let mut images: Vec<PathBuf> = std::fs::read_dir(&extensions)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raw"))
        .collect();
    images.sort();
    assert_eq!(images.len(), 3, "an extension image per module: {images:?}");
    let images: Vec<String> = images.iter().flat_map(|p| ["--sysext".to_string(), p.display().to_string()]).collect();
    let vm = loaded_in_vm("sysext", &images, &["v4l2loopback", "acpi_call", "thinkpad_ec"], &["thinkpad_ec"]);
    let prepare = vm["prepare"].to_string();
    assert!(prepare.contains("Merged extensions into '/usr'"), "systemd-sysext merged in the VM: {prepare}");
    let modules = vm["modules"].to_string();
    assert!(modules.contains(&format!("insmod /lib/modules/{KERNEL}/updates/dkms/v4l2loopback.ko")), "{modules}");
}

#[test]
fn kmm_images_pushed_to_a_local_registry_are_pulled_back_by_podman_and_hold_the_module() {
    need("podman", "podman");
    let podman_host = engine_host("CKMS_TEST_PODMAN_HOST");
    let registry = registry::LocalRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let push = ["-m", "v4l2loopback", "--registry", &registry.host, "--insecure"];
    publish("kmm", &a, &push);
    publish("kmm", &b, &["-m", "v4l2loopback", "--repository", &format!("{}/ckms/v4l2loopback", registry.host)]);
    let archive = format!("v4l2loopback_{KERNEL}.oci.tar");
    assert_eq!(std::fs::read(a.join(&archive)).unwrap(), std::fs::read(b.join(&archive)).unwrap(), "reproducible");
    let module = std::fs::read_to_string(a.join("module.yaml")).unwrap();
    let image = format!("{}/ckms/v4l2loopback", registry.host);
    assert!(module.contains(&format!("containerImage: \"{image}:${{KERNEL_FULL_VERSION}}\"")), "{module}");
    assert!(module.contains(&format!("literal: \"{KERNEL}\"")), "{module}");

    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--remote").arg("--url").arg(&podman_host);
        c
    };
    let reference = format!("{image}:{KERNEL}");
    run(podman().args(["pull", "--quiet", "--tls-verify=false", &reference]));
    // KMM's worker: copy the kernel's tree out of the image with the image's cp (the tar
    // brings the copy out of the container, its `host` link with it).
    let script = format!(
        "mkdir -p /tmp/opt/lib/modules && cp -R /opt/lib/modules/{KERNEL} /tmp/opt/lib/modules && \
         grep -q '^updates/dkms/v4l2loopback.ko: host/kernel/drivers/media/v4l2-core/videodev.ko' \
           /tmp/opt/lib/modules/{KERNEL}/modules.dep && busybox tar -C /tmp/opt -cf - lib"
    );
    let out = podman().args(["run", "--rm", "--network", "none", &reference, "sh", "-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copied = dir.path().join("kmm-worker");
    std::fs::create_dir_all(&copied).unwrap();
    tar::Archive::new(&out.stdout[..]).unpack(&copied).unwrap();
    let module = copied.join(format!("lib/modules/{KERNEL}/updates/dkms/v4l2loopback.ko"));
    assert!(std::fs::read(module).unwrap() == stored_module("v4l2loopback.ko"), "the image holds the store's module");
    let link = std::fs::read_link(copied.join(format!("lib/modules/{KERNEL}/host"))).unwrap();
    assert_eq!(link, Path::new(&format!("/lib/modules/{KERNEL}")), "in-tree dependencies come from the node");
    // KMM's worker's load: `modprobe -d` over its copy, the node's /lib/modules behind `host`.
    modprobed_in_vm("kmm", &copied, &["v4l2loopback"], &[]);
    let _ = podman().args(["rmi", &reference]).output();
}
