//! Loading suite indexes, with the InRelease and Packages caches.
//!
//! Index cache layout, under `cache.dir("indexes")`: one `<key>.InRelease` per (mirror, suite),
//! whose mtime is its fetch time. Uncompressed Packages files live in the blob store under the
//! SHA-256 that the (signed) InRelease lists for them, so a warm run reads, hashes and parses
//! them without any network request or decompression. They are parsed as they are read, a few
//! MB at a time, and the result is used only once the whole file's digest checked out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::http::{client, get_bytes, io};
use super::index::{Index, IndexBuilder};
use super::packages::{parse_stream, Part};
use super::release::{check_valid_until, parse_release, verify_inrelease, Keyring, Release};
use super::{RepoError, RepoOptions, SuiteInfo, SuiteSpec};
use crate::cache::{sha256_hex, Cache, CacheError};
use crate::report::Reporter;

/// Where the InRelease of (mirror, suite) is cached: a readable suite name plus a digest of
/// the mirror URL, so that two mirrors of the same suite never share an entry.
pub(super) fn inrelease_path(dir: &Path, spec: &SuiteSpec) -> PathBuf {
    let key = sha256_hex(format!("{}\n{}", spec.mirror.trim_end_matches('/'), spec.suite).as_bytes());
    let suite: String =
        spec.suite.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    dir.join(format!("{suite}-{}.InRelease", &key[..16]))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
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
    let mut builder = IndexBuilder::default();
    // Suites load concurrently: network waits overlap, and the parsing runs on blocking threads.
    for r in futures_util::future::join_all(loads).await {
        let (parts, info) = r?;
        builder.add(&info.mirror, &info.suite, parts);
        builder.suite(info);
    }
    let index = tokio::task::spawn_blocking(move || builder.build())
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
) -> Result<(Vec<Part>, SuiteInfo), RepoError> {
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

    let release = verified(&raw, keyring, &url, &spec.suite, opts.check_valid_until).await?;
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

    let mut parts = Vec::new();
    for comp in &spec.components {
        let file = IndexFile {
            base: base.clone(),
            rel_path: format!("{comp}/binary-{}/Packages", spec.arch),
            mirror: mirror.clone(),
            suite: spec.suite.clone(),
        };
        parts.extend(packages(cache, client, &file, &release, report).await?);
    }
    Ok((parts, info))
}

/// The Release an InRelease `raw` (fetched from `url`) signs, once its signature by `keyring`
/// (and, with `check_vu`, its Valid-Until) checked out. CPU work: off the async threads.
pub(super) async fn verified(
    raw: &[u8],
    keyring: Arc<Keyring>,
    url: &str,
    suite: &str,
    check_vu: bool,
) -> Result<Release, RepoError> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (url2, suite2) = (url.to_string(), suite.to_string());
    tokio::task::spawn_blocking(move || -> Result<Release, RepoError> {
        let signed = verify_inrelease(&text, &keyring, &url2)?;
        let release = parse_release(&signed, &url2)?;
        if check_vu {
            check_valid_until(&release, SystemTime::now(), &url2, &suite2)?;
        }
        Ok(release)
    })
    .await
    .map_err(|e| RepoError::Malformed { url: url.to_string(), detail: format!("verification failed: {e}") })?
}

/// One Packages file of a suite: `<base>/<rel_path>`.
#[derive(Clone)]
struct IndexFile {
    base: String,
    rel_path: String,
    mirror: String,
    suite: String,
}

impl IndexFile {
    fn url(&self) -> String {
        format!("{}/{}", self.base, self.rel_path)
    }
}

/// Threads parsing one Packages file.
fn parse_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// The parsed packages of `file`: from the blob store when present and intact, otherwise
/// downloaded (xz, else gz, else plain), verified against the Release, and stored.
async fn packages(
    cache: &Cache,
    client: &reqwest::Client,
    file: &IndexFile,
    release: &Release,
    report: &dyn Reporter,
) -> Result<Vec<Part>, RepoError> {
    let plain = release.sha256.get(&file.rel_path).cloned();
    if let Some((sha, _)) = &plain {
        let blob = cache.blob_path(sha);
        if blob.exists() {
            let (sha, f) = (sha.clone(), file.clone());
            let got = tokio::task::spawn_blocking(move || parse_blob(&blob, &sha, &f))
                .await
                .map_err(|e| RepoError::Malformed { url: file.url(), detail: e.to_string() })??;
            match got {
                Some(parts) => return Ok(parts),
                None => report.warn(format!("cached {} was corrupt; fetching it again", file.url())),
            }
        }
    }

    let variant = ["xz", "gz", ""]
        .into_iter()
        .map(|ext| if ext.is_empty() { file.rel_path.clone() } else { format!("{}.{ext}", file.rel_path) })
        .find_map(|p| release.sha256.get(&p).map(|(sha, size)| (p, sha.clone(), *size)));
    let Some((name, sha, size)) = variant else {
        return Err(RepoError::MissingIndex {
            url: format!("{}/InRelease", file.base),
            suite: file.suite.clone(),
            what: file.rel_path.clone(),
        });
    };
    let dir = file.rel_path.rsplit_once('/').map_or("", |(d, _)| d);
    let by_hash = format!("{}/{dir}/by-hash/SHA256/{sha}", file.base);
    let url = format!("{}/{name}", file.base);
    report.detail(format!("fetching {url}"));

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

    let (cache, file, failed) = (cache.clone(), file.clone(), file.url());
    tokio::task::spawn_blocking(move || {
        let decoder: Box<dyn Read + Send> = if name.ends_with(".xz") {
            Box::new(liblzma::read::XzDecoder::new(&bytes[..]))
        } else if name.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        match &plain {
            // Stored under the uncompressed digest the InRelease lists, which is checked on the
            // way in, then parsed from the store like a cached file.
            Some((want, _)) => {
                let blob = store(&cache, decoder, want, &url)?;
                drop(bytes);
                parse_blob(&blob, want, &file)?.ok_or_else(|| RepoError::Checksum {
                    url: format!("{url} (uncompressed)"),
                    expected: want.clone(),
                    actual: "a different digest once stored".into(),
                })
            }
            // Without that digest nothing is stored (there would be no key to find it by): the
            // verified download is parsed as it is decompressed.
            None => {
                let dec = |e: std::io::Error| RepoError::Decompress { url: url.clone(), detail: e.to_string() };
                parse_stream(decoder, &file.mirror, &file.suite, parse_threads()).map_err(dec)?.parts
            }
        }
    })
    .await
    .map_err(|e| RepoError::Decompress { url: failed, detail: e.to_string() })?
}

/// Decompresses into the blob store, checking the uncompressed digest `want`.
fn store(cache: &Cache, mut decoder: impl Read, want: &str, url: &str) -> Result<PathBuf, RepoError> {
    let dec = |e: std::io::Error| RepoError::Decompress { url: url.to_string(), detail: e.to_string() };
    let mut w = cache.writer()?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(dec(e)),
        };
        w.write_all(&buf[..n]).map_err(|e| RepoError::Io { path: cache.root().join("tmp"), source: e })?;
    }
    match w.commit(Some(want)) {
        Ok((_, path)) => Ok(path),
        Err(CacheError::Digest { actual, expected, .. }) => {
            Err(RepoError::Checksum { url: format!("{url} (uncompressed)"), expected, actual })
        }
        Err(e) => Err(e.into()),
    }
}

/// Parses a stored Packages file; None (and the blob removed) when its content does not hash
/// to `sha`, in which case whatever was parsed, or failed to, is thrown away.
fn parse_blob(blob: &Path, sha: &str, file: &IndexFile) -> Result<Option<Vec<Part>>, RepoError> {
    let f = std::fs::File::open(blob).map_err(io(blob))?;
    let got = parse_stream(f, &file.mirror, &file.suite, parse_threads()).map_err(io(blob))?;
    if got.sha256 != sha {
        std::fs::remove_file(blob).map_err(io(blob))?;
        return Ok(None);
    }
    got.parts.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::repo::release::tests::{gen_key, sign};
    use crate::repo::testserver::{serve, Files};
    use crate::report::{Event, Recorder, Silent};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

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
    async fn a_poll_downloads_nothing_until_the_suite_changes() {
        use pgp::ser::Serialize;
        let key = gen_key("Archive <a@example.invalid>");
        let files: Files = Default::default();
        publish(&files, "s", &key, "", false);
        let (base, _) = serve(files.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("k.gpg");
        std::fs::write(&keyring, key.to_public_key().to_bytes().unwrap()).unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let opts = RepoOptions {
            keyrings: vec![keyring],
            check_valid_until: true,
            max_age: Duration::from_secs(3600),
            refresh: false,
        };
        let suites = [spec(&base, "s")];
        let first = super::super::poll::poll(&cache, &suites, &opts).await.unwrap();
        assert!(first[0].changed && first[0].bytes > 0, "{first:?}");
        let again = super::super::poll::poll(&cache, &suites, &opts).await.unwrap();
        assert_eq!((again[0].changed, again[0].bytes), (false, 0), "a 304: nothing downloaded");
        // The archive gains a package: a new InRelease, verified and cached for the next load.
        publish(&files, "s", &key, "Description: more\n", false);
        let changed = super::super::poll::poll(&cache, &suites, &opts).await.unwrap();
        assert!(changed[0].changed, "{changed:?}");
        // Signed by another key: refused, the cached one stays.
        publish(&files, "s", &gen_key("Mallory <m@example.invalid>"), "Description: forged\n", false);
        let err = super::super::poll::poll(&cache, &suites, &opts).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
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
}
