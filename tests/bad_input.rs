//! Bad input, end to end through the `ckms` binary: each case must give a clear message, its
//! own non-zero exit code (docs/exit-codes.md), and leave nothing half-written behind (the
//! cache's `tmp/` empty, no blob from the failed step, no image loaded).
//!
//! Needs: the Debian mirror of this host's apt sources, rootless Podman at
//! `$CKMS_TEST_PODMAN_HOST` (required: unset is a failure, not a skip), and root (tmpfs).
//! Real downloads go to the shared cache (`$CKMS_TEST_CACHE`); only the corruption test
//! builds kernel 6.1.0-56-amd64's image, and it holds the shared-cache lock while it does.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use ckms::diagnose::code;
use support::{
    assert_blobs_intact, assert_tmp_empty, blobs, ckms, corrupt, entries, sha256_file, shared_cache, shared_cache_lock,
    HttpServer, Tmpfs,
};

const PROFILE: &str = "debian-bookworm";
/// Built (and its cache entries damaged) only by `corrupted_cache_entries_are_fetched_again`.
const BUILT_KERNEL: &str = "6.1.0-56-amd64";
const UNKNOWN_KERNEL: &str = "6.1.0-99-amd64";

fn podman() -> String {
    support::engine_host("CKMS_TEST_PODMAN_HOST")
}

fn fresh_cache() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary cache directory")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Each case runs once per test binary: its own test and the distinctness test share the
/// outcome (a second caller waits for the first; a case that panicked runs again).
fn once(cell: &'static OnceLock<i32>, case: fn() -> i32) -> i32 {
    *cell.get_or_init(case)
}

// ---------------------------------------------------------------------------------------
// 1. Unknown kernel.

fn unknown_kernel() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        let engine = podman();
        let cache = shared_cache();
        let _shared = shared_cache_lock();
        // Load (or refresh) the index first, so that the failing build has nothing legitimate
        // to download: any blob appearing during it would come from the failed step.
        let listing = ckms(["--cache-dir", s(&cache), "kernels", "--profile", PROFILE]).run();
        listing.expect_code(0);
        assert!(listing.stdout.contains(BUILT_KERNEL), "`ckms kernels` does not list {BUILT_KERNEL}{listing}");
        let blobs_before = blobs(&cache);
        let records_before = entries(&cache.join("images"));

        let run = ckms([
            "--engine",
            &engine,
            "--cache-dir",
            s(&cache),
            "image",
            "build",
            "-k",
            UNKNOWN_KERNEL,
            "--profile",
            PROFILE,
        ])
        // The index was just loaded: never refetch it during the failing run.
        .env("CKMS_INDEX_MAX_AGE", "2592000")
        .run();
        run.expect_code(code::UNKNOWN_KERNEL);
        let message = run.error_message();
        assert!(message.contains(UNKNOWN_KERNEL), "the message should name {UNKNOWN_KERNEL}{run}");
        let hint = run.hint();
        let release = regex::Regex::new(r"\d+\.\d+\.\d+-\d+-amd64").unwrap();
        let suggested: Vec<&str> = release.find_iter(&hint).map(|m| m.as_str()).collect();
        assert!(
            suggested.iter().any(|k| k.starts_with("6.1.0-5")),
            "the hint should suggest close real kernels (6.1.0-5x){run}"
        );
        for k in &suggested {
            assert!(listing.stdout.contains(k), "suggested kernel {k} is not one `ckms kernels` lists{run}{listing}");
        }

        assert_tmp_empty(&cache, &run);
        let new_blobs: Vec<_> = blobs(&cache).difference(&blobs_before).cloned().collect();
        assert!(new_blobs.is_empty(), "the failed build stored blobs {new_blobs:?}{run}");
        assert_eq!(entries(&cache.join("images")), records_before, "the failed build wrote an image record{run}");

        let ls = ckms(["--json", "--engine", &engine, "--cache-dir", s(&cache), "image", "ls"]).run();
        ls.expect_code(0);
        let rows = ls.json_result();
        let rows = rows.as_array().unwrap_or_else(|| panic!("`image ls --json` result is not a list{ls}"));
        assert!(
            !rows.iter().any(|r| r["kernel"] == UNKNOWN_KERNEL),
            "an image for {UNKNOWN_KERNEL} is loaded after the failed build{ls}"
        );
        run.code
    })
}

#[test]
fn unknown_kernel_suggests_close_real_ones() {
    assert_eq!(unknown_kernel(), code::UNKNOWN_KERNEL);
}

// ---------------------------------------------------------------------------------------
// 2. Unreachable mirror.

fn unreachable_mirror() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        let cache = fresh_cache();
        // Port 9 (discard) on localhost: connection refused, no network needed.
        let run = ckms(["--cache-dir", s(cache.path()), "kernels", "--profile", PROFILE])
            .env("CKMS_MIRROR_DEBIAN", "http://127.0.0.1:9/debian")
            .env("CKMS_MIRROR_DEBIAN_SECURITY", "http://127.0.0.1:9/debian-security")
            .run();
        run.expect_code(code::MIRROR_UNREACHABLE);
        let message = run.error_message();
        assert!(message.contains("http://127.0.0.1:9/debian"), "the message should name the mirror URL{run}");
        let hint = run.hint();
        assert!(
            hint.contains("CKMS_MIRROR_") && hint.contains("[mirrors]"),
            "the hint should say where the mirror is set (CKMS_MIRROR_<ROLE>, [mirrors]){run}"
        );
        assert_tmp_empty(cache.path(), &run);
        assert!(blobs(cache.path()).is_empty(), "blobs stored from an unreachable mirror{run}");
        assert!(entries(&cache.path().join("indexes")).is_empty(), "indexes stored from an unreachable mirror{run}");
        run.code
    })
}

#[test]
fn unreachable_mirror_names_the_url() {
    assert_eq!(unreachable_mirror(), code::MIRROR_UNREACHABLE);
}

// ---------------------------------------------------------------------------------------
// 3. Bad signature on the index.

/// The real bookworm InRelease, from the mirror this host's apt uses (found the way ckms
/// finds it: the enabled `deb` entry of /etc/apt whose suites include bookworm).
fn real_bookworm_inrelease() -> Vec<u8> {
    let sources = ckms::repo::sources::read_host_sources(Path::new("/etc/apt"))
        .unwrap_or_else(|e| panic!("reading the host's apt sources: {e}"));
    let src = sources
        .iter()
        .find(|s| s.enabled && s.types.iter().any(|t| t == "deb") && s.suites.iter().any(|x| x == "bookworm"))
        .unwrap_or_else(|| panic!("no enabled apt source in /etc/apt offers suite bookworm"));
    let url = format!("{}/dists/bookworm/InRelease", src.uris[0].trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp = reqwest::get(&url).await.unwrap_or_else(|e| panic!("fetching {url}: {e}"));
        let resp = resp.error_for_status().unwrap_or_else(|e| panic!("fetching {url}: {e}"));
        resp.bytes().await.unwrap_or_else(|e| panic!("reading {url}: {e}")).to_vec()
    })
}

/// Changes one digit of the (signed) `Date:` line.
fn tamper_date(inrelease: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(inrelease).expect("InRelease is UTF-8");
    let date = text.find("\nDate: ").expect("InRelease has a Date: line") + "\nDate: ".len();
    let signature = text.find("-----BEGIN PGP SIGNATURE-----").expect("InRelease is cleartext-signed");
    assert!(date < signature, "the Date: line should be in the signed part");
    let at = date + text[date..].find(|c: char| c.is_ascii_digit()).expect("a digit in the Date: line");
    let mut out = inrelease.to_vec();
    out[at] = if out[at] == b'0' { b'1' } else { b'0' };
    out
}

fn bad_signature() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        let real = real_bookworm_inrelease();
        let tampered = tamper_date(&real);
        assert_ne!(tampered, real);
        let path = "/debian/dists/bookworm/InRelease";
        let server = HttpServer::start(HashMap::from([(path.to_string(), tampered)]));
        let base = server.base();
        let cache = fresh_cache();
        let run = ckms(["--cache-dir", s(cache.path()), "kernels", "--profile", PROFILE])
            .env("CKMS_MIRROR_DEBIAN", format!("{base}/debian"))
            .env("CKMS_MIRROR_DEBIAN_SECURITY", format!("{base}/debian-security"))
            .run();
        assert!(
            server.requests().iter().any(|r| r == path),
            "ckms never asked for {path}: {:?}{run}",
            server.requests()
        );
        run.expect_code(code::BAD_SIGNATURE);
        let message = run.error_message();
        assert!(
            message.contains(&format!("{base}{path}")) && message.contains("signature"),
            "the message should name the index and say its signature is bad{run}"
        );
        assert!(
            message.contains("changed after signing") && run.hint().contains("altered"),
            "a Debian-signed index whose text was changed is reported as tampered, not as an unknown key{run}"
        );
        assert!(entries(&cache.path().join("indexes")).is_empty(), "a badly signed index was cached{run}");
        assert!(blobs(cache.path()).is_empty(), "blobs stored although the index failed its signature{run}");
        assert_tmp_empty(cache.path(), &run);
        run.code
    })
}

#[test]
fn tampered_index_fails_its_signature() {
    assert_eq!(bad_signature(), code::BAD_SIGNATURE);
}

// ---------------------------------------------------------------------------------------
// 4. Corrupted cache entries: detected and fetched (or built) again.

#[test]
fn corrupted_cache_entries_are_fetched_again() {
    let engine = podman();
    let cache = shared_cache();
    let _shared = shared_cache_lock();
    let build = |force: bool| {
        let mut args = vec!["--engine", &engine, "--cache-dir", s(&cache)];
        if !force {
            args.insert(0, "--json");
        }
        args.extend(["image", "build", "-k", BUILT_KERNEL, "--profile", PROFILE]);
        if force {
            args.push("--force");
        }
        ckms(args).run()
    };

    let first = build(false);
    first.expect_code(0);
    let built = first.json_result()[0].clone();
    let id = built["id"].as_str().unwrap_or_else(|| panic!("no image id in the result{first}")).to_string();
    let id_hex = id.trim_start_matches("sha256:").to_string();
    let layer_diff_id = built["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l[0] == "kernel"))
        .and_then(|l| l[1]["diff_id"].as_str())
        .unwrap_or_else(|| panic!("no kernel layer in the result{first}"))
        .to_string();
    let layer_hex = layer_diff_id.trim_start_matches("sha256:").to_string();

    // The image's record names the kernel layer's packages; layers/*.json name its blob.
    let record_path = cache.join("images").join(format!("{id_hex}.json"));
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&record_path).unwrap_or_else(|e| panic!("reading {}: {e}{first}", record_path.display())),
    )
    .unwrap_or_else(|e| panic!("parsing {}: {e}", record_path.display()));
    assert!(
        record["layers"].as_array().is_some_and(|ls| ls.iter().any(|l| l == layer_diff_id.as_str())),
        "{} does not list the kernel layer {layer_diff_id}",
        record_path.display()
    );
    let layer_meta = entries(&cache.join("layers")).into_iter().any(|f| {
        std::fs::read(cache.join("layers").join(&f))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["diff_id"] == layer_diff_id.as_str())
    });
    assert!(layer_meta, "no layers/*.json names the kernel layer {layer_diff_id}");
    let packages = record["lock"]["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "kernel"))
        .and_then(|l| l["packages"].as_array())
        .unwrap_or_else(|| panic!("{} has no kernel layer packages", record_path.display()));
    // The smallest one: fetched again quickly.
    let package = packages
        .iter()
        .min_by_key(|p| p["size"].as_u64().unwrap_or(u64::MAX))
        .unwrap_or_else(|| panic!("the kernel layer has no packages"));
    let (name, deb_hex) = (package["name"].as_str().unwrap(), package["sha256"].as_str().unwrap());

    let deb = cache.join("blobs/sha256").join(deb_hex);
    let layer = cache.join("blobs/sha256").join(&layer_hex);
    for (what, path, hex) in [("package", &deb, deb_hex), ("kernel layer", &layer, layer_hex.as_str())] {
        assert_eq!(sha256_file(path), hex, "{what} blob {} was already corrupt before the test", path.display());
        corrupt(path, 16);
        assert_ne!(sha256_file(path), hex, "corrupting {} changed nothing", path.display());
    }

    let again = build(true);
    again.expect_code(0);
    let warned = |needle: &str| again.stderr.lines().any(|l| l.contains("corrupt") && l.contains(needle));
    assert!(warned(name), "no warning about the corrupt cached package {name}{again}");
    assert!(warned(&layer_hex), "no warning about the corrupt cached kernel layer {layer_diff_id}{again}");
    assert_eq!(sha256_file(&deb), deb_hex, "package {name} was not fetched again{again}");
    assert_eq!(sha256_file(&layer), layer_hex, "the kernel layer was not built again{again}");
    assert!(again.stdout.contains(&id), "the rebuilt image should be the same image {id}{again}");
    assert_tmp_empty(&cache, &again);
}

// ---------------------------------------------------------------------------------------
// 5. No engine.

fn no_engine() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        let cache = fresh_cache();
        let endpoint = "unix:///nonexistent/ckms.sock";
        let run = ckms(["--cache-dir", s(cache.path()), "image", "ls"]).env("CKMS_ENGINE_HOST", endpoint).run();
        run.expect_code(code::NO_ENGINE);
        assert!(run.error_message().contains(endpoint), "the message should list the endpoint {endpoint}{run}");
        let hint = run.hint();
        assert!(
            hint.contains("start that engine") && hint.contains("unset"),
            "the hint should say to start the engine or unset the setting{run}"
        );
        assert!(run.stdout.is_empty(), "no listing from another engine was expected{run}");
        assert_tmp_empty(cache.path(), &run);
        run.code
    })
}

#[test]
fn no_engine_lists_the_endpoint() {
    assert_eq!(no_engine(), code::NO_ENGINE);
}

// ---------------------------------------------------------------------------------------
// 6. Full disk.

fn disk_full() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        // The bookworm Packages index alone is ~50 MB uncompressed.
        let fs = Tmpfs::mount("2m");
        let cache = fs.path();
        let run = ckms(["--cache-dir", s(cache), "kernels", "--profile", PROFILE]).run();
        run.expect_code(code::IO);
        assert!(
            run.error_message().contains("No space left on device"),
            "the message should say the disk is full{run}"
        );
        let hint = run.hint();
        assert!(
            hint.contains("--cache-dir") || hint.contains("free space"),
            "the hint should mention freeing space or --cache-dir{run}"
        );
        assert_tmp_empty(cache, &run);
        assert_blobs_intact(cache, &run);
        run.code
    })
}

#[test]
fn full_disk_leaves_nothing_half_written() {
    assert_eq!(disk_full(), code::IO);
}

// ---------------------------------------------------------------------------------------
// 8. A broken profile.

fn broken_profile() -> i32 {
    static CODE: OnceLock<i32> = OnceLock::new();
    once(&CODE, || {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("profiles/debian-bookworm.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "name = \"debian-bookworm\ndescription = [\n").unwrap();
        let cache = fresh_cache();
        let run = ckms(["--cache-dir", s(cache.path()), "profiles"]).env("CKMS_DATA_DIR", data.path()).run();
        run.expect_code(code::BAD_PROFILE);
        assert!(run.error_message().contains(s(&file)), "the message should name {}{run}", file.display());
        assert!(run.hint().contains("fix the file"), "the hint should say to fix the file{run}");
        assert!(run.stdout.is_empty(), "no profile listing was expected{run}");
        run.code
    })
}

#[test]
fn broken_profile_names_the_file() {
    assert_eq!(broken_profile(), code::BAD_PROFILE);
}

// ---------------------------------------------------------------------------------------
// 7. Every bad input has its own exit code.

#[test]
fn every_bad_input_has_its_own_exit_code() {
    let codes = [
        ("unknown kernel", unknown_kernel()),
        ("unreachable mirror", unreachable_mirror()),
        ("bad signature", bad_signature()),
        ("no engine", no_engine()),
        ("full disk", disk_full()),
        ("broken profile", broken_profile()),
    ];
    for (i, (a, ca)) in codes.iter().enumerate() {
        assert_ne!(*ca, 0, "{a} exited 0");
        for (b, cb) in &codes[i + 1..] {
            assert_ne!(ca, cb, "{a} and {b} share exit code {ca}: {codes:?}");
        }
    }
}
