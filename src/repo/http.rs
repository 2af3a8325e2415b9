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

/// One attempt's failure: worth another try (network errors, 5xx) or final.
pub(super) enum Failure {
    Retry(RepoError),
    Final(RepoError),
}

/// Runs `attempt` up to [`TRIES`] times with a back-off while it fails with [`Failure::Retry`].
pub(super) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, RepoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retry(e)) if tries >= TRIES => return Err(e),
            Err(Failure::Retry(_)) => tokio::time::sleep(backoff(tries)).await,
        }
    }
}

/// GET `url` into memory (indexes are at most a few MB compressed), retrying network errors
/// and 5xx answers.
pub(super) async fn get_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, RepoError> {
    let unreachable =
        |e: reqwest::Error| Failure::Retry(RepoError::Unreachable { url: url.to_string(), detail: chain(&e) });
    retrying(|| async {
        let resp = client.get(url).send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        match status {
            _ if resp.status().is_success() => resp.bytes().await.map(|b| b.to_vec()).map_err(unreachable),
            ..500 => Err(Failure::Final(RepoError::Http { url: url.to_string(), status })),
            _ => Err(Failure::Retry(RepoError::Http { url: url.to_string(), status })),
        }
    })
    .await
}
