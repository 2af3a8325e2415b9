//! Against the real Debian mirror configured on this host (read from /etc/apt at run time:
//! no mirror is named here). Fails loudly when the mirror cannot be reached.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ckms::cache::Cache;
use ckms::diagnose::Diagnose;
use ckms::repo::sources::{host_check_valid_until, read_host_sources};
use ckms::repo::{fetch_packages, load_index, RepoError, RepoOptions, SuiteSpec};
use ckms::report::Silent;

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn specs_and_keyrings() -> (Vec<SuiteSpec>, Vec<PathBuf>) {
    let sources = read_host_sources("/etc/apt".as_ref()).expect("reading /etc/apt sources");
    let mut specs = Vec::new();
    let mut keyrings = vec![PathBuf::from(DEBIAN_KEYRING)];
    for want in ["bookworm", "bookworm-security"] {
        let src = sources
            .iter()
            .find(|s| s.enabled && s.types.iter().any(|t| t == "deb") && s.suites.iter().any(|x| x == want))
            .unwrap_or_else(|| panic!("no enabled apt source on this host offers suite {want}"));
        if let Some(k) = src.signed_by.as_deref().filter(|k| k.starts_with('/')) {
            if !keyrings.iter().any(|x| x.as_os_str() == k) {
                keyrings.push(k.into());
            }
        }
        specs.push(SuiteSpec {
            mirror: src.uris[0].clone(),
            suite: want.into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
        });
    }
    (specs, keyrings)
}

fn loud(e: RepoError) -> ! {
    panic!("Debian mirror test failed (exit code {}): {e}\nhint: {}", e.exit_code(), e.hint().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookworm_headers_closure_and_fetch() {
    let (specs, keyrings) = specs_and_keyrings();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let opts = RepoOptions {
        keyrings,
        check_valid_until: host_check_valid_until("/etc/apt".as_ref()).unwrap_or(true),
        max_age: Duration::from_secs(3600),
        refresh: false,
    };

    let t = Instant::now();
    let index = load_index(&cache, &specs, &opts, &Silent).await.unwrap_or_else(|e| loud(e));
    eprintln!("cold load: {:?}, {} packages", t.elapsed(), index.len());
    assert_eq!(index.suites().len(), 2);
    assert!(index.suites().iter().all(|s| !s.date.is_empty() && s.inrelease_sha256.len() == 64));

    // Warm: everything from the cache, no network.
    drop(index);
    let t = Instant::now();
    let index = load_index(&cache, &specs, &opts, &Silent).await.unwrap_or_else(|e| loud(e));
    eprintln!("warm load: {:?}", t.elapsed());

    let kernel = "linux-headers-6.1.0-56-amd64";
    let exclude = [regex::Regex::new("^linux-image-").unwrap(), regex::Regex::new("^linux-base$").unwrap()];
    let closure = index.resolve(&[kernel.to_string()], &exclude).unwrap_or_else(|e| panic!("resolving {kernel}: {e}"));
    let names: Vec<&str> = closure.iter().map(|p| p.name.as_str()).collect();
    eprintln!("{} packages in the closure", closure.len());
    assert!(names.contains(&"gcc-12"), "gcc-12 missing from {names:?}");
    assert!(names.contains(&kernel));
    assert!(names.contains(&"linux-headers-6.1.0-56-common"));
    assert!(!names.iter().any(|n| n.starts_with("linux-image-") || *n == "linux-base"));
    let headers = closure.iter().find(|p| p.name == kernel).unwrap();
    assert_eq!(headers.suite, "bookworm-security");

    let small = closure.iter().min_by_key(|p| p.size).unwrap().clone();
    let stats = fetch_packages(&cache, std::slice::from_ref(&small), &Silent).await.unwrap_or_else(|e| loud(e));
    assert_eq!((stats.downloaded, stats.cached), (1, 0));
    assert_eq!(stats.downloaded_bytes, small.size);
    assert!(cache.check_blob(&small.sha256).unwrap());
    let again = fetch_packages(&cache, &[small], &Silent).await.unwrap_or_else(|e| loud(e));
    assert_eq!((again.downloaded, again.cached), (0, 1));
}
