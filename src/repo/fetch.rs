//! Network side: loading suite indexes (with the InRelease and Packages caches) and
//! downloading packages into the content-addressed cache.
//!
//! Index cache layout, under `cache.dir("indexes")`: one `<key>.InRelease` per (mirror, suite),
//! whose mtime is its fetch time. Uncompressed Packages files live in the blob store under the
//! SHA-256 that the (signed) InRelease lists for them, so a warm run reads, hashes and parses
//! them without any network request or decompression.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use super::index::{parse_packages, Index};
use super::release::{check_valid_until, parse_release, verify_inrelease, Keyring, Release};
use super::{Package, RepoError, RepoOptions, SuiteInfo, SuiteSpec};
use crate::cache::{sha256_hex, Cache, CacheError};
use crate::report::{Reporter, Unit};

/// Downloads at once.
const PARALLEL: usize = 8;
/// Attempts for network errors and 5xx answers.
const TRIES: u32 = 3;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FetchStats {
    pub downloaded_bytes: u64,
    pub downloaded: usize,
    pub cached: usize,
}

fn client() -> Result<reqwest::Client, RepoError> {
    reqwest::Client::builder()
        .user_agent(concat!("ckms/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        // Per read, not for the whole body: big packages on slow links must still finish.
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| RepoError::Unreachable { url: "(HTTP client setup)".into(), detail: chain(&e) })
}

/// The error with its sources: reqwest's own message alone ("error sending request") hides
/// the useful part (connection refused, DNS failure).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * (1 << attempt.min(4)))
}

/// GET `url` into memory (indexes are at most a few MB compressed), retrying network errors
/// and 5xx answers.
async fn get_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, RepoError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(b) => return Ok(b.to_vec()),
                Err(e) => RepoError::Unreachable { url: url.to_string(), detail: chain(&e) },
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status < 500 {
                    return Err(RepoError::Http { url: url.to_string(), status });
                }
                RepoError::Http { url: url.to_string(), status }
            }
            Err(e) => RepoError::Unreachable { url: url.to_string(), detail: chain(&e) },
        };
        if attempt >= TRIES {
            return Err(err);
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// Where the InRelease of (mirror, suite) is cached: a readable suite name plus a digest of
/// the mirror URL, so that two mirrors of the same suite never share an entry.
fn inrelease_path(dir: &Path, spec: &SuiteSpec) -> PathBuf {
    let key = sha256_hex(format!("{}\n{}", spec.mirror.trim_end_matches('/'), spec.suite).as_bytes());
    let suite: String =
        spec.suite.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    dir.join(format!("{suite}-{}.InRelease", &key[..16]))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// Loads, verifies and merges the Packages indexes of `suites`.
pub async fn load_index(
    cache: &Cache,
    suites: &[SuiteSpec],
    opts: &RepoOptions,
    report: &dyn Reporter,
) -> Result<Index, RepoError> {
    let keyring = Arc::new(Keyring::load(&opts.keyrings)?);
    let client = client()?;
    let dir = cache.dir("indexes")?;
    let loads = suites.iter().map(|spec| load_suite(cache, &client, &dir, spec, opts, keyring.clone(), report));
    let mut packages = Vec::new();
    let mut infos = Vec::new();
    // Suites load concurrently: network waits overlap, and the parsing runs on blocking threads.
    for r in futures_util::future::join_all(loads).await {
        let (pkgs, info) = r?;
        packages.extend(pkgs);
        infos.push(info);
    }
    let index = tokio::task::spawn_blocking(move || Index::build(packages, infos))
        .await
        .map_err(|e| RepoError::Malformed { url: "(index)".into(), detail: format!("index build failed: {e}") })?;
    report.done("index", format!("{} packages from {} suite(s)", index.len(), suites.len()));
    Ok(index)
}

async fn load_suite(
    cache: &Cache,
    client: &reqwest::Client,
    dir: &Path,
    spec: &SuiteSpec,
    opts: &RepoOptions,
    keyring: Arc<Keyring>,
    report: &dyn Reporter,
) -> Result<(Vec<Package>, SuiteInfo), RepoError> {
    let mirror = spec.mirror.trim_end_matches('/').to_string();
    let base = format!("{mirror}/dists/{}", spec.suite);
    let url = format!("{base}/InRelease");
    let path = inrelease_path(dir, spec);

    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
    let fresh = !opts.refresh && age.is_some_and(|a| a < opts.max_age);
    let (raw, fetched) =
        if fresh { (std::fs::read(&path).map_err(io(&path))?, false) } else { (get_bytes(client, &url).await?, true) };

    // Signature checks and Release parsing are CPU work; off the async threads.
    let text = String::from_utf8_lossy(&raw).into_owned();
    let check_vu = opts.check_valid_until;
    let (url2, suite2) = (url.clone(), spec.suite.clone());
    let release = tokio::task::spawn_blocking(move || -> Result<Release, RepoError> {
        let signed = verify_inrelease(&text, &keyring, &url2)?;
        let release = parse_release(&signed, &url2)?;
        if check_vu {
            check_valid_until(&release, SystemTime::now(), &url2, &suite2)?;
        }
        Ok(release)
    })
    .await
    .map_err(|e| RepoError::Malformed { url: url.clone(), detail: format!("verification failed: {e}") })??;
    // Only a verified InRelease enters the cache.
    if fetched {
        write_atomic(&path, &raw)?;
    }
    let info = SuiteInfo {
        mirror: mirror.clone(),
        suite: spec.suite.clone(),
        date: release.date.clone(),
        inrelease_sha256: sha256_hex(&raw),
    };

    let mut packages = Vec::new();
    for comp in &spec.components {
        let rel_path = format!("{comp}/binary-{}/Packages", spec.arch);
        let text = packages_text(cache, client, &base, &rel_path, &release, &spec.suite, report).await?;
        let (m, s) = (mirror.clone(), spec.suite.clone());
        let pkgs = tokio::task::spawn_blocking(move || parse_packages(&text, &m, &s)).await.map_err(|e| {
            RepoError::Malformed { url: format!("{base}/{rel_path}"), detail: format!("parser failed: {e}") }
        })??;
        packages.extend(pkgs);
    }
    Ok((packages, info))
}

/// The uncompressed text of `<base>/<rel_path>`: from the blob store when present and intact,
/// otherwise downloaded (xz, else gz, else plain), verified against the Release, and stored.
async fn packages_text(
    cache: &Cache,
    client: &reqwest::Client,
    base: &str,
    rel_path: &str,
    release: &Release,
    suite: &str,
    report: &dyn Reporter,
) -> Result<String, RepoError> {
    let plain = release.sha256.get(rel_path).cloned();
    if let Some((sha, _)) = &plain {
        let blob = cache.blob_path(sha);
        if blob.exists() {
            let (sha2, blob2) = (sha.clone(), blob.clone());
            // Verify on use: read once, hash and convert on a blocking thread.
            let got = tokio::task::spawn_blocking(move || -> Result<Option<String>, RepoError> {
                let bytes = std::fs::read(&blob2).map_err(io(&blob2))?;
                if sha256_hex(&bytes) != sha2 {
                    std::fs::remove_file(&blob2).map_err(io(&blob2))?;
                    return Ok(None);
                }
                Ok(Some(into_text(bytes)))
            })
            .await
            .map_err(|e| RepoError::Malformed { url: format!("{base}/{rel_path}"), detail: e.to_string() })??;
            match got {
                Some(text) => return Ok(text),
                None => report.warn(format!("cached {base}/{rel_path} was corrupt; fetching it again")),
            }
        }
    }

    let variant = ["xz", "gz", ""]
        .into_iter()
        .map(|ext| if ext.is_empty() { rel_path.to_string() } else { format!("{rel_path}.{ext}") })
        .find_map(|p| release.sha256.get(&p).map(|(sha, size)| (p, sha.clone(), *size)));
    let Some((file, sha, size)) = variant else {
        return Err(RepoError::MissingIndex {
            url: format!("{base}/InRelease"),
            suite: suite.to_string(),
            what: rel_path.to_string(),
        });
    };
    let dir = rel_path.rsplit_once('/').map_or("", |(d, _)| d);
    let by_hash = format!("{base}/{dir}/by-hash/SHA256/{sha}");
    let url = format!("{base}/{file}");
    report.info(format!("fetching {url}"));

    // A mirror caught mid-sync can serve a file that does not match its InRelease: one retry.
    let mut tries = 0;
    let bytes = loop {
        tries += 1;
        let got = if release.acquire_by_hash {
            // by-hash URLs cannot change under us; older mirrors may lack them.
            match get_bytes(client, &by_hash).await {
                Err(RepoError::Http { status: 404, .. }) => get_bytes(client, &url).await,
                other => other,
            }
        } else {
            get_bytes(client, &url).await
        }?;
        let actual = sha256_hex(&got);
        if actual == sha && got.len() as u64 == size {
            break got;
        }
        if tries >= 2 {
            return Err(RepoError::Checksum { url, expected: sha, actual });
        }
        report.warn(format!("{url} did not match its checksum; retrying"));
    };

    let cache = cache.clone();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || -> Result<String, RepoError> {
        let dec = |e: std::io::Error| RepoError::Decompress { url: url2.clone(), detail: e.to_string() };
        let mut out = Vec::with_capacity(plain.as_ref().map_or(bytes.len() * 6, |(_, s)| *s as usize));
        if file.ends_with(".xz") {
            liblzma::read::XzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(dec)?;
        } else if file.ends_with(".gz") {
            flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(dec)?;
        } else {
            out = bytes;
        }
        let mut w = cache.writer()?;
        w.write_all(&out).map_err(|e| RepoError::Io { path: cache.root().join("tmp"), source: e })?;
        // Stored under the uncompressed digest the InRelease lists, which is also checked here.
        // Without that digest, nothing is stored: there would be no key to find it by.
        match &plain {
            Some((want, _)) => match w.commit(Some(want)) {
                Ok(_) => {}
                Err(CacheError::Digest { actual, expected, .. }) => {
                    return Err(RepoError::Checksum { url: format!("{url2} (uncompressed)"), expected, actual })
                }
                Err(e) => return Err(e.into()),
            },
            None => drop(w),
        }
        Ok(into_text(out))
    })
    .await
    .map_err(|e| RepoError::Decompress { url, detail: e.to_string() })?
}

fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Downloads `packages` into the cache (8 at once), verifying size and SHA-256. Cached blobs are
/// verified too; a corrupt one is reported and fetched again.
pub async fn fetch_packages(
    cache: &Cache,
    packages: &[Package],
    report: &dyn Reporter,
) -> Result<FetchStats, RepoError> {
    let mut stats = FetchStats::default();
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&Package> = packages.iter().filter(|p| seen.insert(p.sha256.as_str())).collect();

    // Check the cache first (hashing is CPU and disk work: on blocking threads, two at a time).
    let checks = futures_util::stream::iter(unique.iter().map(|p| {
        let (cache, sha) = (cache.clone(), p.sha256.clone());
        async move {
            let existed = cache.blob_path(&sha).exists();
            let ok = tokio::task::spawn_blocking(move || cache.check_blob(&sha))
                .await
                .map_err(|e| RepoError::Malformed { url: p.url(), detail: e.to_string() })??;
            Ok::<_, RepoError>((*p, existed, ok))
        }
    }))
    .buffered(2)
    .collect::<Vec<_>>()
    .await;
    let mut todo = Vec::new();
    for c in checks {
        let (p, existed, ok) = c?;
        if ok {
            stats.cached += 1;
        } else {
            if existed {
                report.warn(format!("cached {} {} was corrupt; fetching it again", p.name, p.version));
            }
            todo.push(p);
        }
    }
    if todo.is_empty() {
        report.done("download", format!("{} package(s), all cached", stats.cached));
        return Ok(stats);
    }

    let client = client()?;
    let total: u64 = todo.iter().map(|p| p.size).sum();
    let done = AtomicU64::new(0);
    report.progress("download", 0, Some(total), Unit::Bytes);
    let results = futures_util::stream::iter(todo.iter().map(|p| download(&client, cache, p, &done, total, report)))
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        stats.downloaded_bytes += r?;
        stats.downloaded += 1;
    }
    report.done(
        "download",
        format!(
            "{} package(s) downloaded ({} bytes), {} cached",
            stats.downloaded, stats.downloaded_bytes, stats.cached
        ),
    );
    Ok(stats)
}

/// What went wrong in one attempt, and whether it is worth another.
enum Failure {
    /// Network error or 5xx: retried up to [`TRIES`] times.
    Transient(RepoError),
    /// Wrong content: retried once.
    Corrupt(RepoError),
    Fatal(RepoError),
}

async fn download(
    client: &reqwest::Client,
    cache: &Cache,
    p: &Package,
    done: &AtomicU64,
    total: u64,
    report: &dyn Reporter,
) -> Result<u64, RepoError> {
    let url = p.url();
    let (mut transient, mut corrupt) = (0, 0);
    loop {
        let mut counted = 0u64;
        let result = attempt(client, cache, p, &url, &mut counted, done, total, report).await;
        // Progress of a failed attempt is taken back, so the bar never exceeds the total.
        match result {
            Ok(n) => return Ok(n),
            Err(f) => {
                done.fetch_sub(counted, Ordering::Relaxed);
                match f {
                    Failure::Transient(e) => {
                        transient += 1;
                        if transient >= TRIES {
                            return Err(e);
                        }
                        tokio::time::sleep(backoff(transient)).await;
                    }
                    Failure::Corrupt(e) => {
                        corrupt += 1;
                        if corrupt >= 2 {
                            return Err(e);
                        }
                        report.warn(format!("{url}: {e}; retrying"));
                    }
                    Failure::Fatal(e) => return Err(e),
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    client: &reqwest::Client,
    cache: &Cache,
    p: &Package,
    url: &str,
    counted: &mut u64,
    done: &AtomicU64,
    total: u64,
    report: &dyn Reporter,
) -> Result<u64, Failure> {
    let net =
        |e: reqwest::Error| Failure::Transient(RepoError::Unreachable { url: url.to_string(), detail: chain(&e) });
    let resp = client.get(url).send().await.map_err(net)?;
    let status = resp.status();
    if !status.is_success() {
        let e = RepoError::Http { url: url.to_string(), status: status.as_u16() };
        return Err(if status.is_server_error() { Failure::Transient(e) } else { Failure::Fatal(e) });
    }
    let mut w = cache.writer().map_err(|e| Failure::Fatal(e.into()))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(net)?;
        if w.len() + chunk.len() as u64 > p.size {
            // Dropping the writer removes its temporary file: nothing half-written is kept.
            return Err(Failure::Corrupt(RepoError::Size {
                url: url.to_string(),
                expected: p.size,
                actual: w.len() + chunk.len() as u64,
            }));
        }
        w.write_all(&chunk).map_err(|e| Failure::Fatal(RepoError::Io { path: cache.root().join("tmp"), source: e }))?;
        *counted += chunk.len() as u64;
        let now = done.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        report.progress("download", now, Some(total), Unit::Bytes);
    }
    if w.len() != p.size {
        return Err(Failure::Corrupt(RepoError::Size { url: url.to_string(), expected: p.size, actual: w.len() }));
    }
    let n = w.len();
    match w.commit(Some(&p.sha256)) {
        Ok(_) => Ok(n),
        Err(CacheError::Digest { expected, actual, .. }) => {
            Err(Failure::Corrupt(RepoError::Checksum { url: url.to_string(), expected, actual }))
        }
        Err(e) => Err(Failure::Fatal(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::repo::release::tests::{gen_key, sign};
    use crate::report::{Event, Recorder, Silent};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

    /// A minimal HTTP/1.1 server on localhost: serves `files` by path, counts requests.
    async fn serve(files: Files) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (files, hits) = (files.clone(), h.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let body = files.lock().unwrap().get(&path).cloned();
                    let resp = match body {
                        Some(b) => {
                            let mut r =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())
                                    .into_bytes();
                            r.extend(b);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (base, hits)
    }

    /// Two packages every suite has, and one of its own (so that suites' Packages differ).
    fn packages_text(suite: &str) -> String {
        let mut t = String::new();
        let own = format!("only-{suite}");
        for (name, deps) in [("hello", "libc6 (>= 2.34)"), ("libc6", ""), (own.as_str(), "")] {
            t.push_str(&format!("Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n"));
            if !deps.is_empty() {
                t.push_str(&format!("Depends: {deps}\n"));
            }
            t.push_str(&format!("Filename: pool/{name}.deb\nSize: 3\nSHA256: {}\n\n", sha256_hex(b"deb")));
        }
        t
    }

    fn xz(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(bytes, 1).read_to_end(&mut out).unwrap();
        out
    }

    /// Publishes suite `suite` under /debian with a Packages.xz, signed by `key`.
    fn publish(files: &Files, suite: &str, key: &pgp::composed::SignedSecretKey, extra: &str, by_hash: bool) {
        let plain = packages_text(suite);
        let packed = xz(plain.as_bytes());
        let release = format!(
            "Suite: {suite}\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n{extra}{}SHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.xz\n",
            if by_hash { "Acquire-By-Hash: yes\n" } else { "" },
            sha256_hex(plain.as_bytes()),
            plain.len(),
            sha256_hex(&packed),
            packed.len()
        );
        let mut f = files.lock().unwrap();
        let dir = format!("/debian/dists/{suite}/main/binary-amd64");
        if by_hash {
            f.insert(format!("{dir}/by-hash/SHA256/{}", sha256_hex(&packed)), packed);
        } else {
            f.insert(format!("{dir}/Packages.xz"), packed);
        }
        f.insert(format!("/debian/dists/{suite}/InRelease"), sign(&release, key).into_bytes());
    }

    fn spec(base: &str, suite: &str) -> SuiteSpec {
        SuiteSpec {
            mirror: format!("{base}/debian/"),
            suite: suite.into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
        }
    }

    #[tokio::test]
    async fn load_index_caches_and_verifies() {
        use pgp::ser::Serialize;
        let key = gen_key("Archive <a@example.invalid>");
        let files: Files = Default::default();
        publish(&files, "s", &key, "", false);
        publish(&files, "h", &key, "", true);
        publish(&files, "old", &key, "Valid-Until: Sat, 18 Jul 2020 10:16:37 UTC\n", false);
        publish(&files, "forged", &gen_key("Mallory <m@example.invalid>"), "", false);
        let (base, hits) = serve(files.clone()).await;

        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("k.gpg");
        std::fs::write(&keyring, key.to_public_key().to_bytes().unwrap()).unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let mut opts = RepoOptions {
            keyrings: vec![keyring],
            check_valid_until: true,
            max_age: Duration::from_secs(3600),
            refresh: false,
        };
        let suites = [spec(&base, "s"), spec(&base, "h")];

        let ix = load_index(&cache, &suites, &opts, &Silent).await.unwrap();
        assert_eq!(ix.len(), 4, "same packages in both suites are merged");
        assert_eq!(ix.suites().len(), 2);
        assert_eq!(ix.suites()[0].date, "Sat, 11 Jul 2026 10:16:37 UTC");
        assert_eq!(ix.candidate("hello").unwrap().url(), format!("{base}/debian/pool/hello.deb"));
        assert_eq!(hits.load(Ordering::SeqCst), 4);

        // Warm: no request at all.
        let ix2 = load_index(&cache, &suites, &opts, &Silent).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        assert_eq!(ix2.suites(), ix.suites());

        // Refresh: InRelease only; the Packages blob it names is still cached.
        opts.refresh = true;
        load_index(&cache, &suites, &opts, &Silent).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 6);
        opts.refresh = false;

        // A corrupt Packages blob is noticed, reported, and fetched again.
        let sha = sha256_hex(packages_text("s").as_bytes());
        std::fs::write(cache.blob_path(&sha), b"garbage").unwrap();
        let rec = Recorder::default();
        load_index(&cache, &suites[..1], &opts, &rec).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 7);
        assert!(rec.0.lock().unwrap().iter().any(|e| matches!(e, Event::Warn { .. })));

        // Expired Valid-Until, unless the check is off.
        let err = load_index(&cache, &[spec(&base, "old")], &opts, &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
        assert!(err.to_string().contains("old"), "{err}");
        opts.check_valid_until = false;
        load_index(&cache, &[spec(&base, "old")], &opts, &Silent).await.unwrap();

        // Signed by an unknown key.
        let err = load_index(&cache, &[spec(&base, "forged")], &opts, &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
        assert!(err.to_string().contains("/dists/forged/InRelease"), "{err}");

        // A suite the mirror does not have.
        let err = load_index(&cache, &[spec(&base, "nope")], &opts, &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::MIRROR_UNREACHABLE);
        assert!(err.to_string().contains("404"), "{err}");
    }

    fn pkg(base: &str, name: &str, body: &[u8]) -> Package {
        Package {
            name: name.into(),
            version: "1".into(),
            architecture: "amd64".into(),
            depends: vec![],
            provides: vec![],
            filename: format!("pool/{name}.deb"),
            size: body.len() as u64,
            sha256: sha256_hex(body),
            source: None,
            essential: false,
            mirror: format!("{base}/debian"),
            suite: "s".into(),
        }
    }

    #[tokio::test]
    async fn fetch_verifies_and_retries() {
        let files: Files = Default::default();
        let bodies: Vec<(String, Vec<u8>)> = (0..12).map(|i| (format!("p{i}"), vec![i as u8; 1000 + i])).collect();
        for (n, b) in &bodies {
            files.lock().unwrap().insert(format!("/debian/pool/{n}.deb"), b.clone());
        }
        let (base, hits) = serve(files.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let pkgs: Vec<Package> = bodies.iter().map(|(n, b)| pkg(&base, n, b)).collect();

        let rec = Recorder::default();
        let st = fetch_packages(&cache, &pkgs, &rec).await.unwrap();
        assert_eq!((st.downloaded, st.cached), (12, 0));
        assert_eq!(st.downloaded_bytes, pkgs.iter().map(|p| p.size).sum::<u64>());
        assert!(pkgs.iter().all(|p| cache.check_blob(&p.sha256).unwrap()));
        let last = rec.0.lock().unwrap().iter().rev().find_map(|e| match e {
            Event::Progress { done, total, .. } => Some((*done, *total)),
            _ => None,
        });
        assert_eq!(last, Some((st.downloaded_bytes, Some(st.downloaded_bytes))));

        // Cached and intact: nothing fetched. A corrupt one: warned about and fetched again.
        std::fs::write(cache.blob_path(&pkgs[3].sha256), b"bad").unwrap();
        let before = hits.load(Ordering::SeqCst);
        let rec = Recorder::default();
        let st = fetch_packages(&cache, &pkgs, &rec).await.unwrap();
        assert_eq!((st.downloaded, st.cached), (1, 11));
        assert_eq!(hits.load(Ordering::SeqCst), before + 1);
        assert!(rec.0.lock().unwrap().iter().any(|e| matches!(e, Event::Warn { message } if message.contains("p3"))));

        // Content that does not match: one retry, then CHECKSUM_MISMATCH; nothing enters the cache.
        let mut wrong = pkg(&base, "p5", b"something else");
        wrong.name = "liar".into();
        wrong.size = bodies[5].1.len() as u64;
        let before = hits.load(Ordering::SeqCst);
        let err = fetch_packages(&cache, &[wrong.clone()], &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::CHECKSUM_MISMATCH);
        assert!(err.to_string().contains("/pool/p5.deb"), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), before + 2);
        assert!(!cache.blob_path(&wrong.sha256).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // 404 is not retried.
        let missing = pkg(&base, "missing", b"x");
        let err = fetch_packages(&cache, &[missing], &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::MIRROR_UNREACHABLE);
        assert!(err.to_string().contains("404"));
    }

    #[tokio::test]
    async fn unreachable_mirror_names_the_url() {
        // Port 1 on localhost: connection refused, no network needed.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let p = pkg("http://127.0.0.1:1", "x", b"x");
        let err = fetch_packages(&cache, &[p], &Silent).await.unwrap_err();
        assert_eq!(err.exit_code(), code::MIRROR_UNREACHABLE);
        assert!(err.to_string().contains("http://127.0.0.1:1/debian/pool/x.deb"), "{err}");
        assert!(err.hint().unwrap().contains("CKMS_MIRROR_"));
    }
}
