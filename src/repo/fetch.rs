//! Package downloads into the content-addressed cache: 8 at once, each verified against the
//! size and SHA-256 its (signed) index lists, with progress and retries.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;

use super::http::{backoff, chain, client, TRIES};
use super::{Package, RepoError};
use crate::cache::{Cache, CacheError};
use crate::report::{Reporter, Unit};

/// Downloads at once.
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FetchStats {
    pub downloaded_bytes: u64,
    pub downloaded: usize,
    pub cached: usize,
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
    // The futures are collected before they are streamed: a closure inside the stream's type
    // makes the caller's future not provably Send (rust-lang/rust#102211).
    let checks: Vec<_> = unique
        .iter()
        .copied()
        .map(|p| {
            let (cache, sha) = (cache.clone(), p.sha256.clone());
            async move {
                let existed = cache.blob_path(&sha).exists();
                let ok = tokio::task::spawn_blocking(move || cache.check_blob(&sha))
                    .await
                    .map_err(|e| RepoError::Malformed { url: p.url(), detail: e.to_string() })??;
                Ok::<_, RepoError>((p, existed, ok))
            }
        })
        .collect();
    let checks = futures_util::stream::iter(checks).buffered(2).collect::<Vec<_>>().await;
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
    let downloads: Vec<_> = todo.iter().map(|p| download(&client, cache, p, &done, total, report)).collect();
    let results = futures_util::stream::iter(downloads).buffer_unordered(PARALLEL).collect::<Vec<_>>().await;
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
    use crate::cache::sha256_hex;
    use crate::diagnose::{code, Diagnose};
    use crate::repo::testserver::{serve, Files};
    use crate::report::{Event, Recorder, Silent};

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
            multi_arch_same: false,
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
