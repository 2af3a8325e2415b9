//! HTTP for the repository: one client setup, retries with back-off, and error messages that
//! keep the cause.

use std::path::Path;
use std::time::Duration;

use super::RepoError;

/// Attempts for network errors and 5xx answers.
pub(super) const TRIES: u32 = 3;

pub(super) fn client() -> Result<reqwest::Client, RepoError> {
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
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * (1 << attempt.min(4)))
}

/// GET `url` into memory (indexes are at most a few MB compressed), retrying network errors
/// and 5xx answers.
pub(super) async fn get_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, RepoError> {
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
