//! The prebuild farm through the binary, on each engine (fails when it is missing): a small
//! matrix of four module sources (one builds, one builds and another builds against it, one
//! fails in make, one is excluded by BUILD_EXCLUSIVE_KERNEL) × one kernel. Then: a re-run
//! starts no build; `--verify` loads the built modules in one VM; `--check` rebuilds the stored pairs to the same bytes; one changed source file rebuilds exactly that module's pair; the stored
//! modules are signed with the given key and their unsigned twins are kept; `status --json`
//! and the table, each built pair with its signer;
//! the HTML report rendered by Debian's chromium (headless), its cells counted in the page;
//! an unknown kernel fails before anything is built. And the faults: kill -9 mid-matrix, a
//! full disk under the store, a hostile module in the matrix.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use farm::{by_module, copy_dir, fixture, module, signers, Farm, C, KERNEL};
use support::{ckms, shared_cache};

#[path = "support/farm.rs"]
mod farm;

fn scenario(var: &str) {
    let farm = Farm::new(var);
    let src = farm.dir.path().join("src");
    let hello = src.join("hello");
    copy_dir(&fixture("hello-dkms"), &hello);
    let base = module(
        &src,
        "fbase",
        "",
        "obj-m := fbase.o\n",
        &format!("{C}int fbase_value(void) {{ return 1; }}\nEXPORT_SYMBOL(fbase_value);\n"),
    );
    // Builds against fbase's source (BUILD_DEPENDS makes it visible and orders the pairs).
    let top = module(
        &src,
        "ftop",
        "BUILD_DEPENDS[0]=\"fbase\"\n",
        "obj-m := ftop.o\nccflags-y := -DBASE_SEEN=$(shell test -f /usr/src/fbase-1.0/fbase.c && echo 1 || echo 0)\n",
        &format!("{C}#if !BASE_SEEN\n#error fbase source not visible\n#endif\n"),
    );
    let broken = module(&src, "fbroken", "", "obj-m := fbroken.o\n", "this is not C;\n");
    let excluded = module(&src, "fexcluded", "BUILD_EXCLUSIVE_KERNEL=\"^5\\.\"\n", "obj-m := fexcluded.o\n", C);
    let (_, cert) = farm.key_pair("mok");
    let sources: Vec<&Path> = vec![&hello, &base, &top, &broken, &excluded];

    // An unknown kernel: refused before anything is built or stored.
    let store = farm.store();
    let unknown = farm.run(&[
        "farm",
        "build",
        "--store",
        store.to_str().unwrap(),
        "-k",
        "6.1.0-99-amd64",
        hello.to_str().unwrap(),
    ]);
    unknown.expect_code(21);
    assert!(unknown.stderr.contains("6.1.0-99-amd64"), "{unknown}");
    assert!(support::entries(&store.join("pairs")).is_empty(), "{unknown}");

    // First run: two built, one failed (exit 11), one skipped.
    let first = farm.build(true, &sources);
    first.expect_code(11);
    let events: Vec<serde_json::Value> = first.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(events.iter().any(|e| e["event"] == "started"), "no started event{first}");
    let status = farm.status();
    assert_eq!(status.len(), 5, "{status:?}");
    for (m, s) in
        [("hello", "built"), ("fbase", "built"), ("ftop", "built"), ("fbroken", "failed"), ("fexcluded", "skipped")]
    {
        assert_eq!(by_module(&status, m)["status"], s, "{m}: {status:?}{first}");
        assert_eq!(by_module(&status, m)["cached"], false);
    }
    assert_eq!(by_module(&status, "hello")["modules"], serde_json::json!(["hello.ko"]));
    // The signer of each built pair: the certificate's SHA-256 in the JSON, its first 16 hex
    // digits in the table; the failed and skipped pairs have none.
    let fingerprint = support::sha256_file(&cert);
    let mut want = vec![Some(fingerprint.clone()); 3];
    want.extend([None, None]);
    let mut got = signers(&status);
    got.sort();
    want.sort();
    assert_eq!(got, want, "{status:?}");
    let table = farm.status_text();
    assert!(table.lines().next().unwrap_or_default().contains("SIGNER"), "{table}");
    assert_eq!(table.matches(&format!(" {} ", &fingerprint[..16])).count(), 3, "{table}");
    // The stored pair: the signed module verifies with the given certificate; the unsigned
    // one is the same module without the signature.
    let hello_key = by_module(&status, "hello")["key"].as_str().unwrap().to_string();
    let entry = store.join("pairs").join(&hello_key);
    let verify = farm.run(&[
        "verify-signature",
        entry.join("modules/hello.ko").to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    verify.expect_code(0);
    let signed = std::fs::read(entry.join("modules/hello.ko")).unwrap();
    let unsigned = std::fs::read(entry.join("unsigned/hello.ko")).unwrap();
    assert!(
        signed.len() > unsigned.len() && signed.starts_with(&unsigned),
        "the signed module is the unsigned one plus a signature"
    );
    let broken_key = by_module(&status, "fbroken")["key"].as_str().unwrap().to_string();
    let log = std::fs::read_to_string(store.join("pairs").join(&broken_key).join("make.log")).unwrap();
    assert!(log.contains("fbroken.c"), "make.log of the failed pair: {log}");

    // Rebuilt ignoring the store: the same bytes, unsigned and signed.
    let check = farm.build_with(false, &sources, &["--check"]);
    check.expect_code(0);
    assert!(check.stdout.contains("3 of 3 stored pair(s) rebuilt identical (6 module files"), "{check}");

    // Proof of load: one VM for the kernel loads the three built pairs' modules.
    let verify = farm.build_with(false, &sources, &["--verify"]);
    verify.expect_code(11);
    assert!(verify.stdout.contains(&format!("{KERNEL}: 3 pair(s) loaded in one VM")), "{verify}");
    let status = farm.status();
    for m in ["hello", "fbase", "ftop"] {
        assert_eq!(by_module(&status, m)["loaded"], true, "{m}: {status:?}");
    }
    // Proven already: the same bytes on the same kernel are not booted again.
    let proven = farm.build_with(false, &sources, &["--verify"]);
    proven.expect_code(11);
    assert!(
        proven.stdout.contains(&format!("{KERNEL}: 3 pair(s) loaded in one VM (an earlier run; no VM now)")),
        "{proven}"
    );

    // Nothing changed: no build at all, everything from the store; the failure stays reported.
    let again = farm.build(false, &sources);
    again.expect_code(11);
    assert!(!again.stderr.contains("building "), "a re-run started builds{again}");
    assert!(again.stdout.contains("(5 from the store)"), "{again}");

    // One file of one module changed: exactly that pair is built again.
    std::fs::write(hello.join("hello.c"), std::fs::read_to_string(hello.join("hello.c")).unwrap() + "/* changed */\n")
        .unwrap();
    let changed = farm.build(true, &sources);
    changed.expect_code(11);
    let summary = changed.json_result();
    assert_eq!(summary["built_now"], 1, "{changed}");
    let status = farm.status();
    assert_eq!(by_module(&status, "hello")["cached"], false);
    assert_ne!(by_module(&status, "hello")["key"], hello_key.as_str());
    for m in ["fbase", "ftop", "fbroken", "fexcluded"] {
        assert_eq!(by_module(&status, m)["cached"], true, "{m} was rebuilt{changed}");
    }

    // The HTML report, rendered by a real browser: one cell per pair.
    let html = farm.dir.path().join("report.html");
    farm.run(&["farm", "report", "--store", store.to_str().unwrap(), "-o", html.to_str().unwrap()]).expect_code(0);
    let (dom, shot) = chromium(&html, farm.dir.path());
    assert!(dom.contains("data-cells=\"5\""), "the page counted its cells: {}", &dom[..dom.len().min(2000)]);
    assert_eq!(dom.matches("class=\"cell built").count(), 3, "{dom}");
    assert_eq!(dom.matches("class=\"cell failed").count(), 1);
    assert_eq!(dom.matches("class=\"cell skipped").count(), 1);
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot");
}

/// The page's DOM after its script ran, and a screenshot, from headless chromium.
fn chromium(html: &Path, dir: &Path) -> (String, PathBuf) {
    let bin = ["chromium", "/usr/bin/chromium"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok());
    let bin = bin.unwrap_or_else(|| panic!("Debian's chromium is missing: ci/setup-build-deps.sh installs it"));
    let url = format!("file://{}", html.display());
    let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir"];
    let profile = dir.join("chromium-profile");
    let run = |extra: &[&str]| {
        let mut c = Command::new(bin);
        c.args(&flags[..3]).arg(format!("{}={}", flags[3], profile.display())).args(extra).arg(&url);
        let out = c.output().expect("running chromium");
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    let shot = dir.join("report.png");
    run(&[&format!("--screenshot={}", shot.display()), "--window-size=1400,700"]);
    (dom, shot)
}

/// Faults: `kill -9` in the middle of a matrix, a store on a full disk, a hostile module
/// beside the others.
fn faults(var: &str) {
    let farm = Farm::new(var);
    let src = farm.dir.path().join("src");
    let mods = farm::modules(&src, "fk", 4);
    let (key, cert) = farm.key_pair("mok");
    let sources: Vec<&Path> = mods.iter().map(PathBuf::as_path).collect();

    // kill -9 once the first pair is stored: the next run rebuilds only the others.
    let store = farm.store();
    let cache = shared_cache();
    let mut args = vec!["--engine", &farm.engine, "--cache-dir", cache.to_str().unwrap(), "--json", "farm", "build"];
    args.extend(["--store", store.to_str().unwrap(), "-k", KERNEL, "--jobs", "1"]);
    args.extend(["--key", key.to_str().unwrap(), "--cert", cert.to_str().unwrap()]);
    args.extend(sources.iter().map(|s| s.to_str().unwrap()));
    let mut child = ckms(&args).spawn();
    let stdout = child.stdout.take().unwrap();
    let finished = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find(|l| l.contains("\"event\":\"finished\""));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(finished.is_some(), "the first run never finished a pair");
    let stored = support::entries(&store.join("pairs")).len();
    assert!((1..4).contains(&stored), "{stored} pairs stored before the kill");
    let rerun = farm.build(true, &sources);
    rerun.expect_code(0);
    assert!(!rerun.stderr.contains("damaged"), "{rerun}");
    assert_eq!(rerun.json_result()["built_now"], 4 - stored, "{rerun}");
    assert!(support::entries(&store.join("tmp")).is_empty(), "{rerun}");

    // A store on a full disk: a clear error, nothing half-stored; with space, the same command builds.
    let small = support::Tmpfs::mount("12k");
    let full = Farm { engine: farm.engine.clone(), dir: tempfile::tempdir().unwrap() };
    std::fs::copy(&key, full.dir.path().join("mok.key")).unwrap();
    std::fs::copy(&cert, full.dir.path().join("mok.pub")).unwrap();
    std::os::unix::fs::symlink(small.path(), full.store()).unwrap();
    let one = [sources[0]];
    let refused = full.build(false, &one);
    refused.expect_code(11);
    assert!(
        refused.stderr.contains("No space left on device") && refused.stderr.contains("disk holding the store is full"),
        "{refused}"
    );
    assert!(support::entries(&small.path().join("pairs")).is_empty(), "{refused}");
    assert!(support::entries(&small.path().join("tmp")).is_empty(), "{refused}");
    let remount = Command::new("mount").args(["-o", "remount,size=4m"]).arg(small.path()).output().unwrap();
    assert!(remount.status.success());
    full.build(false, &one).expect_code(0);

    // A hostile module that tries to change a sibling's source and its stored result: it is
    // contained (the sibling's source is read-only, the store is not in the container).
    let victim = mods[0].clone();
    let before = std::fs::read(victim.join("fk1.c")).unwrap();
    let hostile = module(
        &src,
        "fevil",
        "BUILD_DEPENDS[0]=\"fk1\"\n",
        "obj-m := fevil.o\n$(shell echo pwned > /usr/src/fk1-1.0/fk1.c; echo pwned > /var/lib/dkms/fk1/1.0/source/fk1.c; \
         find / -name result.json -exec sh -c 'echo pwned > {}' \\; 2>/dev/null)\n",
        C,
    );
    let mut with_hostile = sources.clone();
    with_hostile.push(&hostile);
    let run = farm.build(true, &with_hostile);
    assert!([0, 11].contains(&run.code), "{run}");
    assert_eq!(std::fs::read(victim.join("fk1.c")).unwrap(), before);
    let again = farm.build(true, &sources);
    again.expect_code(77); // every fk pair still in the store, undamaged
}

#[test]
fn farm_on_docker() {
    scenario("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn farm_on_podman() {
    scenario("CKMS_TEST_PODMAN_HOST");
}

#[test]
fn farm_faults_on_docker() {
    faults("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn farm_faults_on_podman() {
    faults("CKMS_TEST_PODMAN_HOST");
}
