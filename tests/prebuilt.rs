//! A ckms host installing from a farm's binary cache (`farm publish --format cache`):
//!
//! the farm builds v4l2loopback for 6.1.0-56-amd64 on Docker into a store (signing with a
//! module key made here), publishes the cache, and this test serves it over HTTP on loopback.
//! A clean bookworm container (tests/support/bookworm.rs: no engine, no compiler, no kernel
//! headers) gets the module's source as `apt-get install v4l2loopback-dkms` would leave it
//! (`dpkg --unpack`: the files and the dpkg database entry, before the postinst runs dkms),
//! the farm's OpenPGP public key and module certificate, the kernel's signed index in ckms's
//! cache, and `[prebuilt]` in its config. Then:
//!
//! - a cache that does not answer, an index signed by another key, a tampered index, a
//!   tampered module, and a locally patched source (another key: no entry) each stop
//!   `ckms install --prebuilt-only` with their own error, and nothing is installed;
//! - `ckms install` installs the store's signed module, depmod indexes it, `status` says
//!   installed; its wall time is printed (CKMS_TEST_HOST_BINARY=target/release/ckms measures
//!   a release build's);
//! - unbuilt, `ckms autoinstall` installs it again from the cache (the host has no engine).
//!
//! Every tool it needs (docker, gpg, openssl, apt-get, mmdebstrap) must be there: a missing
//! one fails the test, it never skips.
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bookworm::{bookworm_image, docker, farm_key, kept_store, need, run, served, source_deb, KERNEL};
use ckms::diagnose::code;
use support::{ckms, engine_host, shared_cache, HttpServer};

#[path = "support/bookworm.rs"]
mod bookworm;

/// The store (kept between runs: a re-run builds nothing) and the module certificate.
fn store(host: &str) -> (PathBuf, PathBuf) {
    let (dir, cert, out) = kept_store("prebuilt", host, &["-k", KERNEL, "deb:v4l2loopback-dkms"]);
    // 77: nothing to do, every pair is in the store already.
    assert!(out.code == 0 || out.code == 77, "the store could not be built{out}");
    (dir, cert)
}

/// The store's one entry's record.
fn record(store: &Path) -> serde_json::Value {
    for e in std::fs::read_dir(store.join("pairs")).unwrap() {
        let path = e.unwrap().path().join("result.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            if r["module"] == "v4l2loopback" && r["kernel"] == KERNEL {
                return r;
            }
        }
    }
    panic!("no v4l2loopback entry in {}", store.display());
}

/// A ckms cache for the container holding the bookworm suites' signed indexes: their InRelease
/// files (with their fetch time) and the Packages files they list that the test cache has.
fn index_cache(into: &Path) {
    let shared = shared_cache();
    std::fs::create_dir_all(into.join("indexes")).unwrap();
    std::fs::create_dir_all(into.join("blobs/sha256")).unwrap();
    for e in std::fs::read_dir(shared.join("indexes")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("bookworm") {
            continue;
        }
        run(Command::new("cp").arg("-p").arg(&path).arg(into.join("indexes")));
        let text = std::fs::read_to_string(&path).unwrap();
        for sha in text.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.len() == 64) {
            let blob = shared.join("blobs/sha256").join(sha);
            if blob.is_file() {
                std::fs::copy(&blob, into.join("blobs/sha256").join(sha)).unwrap();
            }
        }
    }
}

#[test]
fn a_host_without_engine_or_compiler_installs_the_prebuilt_module() {
    need("docker", "docker.io");
    let host = engine_host("CKMS_TEST_DOCKER_HOST");
    let (store, module_cert) = store(&host);
    let record = record(&store);
    let dir = tempfile::tempdir().unwrap();
    let key = farm_key(dir.path());
    let out = dir.path().join("cache");
    let (store_s, out_s, key_s) = (store.to_string_lossy(), out.to_string_lossy(), key.to_string_lossy());
    let cert_s = module_cert.to_string_lossy();
    let publish = |out: &str, key: &str| {
        ckms([
            "farm", "publish", "--store", &store_s, "--format", "cache", "--out", out, "--key", key, "--cert", &cert_s,
        ])
        .run()
    };
    publish(&out_s, &key_s).expect_code(0);
    // Without --cert the farm's certificate is this host's default one (another, or none): its
    // pairs are signed by another, so nothing is published.
    let elsewhere = dir.path().join("x").to_string_lossy().into_owned();
    let refused =
        ckms(["farm", "publish", "--store", &store_s, "--format", "cache", "--out", &elsewhere, "--key", &key_s]).run();
    refused.expect_code(code::BAD_MODULE_SIGNATURE);
    assert!(refused.error_message().contains("not by the one the farm signs with now"), "{refused}");

    // Published twice: the same bytes.
    let again = dir.path().join("again");
    let again_s = again.to_string_lossy();
    publish(&again_s, &key_s).expect_code(0);
    for f in ["index.json", "index.json.asc"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f} differs");
    }

    // The good cache, and three bad ones: the index changed, a module changed, another signer.
    let mut files = HashMap::new();
    served(&out, "/good", &mut files);
    served(&out, "/index", &mut files);
    served(&out, "/file", &mut files);
    let index = String::from_utf8(files["/index/index.json"].clone()).unwrap();
    files.insert("/index/index.json".into(), index.replace("/updates/dkms", "/kernel/drivers").into_bytes());
    let module_path = files.keys().find(|k| k.starts_with("/file/pairs/")).unwrap().clone();
    let module = files.get_mut(&module_path).unwrap();
    let last = module.len() - 1;
    module[last] ^= 1;
    let other = tempfile::tempdir().unwrap();
    let other_key = farm_key(other.path());
    let other_out = other.path().join("cache");
    let other_s = other_out.to_string_lossy();
    let other_key_s = other_key.to_string_lossy();
    publish(&other_s, &other_key_s).expect_code(0);
    served(&other_out, "/other", &mut files);
    let server = HttpServer::start(files);
    let base = server.base();

    let work = dir.path().join("host");
    std::fs::create_dir_all(&work).unwrap();
    index_cache(&work.join("cache"));
    let package = record["source"]["package"].as_str().unwrap();
    let version = record["source"]["package_version"].as_str().unwrap();
    std::fs::copy(source_deb(package, version), work.join("source.deb")).unwrap();
    std::fs::copy(out.join("farm.pub.asc"), work.join("farm.pub.asc")).unwrap();
    let stored = store.join("pairs").join(record["key"].as_str().unwrap());
    let signed = record["modules"][0]["signed"]["file"].as_str().unwrap();
    let want = support::sha256_file(&stored.join(signed));
    let config = |name: &str, url: &str| {
        let text = format!(
            "cache_dir = \"/work/cache\"\n[prebuilt]\nurls = [\"{url}\"]\nkeys = [\"/etc/ckms/farm.pub.asc\"]\nallow_http = true\n"
        );
        std::fs::write(work.join(format!("{name}.toml")), text).unwrap();
    };
    config("silent", "http://127.0.0.1:9/");
    config("index", &format!("{base}/index/"));
    config("file", &format!("{base}/file/"));
    config("other", &format!("{base}/other/"));
    config("good", &format!("{base}/good/"));

    let script = format!(
        r#"set -u
K={KERNEL}
M=/lib/modules/$K/updates/dkms/v4l2loopback.ko
for tool in gcc cc make docker podman; do command -v $tool >/dev/null && echo "HAS-$tool"; done
ls -d /usr/src/linux-headers-* 2>/dev/null && echo HAS-HEADERS
dpkg --unpack --force-depends /work/source.deb >/dev/null 2>&1 || echo UNPACK-FAILED
# The farm's OpenPGP key only: the module certificate comes with the cache, covered by it.
mkdir -p /etc/ckms
cp /work/farm.pub.asc /etc/ckms/
MV=$(ls /usr/src | sed -n 's/^v4l2loopback-/v4l2loopback\//p')
for case in silent index file other; do
    echo "=== $case"
    CKMS_CONFIG=/work/$case.toml ckms install "$MV" -k $K --prebuilt-only 2>&1
    echo "EXIT-$case $?"
    [ -e $M ] && echo "INSTALLED-BY-$case"
done
echo "=== patched"
SRC=/usr/src/$(ls /usr/src | grep '^v4l2loopback-')
cp -a $SRC /tmp/original
echo '/* a local patch */' >>$SRC/v4l2loopback.c
CKMS_CONFIG=/work/good.toml ckms install "$MV" -k $K --prebuilt-only 2>&1
echo "EXIT-patched $?"
[ -e $M ] && echo "INSTALLED-BY-patched"
rm -rf $SRC && cp -a /tmp/original $SRC
echo "=== good"
start=$(date +%s%N)
TIMEFORMAT='CPU-S user %U sys %S'
{{ time CKMS_CONFIG=/work/good.toml ckms install "$MV" -k $K; }} 2>&1
echo "EXIT-good $?"
echo "WALL-MS $(( ($(date +%s%N) - start) / 1000000 ))"
echo "SHA $(sha256sum $M)"
grep -q '^updates/dkms/v4l2loopback.ko:' /lib/modules/$K/modules.dep && echo INDEXED
CKMS_CONFIG=/work/good.toml ckms status 2>&1
# autoinstall (dkms.service at boot, or a user) takes the module from the cache too.
echo "=== autoinstall"
CKMS_CONFIG=/work/good.toml ckms unbuild "$MV" -k $K >/dev/null 2>&1
[ -e $M ] || echo UNBUILT
CKMS_CONFIG=/work/good.toml ckms autoinstall -k $K 2>&1
echo "EXIT-autoinstall $?"
echo "SHA-autoinstall $(sha256sum $M)"
"#
    );
    let work_mount = format!("{}:/work", work.display());
    // The binary the host runs: this build's, or CKMS_TEST_HOST_BINARY (a release build, to
    // measure the install's time as a host would see it).
    let binary = std::env::var("CKMS_TEST_HOST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ckms").into());
    let bin_mount = format!("{binary}:/usr/local/bin/ckms:ro");
    let data_mount = format!("{}:/ckms-data:ro", env!("CARGO_MANIFEST_DIR"));
    let image = bookworm_image(&host);
    let shown = run(docker(&host).args([
        "run",
        "--rm",
        "--network",
        "host",
        "-e",
        "CKMS_DATA_DIR=/ckms-data",
        "-v",
        &work_mount,
        "-v",
        &bin_mount,
        "-v",
        &data_mount,
        &image,
        "bash",
        "-c",
        &script,
    ]));
    println!("{shown}");
    assert!(!shown.contains("HAS-") && !shown.contains("UNPACK-FAILED"), "not a clean host:\n{shown}");
    for (case, code, words) in [
        ("silent", 30, "does not answer"),
        ("index", 31, "changed after signing"),
        ("file", 32, "does not match the signed index"),
        ("other", 31, "not signed by a trusted key"),
        ("patched", 7, "no cache has v4l2loopback/"),
    ] {
        assert!(shown.contains(&format!("EXIT-{case} {code}")), "{case}: exit {code} expected:\n{shown}");
        let part = shown.split(&format!("=== {case}")).nth(1).unwrap_or_default();
        assert!(part.contains(words), "{case}: {words:?} expected:\n{shown}");
        assert!(!shown.contains(&format!("INSTALLED-BY-{case}")), "{case} installed something:\n{shown}");
    }
    assert!(shown.contains("EXIT-good 0"), "{shown}");
    assert!(shown.contains(&format!("SHA {want}")), "the installed module is the store's:\n{shown}");
    assert!(shown.contains("INDEXED"), "{shown}");
    assert!(shown.contains("Signature of v4l2loopback.ko verified"), "{shown}");
    assert!(shown.contains(&format!("{KERNEL}, x86_64: installed")), "status says installed:\n{shown}");
    assert!(shown.contains("UNBUILT") && shown.contains("EXIT-autoinstall 0"), "{shown}");
    assert!(shown.contains(&format!("SHA-autoinstall {want}")), "autoinstall installed the store's module:\n{shown}");
    let wall = shown.lines().find_map(|l| l.strip_prefix("WALL-MS ")).unwrap();
    let cpu = shown.lines().find_map(|l| l.strip_prefix("CPU-S ")).unwrap_or("?");
    println!("host-side install from the cache: {wall} ms wall ({cpu} s of CPU)");
}
