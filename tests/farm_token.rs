//! The farm signing with a key held in a PKCS#11 token (SoftHSM2; see tests/support/token.rs),
//! on each engine (fails when it is missing): `farm build --key pkcs11:...` signs every pair it
//! builds, each stored module verifies with the token's certificate, the PIN and no private key
//! appear anywhere the farm wrote, and a run without the PIN fails before anything is built.
mod support;

#[path = "support/token.rs"]
mod token;

use std::path::{Path, PathBuf};

use support::{ckms, engine_host, shared_cache, Outcome};

const KERNEL: &str = "6.1.0-56-amd64";

/// Two module sources: the hello fixture and a second module beside it.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello-dkms");
    let hello = dir.join("hello");
    std::fs::create_dir_all(&hello).unwrap();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), hello.join(e.file_name())).unwrap();
    }
    let other = dir.join("tokmod");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("dkms.conf"),
        "PACKAGE_NAME=\"tokmod\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"tokmod\"\n\
         DEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n",
    )
    .unwrap();
    std::fs::write(other.join("Kbuild"), "obj-m := tokmod.o\n").unwrap();
    std::fs::write(
        other.join("tokmod.c"),
        "#include <linux/module.h>\nstatic int __init i(void) { return 0; }\nmodule_init(i);\nMODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    vec![hello, other]
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn scenario(var: &str) {
    let engine = engine_host(var);
    let token = token::Token::new();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let srcs = sources(&dir.path().join("src"));
    let cache = shared_cache();
    let cert = token.cert.display().to_string();
    let build = |pin: Option<&str>| -> Outcome {
        let mut args = vec!["--engine", &engine, "--cache-dir", cache.to_str().unwrap(), "--json", "farm", "build"];
        args.extend(["--store", store.to_str().unwrap(), "-k", KERNEL, "--jobs", "2"]);
        args.extend(["--key", token::URI, "--cert", &cert]);
        args.extend(srcs.iter().map(|s| s.to_str().unwrap()));
        let mut run = ckms(args).env("CKMS_DKMS_TREE", dir.path().join("tree"));
        for (k, v) in token.env() {
            run = run.env(k, v);
        }
        match pin {
            Some(pin) => run.env("KBUILD_SIGN_PIN", pin),
            None => run.env("KBUILD_SIGN_PIN", ""),
        }
        .run()
    };

    // Without the PIN the token refuses, before any pair is built.
    let refused = build(None);
    refused.expect_code(ckms::diagnose::code::SIGNING_FAILED);
    assert!(refused.stderr.contains("KBUILD_SIGN_PIN"), "{refused}");
    assert!(support::entries(&store.join("pairs")).is_empty(), "{refused}");

    let run = build(Some(token::PIN));
    run.expect_code(0);
    let pairs = support::entries(&store.join("pairs"));
    assert_eq!(pairs.len(), 2, "{pairs:?}{run}");
    let mut signed = 0;
    for pair in &pairs {
        for module in files(&store.join("pairs").join(pair).join("modules")) {
            let verify = ckms(["verify-signature", module.to_str().unwrap(), "--cert", &cert]).run();
            verify.expect_code(0);
            signed += 1;
        }
    }
    assert_eq!(signed, 2, "{run}");
    // The key stayed in the token: no private key and no PIN in anything the farm wrote.
    for file in files(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{} holds a private key", file.display());
        assert!(!text.contains(&format!("pin-value={}", token::PIN)), "{} holds the PIN", file.display());
    }
    assert!(token.objects().contains("never extractable"), "the token key is extractable");
}

#[test]
fn farm_signs_with_a_token_on_docker() {
    scenario("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn farm_signs_with_a_token_on_podman() {
    scenario("CKMS_TEST_PODMAN_HOST");
}
