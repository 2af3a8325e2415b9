//! The dkms verbs through the binary into a `--root` tree that looks like a real system: for a
//! bookworm kernel (modules uncompressed) and the newest trixie kernel (modules `.ko.xz`), a
//! `/lib/modules/<k>` with the modules.* files of a depmod run and an in-tree module of the
//! same name as the dkms one. Then add, build, mktarball, remove --all, ldtarball, install,
//! status (text and --json), uninstall, unbuild, remove: the module lands in updates/dkms with
//! the right vermagic, depmod's index points at it, the in-tree module is backed up and comes
//! back, and uninstall and remove leave the tree byte for byte (paths, contents, modes) as it was.
//!
//! Included by tests/modules_{podman,docker}.rs with the engine's env variable; they also
//! declare `mod support` (tests/support) and `mod hostile` (for `walk`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::hostile::{walk, Entry};
use crate::support::{ckms, newest_trixie, shared_cache, Outcome};

const BOOKWORM: &str = "6.1.0-56-amd64";
const ARCH: &str = "x86_64";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A tree and the ckms verbs on it.
struct Tree {
    engine: String,
    kernel: String,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn ckms(&self, verb: &str, args: &[&str]) -> Outcome {
        let cache = shared_cache();
        let mut all = vec!["--engine", &self.engine, "--cache-dir", cache.to_str().unwrap(), verb];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--root", self.root.to_str().unwrap()]);
        ckms(all).run()
    }

    fn ok(&self, verb: &str, args: &[&str]) -> Outcome {
        let run = self.ckms(verb, args);
        run.expect_code(0);
        run
    }

    fn status(&self) -> Vec<String> {
        self.ok("status", &[]).stdout.lines().map(str::to_string).collect()
    }

    fn kdir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kernel)
    }

    fn built(&self, suffix: &str) -> PathBuf {
        self.root.join(format!("var/lib/ckms/hello/1.0/{}/{ARCH}/module/hello.ko{suffix}", self.kernel))
    }
}

/// Differences between two snapshots, as readable lines (never the bytes themselves).
fn diff(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => out.push(format!("gone: {}", p.display())),
            Some(a) if a != e => out.push(format!("changed: {} ({})", p.display(), kind(e, a))),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("new: {}", p.display()));
    }
    out
}

fn kind(a: &Entry, b: &Entry) -> String {
    match (a, b) {
        (Entry::File(x, m), Entry::File(y, n)) => format!("{} -> {} bytes, mode {m:o} -> {n:o}", x.len(), y.len()),
        (Entry::Dir(m), Entry::Dir(n)) => format!("mode {m:o} -> {n:o}"),
        _ => "kind".into(),
    }
}

fn modinfo(args: &[&str]) -> String {
    let out = Command::new("modinfo").args(args).output().expect("run modinfo (kmod)");
    assert!(out.status.success(), "modinfo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The whole cycle for one kernel.
fn cycle(engine: &str, kernel: &str) -> f64 {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("ckms-root-").tempdir().unwrap();
    let t = Tree { engine: engine.into(), kernel: kernel.into(), root: dir.path().join("root"), _dir: dir };
    let cache = shared_cache();
    let global = ["--engine", engine, "--cache-dir", cache.to_str().unwrap()];

    // The builder image, and the in-tree module: tests/fixtures/hello built for the kernel.
    let mut image = global.to_vec();
    image.extend_from_slice(&["image", "build", "-k", kernel]);
    ckms(image).run().expect_code(0);
    let out = tempfile::tempdir().unwrap();
    let make = format!("/lib/modules/{kernel}/build");
    let (src, dest) = (fixture("hello"), out.path().to_str().unwrap().to_string());
    let mut run = global.to_vec();
    run.extend_from_slice(&["image", "run", "-k", kernel, "--src", src.to_str().unwrap(), "--out", &dest]);
    run.extend_from_slice(&["--", "make", "-C", &make, "M=/build", "modules"]);
    ckms(run).run().expect_code(0);
    let in_tree = std::fs::read(out.path().join("hello.ko")).expect("the in-tree module was built");

    // A realistic /lib/modules/<k>: the kernel's compression (trixie: xz), modules.order and
    // modules.builtin as the kernel package ships them, the rest from depmod.
    let xz = kernel.contains("+deb13");
    let suffix = if xz { ".xz" } else { "" };
    let compression =
        if xz { ckms::install::compress::Compression::Xz } else { ckms::install::compress::Compression::None };
    let misc = t.kdir().join("kernel/drivers/misc");
    std::fs::create_dir_all(&misc).unwrap();
    let in_tree_file = misc.join(format!("hello.ko{suffix}"));
    let in_tree_bytes = compression.compress(&in_tree).unwrap();
    std::fs::write(&in_tree_file, &in_tree_bytes).unwrap();
    std::fs::write(t.kdir().join("modules.order"), format!("kernel/drivers/misc/hello.ko{suffix}\n")).unwrap();
    std::fs::write(t.kdir().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
    std::fs::write(t.kdir().join("modules.builtin.modinfo"), b"").unwrap();
    let depmod = Command::new("depmod").arg("-b").arg(&t.root).args(["-a", kernel]).output().expect("run depmod");
    assert!(depmod.status.success(), "depmod: {}", String::from_utf8_lossy(&depmod.stderr));
    assert!(std::fs::read_to_string(t.kdir().join("modules.dep")).unwrap().contains("kernel/drivers/misc/hello.ko"));
    // The dkms package's source, as its .deb puts it.
    let source = t.root.join("usr/src/hello-1.0");
    std::fs::create_dir_all(&source).unwrap();
    for f in ["dkms.conf", "Kbuild", "hello.c"] {
        std::fs::copy(fixture("hello-dkms").join(f), source.join(f)).unwrap();
    }
    let system = walk(&t.root);
    let modules = walk(&t.root.join("lib/modules"));

    // add, build: nothing in /lib/modules changes.
    t.ok("add", &["-m", "hello", "-v", "1.0"]);
    assert_eq!(t.status(), ["hello/1.0: added"]);
    t.ok("build", &["hello/1.0", "-k", kernel]);
    assert_eq!(t.status(), [format!("hello/1.0, {kernel}, {ARCH}: built")]);
    let built = std::fs::read(t.built(suffix)).unwrap_or_else(|e| panic!("{}: {e}", t.built(suffix).display()));
    assert_eq!(diff(&modules, &walk(&t.root.join("lib/modules"))), Vec::<String>::new(), "build touched /lib/modules");

    // mktarball, remove --all, ldtarball: the same build back, without building.
    let tar = t.ok("mktarball", &["hello/1.0", "-k", kernel]);
    let path = tar.stdout.trim().strip_prefix("Tarball location: ").unwrap_or_else(|| panic!("{tar}")).to_string();
    let kept = out.path().join("hello.dkms.tar.gz");
    std::fs::copy(&path, &kept).unwrap();
    t.ok("remove", &["hello/1.0", "--all"]);
    assert_eq!(t.status(), Vec::<String>::new());
    let load = t.ok("ldtarball", &[kept.to_str().unwrap()]);
    assert_eq!(t.status(), [format!("hello/1.0, {kernel}, {ARCH}: built")], "{load}");
    assert!(std::fs::read(t.built(suffix)).unwrap() == built, "ldtarball brought back the same module");

    // install: ours in updates/dkms (from the loaded build, not a new one), the in-tree module
    // backed up, depmod's index pointing at ours.
    let install = t.ok("install", &["hello/1.0", "-k", kernel]);
    assert!(!install.stderr.contains("Building module"), "install rebuilt{install}");
    assert_eq!(t.status(), [format!("hello/1.0, {kernel}, {ARCH}: installed (Original modules exist)")]);
    let ours = t.kdir().join(format!("updates/dkms/hello.ko{suffix}"));
    let meta = std::fs::metadata(&ours).unwrap_or_else(|e| panic!("{}: {e}{install}", ours.display()));
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o644);
    assert!(std::fs::read(&ours).unwrap() == built, "the installed file is the built one");
    if xz {
        assert_eq!(&built[..6], b"\xfd7zXZ\0", "trixie's modules are xz-compressed");
    }
    let ours_s = ours.to_str().unwrap();
    let vermagic = modinfo(&["-F", "vermagic", ours_s]);
    assert_eq!(vermagic.split_whitespace().next(), Some(kernel), "vermagic {vermagic}");
    assert_eq!(modinfo(&["-F", "version", ours_s]), "1.0");
    // Signed on the host (the kernel has CONFIG_MODULE_SIG_HASH) with the pair made on first use.
    assert_eq!(modinfo(&["-F", "signer", ours_s]), "ckms module signing key");
    let cert = t.root.join("var/lib/ckms/mok.pub");
    ckms(["verify-signature", ours_s, "--cert", cert.to_str().unwrap()]).run().expect_code(0);
    assert_eq!(modinfo(&["-b", t.root.to_str().unwrap(), "-k", kernel, "-F", "filename", "hello"]), ours_s);
    let dep = std::fs::read_to_string(t.kdir().join("modules.dep")).unwrap();
    assert!(dep.lines().any(|l| l == format!("updates/dkms/hello.ko{suffix}:")), "modules.dep: {dep}");
    assert!(!dep.contains("kernel/drivers/misc/hello.ko"), "the in-tree module is out of the index: {dep}");
    assert!(!in_tree_file.exists(), "the in-tree module was moved aside");
    let backup =
        t.root.join(format!("var/lib/ckms/hello/original_module/{kernel}/{ARCH}/kernel/drivers/misc/hello.ko{suffix}"));
    assert!(
        std::fs::read(&backup).ok() == Some(in_tree_bytes.clone()),
        "{} holds the in-tree module",
        backup.display()
    );
    let json = ckms(["--json", "status", "--root", t.root.to_str().unwrap()]).run();
    json.expect_code(0);
    assert_eq!(
        json.json_result(),
        serde_json::json!([{
            "module": "hello", "version": "1.0", "kernel": kernel, "arch": ARCH,
            "state": "installed", "original_modules": true
        }]),
        "{json}"
    );

    // uninstall: /lib/modules exactly as before (the in-tree module back, depmod's files too).
    t.ok("uninstall", &["hello/1.0", "-k", kernel]);
    assert_eq!(t.status(), [format!("hello/1.0, {kernel}, {ARCH}: built")]);
    assert_eq!(diff(&modules, &walk(&t.root.join("lib/modules"))), Vec::<String>::new(), "after uninstall");

    // unbuild, remove: the whole root as before, but for the tree's own directory and lock,
    // and the signing key pair (enrolled in the firmware, it outlives any module).
    t.ok("unbuild", &["hello/1.0", "-k", kernel]);
    assert_eq!(t.status(), ["hello/1.0: added"]);
    t.ok("remove", &["hello/1.0", "--all"]);
    assert_eq!(t.status(), Vec::<String>::new());
    let expected_new = [
        "new: var",
        "new: var/lib",
        "new: var/lib/ckms",
        "new: var/lib/ckms/.lock",
        "new: var/lib/ckms/mok.key",
        "new: var/lib/ckms/mok.pub",
    ];
    assert_eq!(diff(&system, &walk(&t.root)), expected_new, "after remove");
    started.elapsed().as_secs_f64()
}

pub fn scenario(var: &str) {
    let engine = crate::support::engine_host(var);
    let _disk = crate::support::disk_shared();
    let trixie = newest_trixie(&engine);
    let kind = if var.contains("PODMAN") { "podman" } else { "docker" };
    let kernels = [BOOKWORM.to_string(), trixie];
    let results = crate::hostile::in_parallel(&kernels, |k| cycle(&engine, k));
    for (k, secs) in crate::hostile::all_ok(&format!("--root lifecycle on {kind}"), results) {
        eprintln!("--root lifecycle for {k} on {kind}: {secs:.1} s");
    }
}
