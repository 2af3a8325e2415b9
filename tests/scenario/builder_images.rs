//! Issue 2's acceptance scenario against one real engine: builder images for a bookworm, a
//! trixie and a sid kernel; a module built in each, non-root, without network, with the right
//! vermagic; an up-to-date re-run that downloads nothing; a second kernel of the same release
//! that downloads only its own packages and shares every other layer.
//!
//! Included by tests/builder_images_{podman,docker}.rs with the engine's env variable; they
//! also declare `mod support` (tests/support), whose helpers this uses.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ckms::engine::{DockerApi, Images};

/// Runs the ckms binary; returns (exit code, stdout, stderr).
pub fn ckms(engine: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ckms"))
        .args(["--engine", engine, "--cache-dir"])
        .arg(crate::support::shared_cache())
        .args(args)
        .output()
        .expect("run ckms");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `result` object of a `--json` run, which must have succeeded.
pub fn json_result(engine: &str, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (code, stdout, stderr) = ckms(engine, &full);
    assert_eq!(code, 0, "ckms {args:?} failed:\n{stderr}\n{stdout}");
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "result")
        .map(|v| v["result"].clone())
        .unwrap_or_else(|| panic!("no result line from ckms {args:?}:\n{stdout}"))
}

/// The kernels offered, as (release, compiler) pairs.
pub fn kernels(engine: &str) -> Vec<(String, String)> {
    json_result(engine, &["kernels"])
        .as_array()
        .expect("kernels is a list")
        .iter()
        .map(|k| (k["release"].as_str().unwrap_or_default().into(), k["compiler"].as_str().unwrap_or_default().into()))
        .collect()
}

fn newest(kernels: &[(String, String)], pattern: &str) -> String {
    let re = regex::Regex::new(pattern).unwrap();
    kernels
        .iter()
        .rev()
        .find(|(k, _)| re.is_match(k))
        .unwrap_or_else(|| panic!("no kernel matches {pattern}"))
        .0
        .clone()
}

fn vermagic(ko: &Path) -> String {
    let bytes = std::fs::read(ko).unwrap_or_else(|e| panic!("{}: {e}", ko.display()));
    let at = bytes.windows(9).position(|w| w == b"vermagic=").expect("a .modinfo vermagic entry");
    let rest = &bytes[at + 9..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split_whitespace().next().unwrap_or_default().to_string()
}

/// Builds tests/fixtures/hello for `kernel` in its builder image; returns the module's vermagic.
pub fn build_hello(engine: &str, kernel: &str) -> String {
    let out = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello");
    let make = format!("/lib/modules/{kernel}/build");
    let r = json_result(
        engine,
        &[
            "image",
            "run",
            "-k",
            kernel,
            "--src",
            src.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--",
            "make",
            "-C",
            &make,
            "M=/build",
            "modules",
        ],
    );
    assert_eq!(r["exit_code"], 0, "make failed for {kernel}:\n{}", r["log"]);
    vermagic(&out.path().join("hello.ko"))
}

pub async fn scenario(var: &str) {
    let engine = crate::support::engine_host(var);
    let offered = kernels(&engine);
    let targets = [
        "6.1.0-56-amd64".to_string(),
        newest(&offered, r"^6\.12\.\d+\+deb13-amd64$"),
        newest(&offered, r"^7\.\d+\.\d+\+deb14-amd64$"),
    ];
    for k in &targets {
        let built = json_result(&engine, &["image", "build", "-k", k]);
        assert!(built[0]["reference"].as_str().unwrap().contains("localhost/ckms/builder-debian-"), "{built}");
        assert_eq!(build_hello(&engine, k), *k, "the module's vermagic names exactly the target kernel");

        let again = json_result(&engine, &["image", "build", "-k", k]);
        assert_eq!(again[0]["loaded"], false, "a re-run finds the image up to date: {again}");
        assert_eq!(again[0]["fetch"]["downloaded"], 0, "a re-run downloads nothing: {again}");
        assert_eq!(again[0]["id"], built[0]["id"]);
    }

    // The sandbox: the build user, no network interface but loopback, a read-only root.
    let probe = tempfile::tempdir().unwrap();
    let r = json_result(
        &engine,
        &[
            "image",
            "run",
            "-k",
            &targets[0],
            "--out",
            probe.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "id -u; ls /sys/class/net; touch /usr/x 2>/dev/null && echo root-writable || echo root-read-only",
        ],
    );
    let log = r["log"].as_str().unwrap_or_default();
    assert_eq!(log.split_whitespace().collect::<Vec<_>>(), ["1000", "lo", "root-read-only"], "{log}");

    // A second kernel of the same release: only its own packages are new, the rest is shared.
    let first = json_result(&engine, &["image", "build", "-k", &targets[0]]);
    let second = json_result(&engine, &["image", "build", "-k", "6.1.0-55-amd64"]);
    let api = DockerApi::connect(&engine, Duration::from_secs(10)).await.expect("engine answers");
    let l1 = api.image_layers(first[0]["reference"].as_str().unwrap()).await.unwrap();
    let l2 = api.image_layers(second[0]["reference"].as_str().unwrap()).await.unwrap();
    let layers: Vec<&str> = second[0]["layers"].as_array().unwrap().iter().map(|l| l[0].as_str().unwrap()).collect();
    assert_eq!(layers, ["base", "toolchain", "tools", "kernel"]);
    assert_eq!(l1.len(), layers.len() + 1, "and the config layer: {l1:?}");
    assert_eq!(l1[..3], l2[..3], "base, toolchain and tools layers are shared");
    assert_ne!(l1[3], l2[3], "the kernel layers differ");
    assert!(second[0]["layers_built"].as_u64().unwrap() <= 1, "only the kernel layer is new: {second}");
}
