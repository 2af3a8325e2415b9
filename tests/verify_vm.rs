//! Proof of load (`ckms verify`, `build --verify`): real Debian kernels (their own linux-image
//! packages) booted under qemu in the verifier image, modules built by ckms loaded into them.
//! - on rootless Podman (CKMS_TEST_PODMAN_HOST): the hello module and v4l2loopback (which needs
//!   the in-tree videodev, and mc under it) on 6.1.0-56-amd64 and the newest 6.12.*+deb13 kernel;
//! - on Docker (CKMS_TEST_DOCKER_HOST): the negative controls, each failing with the reason:
//!   a module whose init fails, modules built for other kernels (6.1.0-55, whose symbol versions
//!   the kernel accepts, and 6.1.0-50, which it refuses), and a file that is no module.
//!
//! Both fail, never skip, when their engine, the mirror or a package is missing. Wall times are
//! printed for the record (`--nocapture`); ci/bench holds the speed goals, not these tests.
mod support;

#[path = "support/dkms_packages.rs"]
mod dkms_packages;

use std::path::{Path, PathBuf};
use std::time::Instant;

use support::{ckms, engine_host, newest_trixie, shared_cache, Outcome};

const BOOKWORM: &str = "6.1.0-56-amd64";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A `--root` tree and the ckms verbs on it, through one engine.
struct Tree {
    engine: String,
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(engine_var: &str) -> Tree {
        Tree { engine: engine_host(engine_var), dir: tempfile::tempdir().expect("a temporary directory") }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn ckms(&self, args: &[&str]) -> Outcome {
        let cache = shared_cache();
        let mut all = vec!["--engine", &self.engine, "--cache-dir", cache.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--root", self.root().to_str().unwrap()]);
        ckms(all).run()
    }

    fn add(&self, source: &Path) {
        self.ckms(&["add", source.to_str().unwrap()]).expect_code(0);
    }

    fn built(&self, module: &str, version: &str, kernel: &str) -> PathBuf {
        let dir = self.root().join(format!("var/lib/ckms/{module}/{version}/{kernel}/x86_64/module"));
        let file = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(module))
            .unwrap_or_else(|| panic!("no {module} module in {}", dir.display()));
        file
    }
}

/// Runs `ckms verify --json` on a built module version and returns the one verification.
fn verify_json(tree: &Tree, module: &str, version: &str, kernel: &str) -> (serde_json::Value, f64) {
    let started = Instant::now();
    let run = tree.ckms(&["--json", "verify", "-m", module, "-v", version, "-k", kernel]);
    let seconds = started.elapsed().as_secs_f64();
    run.expect_code(0);
    let result = run.json_result();
    let v = result.as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("no verification{run}"));
    assert_eq!(v["kernel"], kernel, "{run}");
    (v, seconds)
}

fn kernel_lines(m: &serde_json::Value) -> String {
    m["kernel"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
}

#[test]
fn built_modules_load_in_their_kernels_on_podman() {
    let tree = Tree::new("CKMS_TEST_PODMAN_HOST");
    let trixie = newest_trixie(&tree.engine);
    tree.add(&fixture("hello-dkms"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctx = dkms_packages::context();
    for kernel in [BOOKWORM, trixie.as_str()] {
        // build --verify: the build, then the proof, in one command.
        let run = tree.ckms(&["build", "hello/1.0", "-k", kernel, "--verify"]);
        run.expect_code(0);
        assert!(run.stdout.contains(&format!("Verified on {kernel}: 1 of 1 module(s) passed")), "{run}");
        let (v, seconds) = verify_json(&tree, "hello", "1.0", kernel);
        let hello = &v["modules"][0];
        assert_eq!(hello["loaded"], true, "{v:#}");
        assert!(kernel_lines(hello).contains("ckms hello: loaded"), "{v:#}");
        eprintln!("verify hello on {kernel}: {seconds:.1} s (VM {:.1} s)", v["vm_seconds"].as_f64().unwrap());

        // v4l2loopback as the distro pairs it with this kernel, and the in-tree modules it needs.
        let src = tempfile::tempdir().unwrap();
        let source = rt.block_on(async {
            let profile = dkms_packages::profile_of(&ctx, kernel).await;
            let index = dkms_packages::index(&ctx, &profile).await;
            dkms_packages::fetch_source(&ctx, &index, "v4l2loopback-dkms", src.path()).await
        });
        tree.add(&source.dir);
        tree.ckms(&["build", &source.module_version(), "-k", kernel]).expect_code(0);
        let (v, seconds) = verify_json(&tree, &source.module, &source.version, kernel);
        let m = &v["modules"][0];
        assert_eq!((m["name"].as_str(), m["loaded"].as_bool()), (Some("v4l2loopback"), Some(true)), "{v:#}");
        assert!(kernel_lines(m).contains("v4l2loopback"), "{v:#}");
        let deps: Vec<&str> = v["dependencies"].as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
        assert!(deps.contains(&"videodev"), "videodev is loaded first: {v:#}");
        assert!(v["dependencies"].as_array().unwrap().iter().all(|d| d["loaded"] == true), "{v:#}");
        eprintln!(
            "verify {} on {kernel}: {seconds:.1} s (VM {:.1} s), dependencies {deps:?}",
            source.module_version(),
            v["vm_seconds"].as_f64().unwrap()
        );
    }
}

#[test]
fn negative_controls_fail_with_the_kernels_reason_on_docker() {
    let tree = Tree::new("CKMS_TEST_DOCKER_HOST");
    tree.add(&fixture("failing-init-dkms"));
    tree.add(&fixture("hello-dkms"));

    // init returns -ENODEV: built fine, reported as not loaded, with the kernel's words.
    let run = tree.ckms(&["build", "failinit/1.0", "-k", BOOKWORM, "--verify"]);
    run.expect_code(12);
    assert!(run.stdout.contains("0 of 1 module(s) passed"), "{run}");
    assert!(run.stderr.contains("failinit failed verification on 6.1.0-56-amd64: No such device"), "{run}");
    assert!(run.stderr.contains("ckms failinit: no device here, refusing to load"), "{run}");
    assert!(tree.built("failinit", "1.0", BOOKWORM).is_file(), "the build itself is kept");

    // Built for 6.1.0-55 (same upstream 6.1.192): the kernel accepts its symbol versions, ckms
    // names the mismatch. Built for 6.1.0-50 (6.1.176): the kernel refuses, in its own words.
    for (other, words) in [
        ("6.1.0-55-amd64", "built for 6.1.0-55-amd64 (its vermagic), not 6.1.0-56-amd64"),
        ("6.1.0-50-amd64", "disagrees about version of symbol module_layout"),
    ] {
        tree.ckms(&["build", "hello/1.0", "-k", other]).expect_code(0);
        let file = tree.built("hello", "1.0", other);
        let run = tree.ckms(&["verify", "-k", BOOKWORM, file.to_str().unwrap()]);
        run.expect_code(12);
        assert!(run.stderr.contains("hello failed verification on 6.1.0-56-amd64"), "{run}");
        assert!(run.stderr.contains(words), "{run}");
    }

    // Signed on the host (6.1's config names sha256): the kernel parses ckms's signature and
    // loads the module (its key is not enrolled there: "required key missing", no enforcement).
    // The same module with its CMS made unparseable is refused by the kernel: "Bad message".
    let run = tree.ckms(&["build", "hello/1.0", "-k", BOOKWORM, "--verify"]);
    run.expect_code(0);
    let signed = tree.built("hello", "1.0", BOOKWORM);
    let cert = tree.root().join("var/lib/ckms/mok.pub");
    ckms(["verify-signature", signed.to_str().unwrap(), "--cert", cert.to_str().unwrap()]).run().expect_code(0);
    let mut bytes = std::fs::read(&signed).unwrap();
    let magic = b"~Module signature appended~\n";
    assert!(bytes.ends_with(magic), "{} is signed", signed.display());
    let trailer = bytes.len() - magic.len() - 12;
    let sig_len = u32::from_be_bytes(bytes[trailer + 8..trailer + 12].try_into().unwrap()) as usize;
    assert_eq!(bytes[trailer - sig_len], 0x30, "the CMS starts with a DER SEQUENCE");
    bytes[trailer - sig_len] = 0x31;
    let broken = tree.root().join("hello.ko");
    std::fs::write(&broken, &bytes).unwrap();
    let run = tree.ckms(&["verify", "-k", BOOKWORM, broken.to_str().unwrap()]);
    run.expect_code(12);
    assert!(run.stderr.contains("hello failed verification on 6.1.0-56-amd64: Bad message"), "{run}");

    // Not a module at all: refused before any VM, saying what is expected.
    let not_module = tree.root().join("notes.ko");
    std::fs::write(&not_module, "not an ELF file").unwrap();
    let run = tree.ckms(&["verify", "-k", BOOKWORM, not_module.to_str().unwrap()]);
    run.expect_code(2);
    assert!(run.error_message().contains("not an ELF file"), "{run}");
}
