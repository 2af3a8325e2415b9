//! What a build sees beyond its own source, as on a dkms host (tests/fixtures/srctree/):
//!
//! - a package's own Depends: a module whose Makefile runs lz4 fails without it (added as a
//!   plain directory, no package known), and builds once added as the `.deb` this test makes
//!   with `dpkg-deb --build` (`Depends: dkms, lz4`), the output naming the added package;
//! - the source tree: a module built against another module's source, found with `find
//!   /usr/src` in its dkms.conf and written into its own /usr/src/<m>-<v> (west-chamber-dkms's
//!   way), builds; the other module's source and built tree are read-only to it; and the host's
//!   /usr/src is byte for byte as before (every path, file, mode and link target).
//!
//! Included by tests/modules_{podman,docker}.rs with the engine's env variable; they also
//! declare `mod support` and `mod hostile` (for `walk`, `in_parallel`, `all_ok`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hostile::{walk, KERNEL};
use crate::support::{ckms, shared_cache, Outcome};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/srctree").join(name)
}

/// A `--root` tree and the ckms verbs on it.
struct Tree {
    engine: String,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new(engine: &str, name: &str) -> Tree {
        let dir = tempfile::Builder::new().prefix(&format!("ckms-srctree-{name}-")).tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/src")).unwrap();
        Tree { engine: engine.into(), root, _dir: dir }
    }

    fn ckms(&self, verb: &str, args: &[&str]) -> Outcome {
        let cache = shared_cache();
        let mut all = vec!["--engine", &self.engine, "--cache-dir", cache.to_str().unwrap(), verb];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--root", self.root.to_str().unwrap()]);
        ckms(all).run()
    }

    /// The fixture as `<root>/usr/src/<m>-<v>`, as its package installs it.
    fn install_source(&self, fixture_name: &str, dir: &str) -> PathBuf {
        let dest = self.root.join("usr/src").join(dir);
        copy_dir(&fixture(fixture_name), &dest);
        dest
    }

    fn log(&self, module: &str) -> String {
        let path = self.root.join(format!("var/lib/ckms/{module}/1.0/{KERNEL}/x86_64/log/make.log"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `<dir>/ckms-needs-tool-dkms_1.0-1_all.deb`: the fixture in /usr/src/ckms-needs-tool-1.0,
/// with `Depends: dkms, lz4`.
fn needs_tool_deb(dir: &Path) -> PathBuf {
    let stage = dir.join("stage");
    copy_dir(&fixture("needs-tool"), &stage.join("usr/src/ckms-needs-tool-1.0"));
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::write(
        stage.join("DEBIAN/control"),
        "Package: ckms-needs-tool-dkms\nVersion: 1.0-1\nArchitecture: all\nMaintainer: ckms tests <ckms@localhost>\n\
         Depends: dkms, lz4\nDescription: a module whose build runs lz4\n",
    )
    .unwrap();
    let deb = dir.join("ckms-needs-tool-dkms_1.0-1_all.deb");
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb)
        .output()
        .expect("run dpkg-deb (dpkg)");
    assert!(out.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&out.stderr));
    deb
}

/// Without its package known the build misses lz4; from the package it gets it.
fn package_dependencies(engine: &str) -> f64 {
    let started = std::time::Instant::now();
    let t = Tree::new(engine, "deps");
    let source = t.install_source("needs-tool", "ckms-needs-tool-1.0");
    let run = t.ckms("add", &[source.to_str().unwrap()]);
    run.expect_code(0);
    let failed = t.ckms("build", &["ckms-needs-tool/1.0", "-k", KERNEL]);
    failed.expect_code(10);
    assert!(!failed.stderr.contains("adding lz4"), "no package known, nothing added{failed}");
    let log = t.root.join("var/lib/ckms/ckms-needs-tool/1.0/build/make.log");
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}{failed}", log.display()));
    assert!(log.contains("lz4: No such file or directory"), "make could not run lz4: {log}");

    let deb = needs_tool_deb(t._dir.path());
    let added = t.ckms("add", &[deb.to_str().unwrap()]);
    added.expect_code(0);
    assert!(added.stderr.contains("comes from the package ckms-needs-tool-dkms 1.0-1"), "{added}");
    let origin = t.root.join("var/lib/ckms/ckms-needs-tool/1.0/origin.json");
    let origin: serde_json::Value = serde_json::from_slice(&std::fs::read(&origin).unwrap()).unwrap();
    assert_eq!(origin["depends"], "dkms, lz4", "{origin}");
    let built = t.ckms("build", &["ckms-needs-tool/1.0", "-k", KERNEL]);
    built.expect_code(0);
    assert!(
        built
            .stderr
            .contains("ckms-needs-tool/1.0: adding lz4 (from ckms-needs-tool-dkms's Depends) to the builder image"),
        "the output names the added package and why{built}"
    );
    assert!(t.log("ckms-needs-tool").contains("lz4 -q -f needstool.c needstool.c.lz4"), "{built}");
    let ko = t.root.join(format!("var/lib/ckms/ckms-needs-tool/1.0/{KERNEL}/x86_64/module/needstool.ko"));
    assert!(ko.is_file(), "{} built{built}", ko.display());
    // The dependency went into an image of its own, tagged apart from the kernel's plain one.
    assert!(built.stderr.contains(&format!("{}-extra-", KERNEL)), "{built}");
    started.elapsed().as_secs_f64()
}

/// A module built against another's source under /usr/src, writing into its own.
fn sibling_sources(engine: &str) -> f64 {
    let started = std::time::Instant::now();
    let t = Tree::new(engine, "siblings");
    t.install_source("sibling-base", "ckms-sibling-base-1.0");
    t.install_source("sibling-user", "ckms-sibling-user-1.0");
    let before = walk(&t.root.join("usr/src"));
    for m in ["ckms-sibling-base", "ckms-sibling-user"] {
        t.ckms("add", &["-m", m, "-v", "1.0"]).expect_code(0);
    }
    t.ckms("build", &["ckms-sibling-base/1.0", "-k", KERNEL]).expect_code(0);
    let run = t.ckms("build", &["ckms-sibling-user/1.0", "-k", KERNEL]);
    run.expect_code(0);
    let log = t.log("ckms-sibling-user");
    for line in [
        "probe: base source at /usr/src/ckms-sibling-base-1.0",
        "probe: base source readable",
        "probe: base source read-only",
        "probe: base module visible",
        "probe: base make.log visible",
        "probe: base build read-only",
        "probe: own source link as dkms makes it",
        "probe: kernel headers in /usr/src",
        "probe: own source writable",
    ] {
        assert!(log.lines().any(|l| l == line), "make.log lacks {line:?}:\n{log}{run}");
    }
    assert!(!log.contains("WRITABLE"), "the other module's files were writable:\n{log}");
    let ko = t.root.join(format!("var/lib/ckms/ckms-sibling-user/1.0/{KERNEL}/x86_64/module/sibuser.ko"));
    assert!(ko.is_file(), "{} built{run}", ko.display());
    assert!(walk(&t.root.join("usr/src")) == before, "the host's /usr/src changed{run}");
    started.elapsed().as_secs_f64()
}

/// One case: the engine in, its time out.
type Case = fn(&str) -> f64;

pub fn scenario(var: &str) {
    let engine = crate::support::engine_host(var);
    let _disk = crate::support::disk_shared();
    let kind = if var.contains("PODMAN") { "podman" } else { "docker" };
    let cache = shared_cache();
    // The plain image first, once: both cases start from it.
    ckms(["--engine", &engine, "--cache-dir", cache.to_str().unwrap(), "image", "build", "-k", KERNEL])
        .run()
        .expect_code(0);
    let cases: [(&str, Case); 2] =
        [("package dependencies", package_dependencies), ("sibling sources", sibling_sources)];
    let results = crate::hostile::in_parallel(&cases, |(_, case)| case(&engine));
    let results: Vec<_> = results.into_iter().map(|((name, _), r)| (*name, r)).collect();
    for (name, secs) in crate::hostile::all_ok(&format!("the source tree on {kind}"), results) {
        eprintln!("{name} on {kind}: {secs:.1} s");
    }
}
