//! Asking a mirror whether a suite changed, cheaply: a conditional GET of its InRelease
//! (If-None-Match with the ETag it last sent, If-Modified-Since with the cached copy's fetch
//! time). Unchanged: a 304, no body. Changed: the new InRelease, verified as [`super::load`]
//! verifies it, replaces the cached one, so the next index load reads it without asking again.

use std::sync::Arc;
use std::time::SystemTime;

use super::http::{chain, client, io, retrying, Failure};
use super::load::{inrelease_path, verified, write_atomic};
use super::release::Keyring;
use super::{RepoError, RepoOptions, SuiteSpec};
use crate::cache::{sha256_hex, Cache};

/// What one poll of one suite found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Polled {
    pub mirror: String,
    pub suite: String,
    /// The InRelease differs from the cached one (or none was cached).
    pub changed: bool,
    /// Bytes of body received (0 for a 304).
    pub bytes: u64,
}

/// Polls each suite of `suites`.
pub async fn poll(cache: &Cache, suites: &[SuiteSpec], opts: &RepoOptions) -> Result<Vec<Polled>, RepoError> {
    let keyring = Arc::new(Keyring::load(&opts.keyrings)?);
    let client = client()?;
    let dir = cache.dir("indexes")?;
    let mut out = Vec::new();
    for spec in suites {
        let mirror = spec.mirror.trim_end_matches('/').to_string();
        let url = format!("{mirror}/dists/{}/InRelease", spec.suite);
        let path = inrelease_path(&dir, spec);
        let etag_path = path.with_extension("etag");
        let cached = std::fs::read(&path).ok();
        let mut req = client.get(&url);
        if cached.is_some() {
            if let Ok(etag) = std::fs::read_to_string(&etag_path) {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag.trim());
            }
            if let Ok(t) = std::fs::metadata(&path).and_then(|m| m.modified()) {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, httpdate::fmt_http_date(t));
            }
        }
        let resp = send(req, &url).await?;
        let touch =
            || std::fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED && cached.is_some() {
            touch().map_err(io(&path))?;
            out.push(Polled { mirror, suite: spec.suite.clone(), changed: false, bytes: 0 });
            continue;
        }
        if !resp.status().is_success() {
            return Err(RepoError::Http { url, status: resp.status().as_u16() });
        }
        let etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        let raw = resp.bytes().await.map_err(|e| RepoError::Unreachable { url: url.clone(), detail: chain(&e) })?;
        verified(&raw, keyring.clone(), &url, &spec.suite, opts.check_valid_until).await?;
        let changed = cached.as_deref().map(sha256_hex) != Some(sha256_hex(&raw));
        if changed {
            write_atomic(&path, &raw)?;
        } else {
            touch().map_err(io(&path))?;
        }
        match etag {
            Some(e) => write_atomic(&etag_path, e.as_bytes())?,
            None => {
                let _ = std::fs::remove_file(&etag_path);
            }
        }
        out.push(Polled { mirror, suite: spec.suite.clone(), changed, bytes: raw.len() as u64 });
    }
    Ok(out)
}

/// Sends `req`, retrying network errors and 5xx answers.
async fn send(req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, RepoError> {
    retrying(|| async {
        let Some(try_req) = req.try_clone() else {
            return Err(Failure::Final(RepoError::Unreachable {
                url: url.into(),
                detail: "request cannot be sent again".into(),
            }));
        };
        match try_req.send().await {
            Ok(r) if !r.status().is_server_error() => Ok(r),
            Ok(r) => Err(Failure::Retry(RepoError::Http { url: url.to_string(), status: r.status().as_u16() })),
            Err(e) => Err(Failure::Retry(RepoError::Unreachable { url: url.to_string(), detail: chain(&e) })),
        }
    })
    .await
}
