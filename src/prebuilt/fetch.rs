//! Reading a cache's files: over HTTP(S), from a `file://` URL or from a directory. A small
//! trait, so that the cache logic is tested against a map of files.

use crate::repo::chain;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// The server answered that it has no such file (404, a missing file).
    NotFound,
    /// No answer, or a broken one: connection refused, time-out, a 5xx, an unreadable file.
    Unreachable(String),
    /// More bytes than the caller accepts: refused while reading, not after.
    TooLarge(u64),
}

/// Gets a file of a cache by its full URL, at most `limit` bytes of it.
pub(crate) trait Fetch {
    async fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Miss>;
}

/// The real one: reqwest for http(s), the file system for `file://` and paths.
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Fetcher, Miss> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("ckms/", env!("CARGO_PKG_VERSION")))
            // A cache that does not answer quickly is passed over: the host can still build.
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Miss::Unreachable(chain(&e)))?;
        Ok(Fetcher { client })
    }
}

impl Fetch for Fetcher {
    async fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Miss> {
        if url.starts_with("http://") || url.starts_with("https://") {
            let mut resp = self.client.get(url).send().await.map_err(|e| Miss::Unreachable(chain(&e)))?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(Miss::NotFound);
            }
            if !status.is_success() {
                return Err(Miss::Unreachable(format!("HTTP {status}")));
            }
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(Miss::TooLarge(limit));
            }
            // Counted as it arrives: a server may send more than it announced.
            let mut bytes = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| Miss::Unreachable(chain(&e)))? {
                if (bytes.len() + chunk.len()) as u64 > limit {
                    return Err(Miss::TooLarge(limit));
                }
                bytes.extend_from_slice(&chunk);
            }
            return Ok(bytes);
        }
        let path = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::NotFound),
            Err(e) => return Err(Miss::Unreachable(e.to_string())),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Miss::Unreachable(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(Miss::TooLarge(limit));
        }
        Ok(bytes)
    }
}

/// `base` joined with a path of the cache (`index.json`, `pairs/<key>/<file>`).
pub fn join(base: &str, rel: &str) -> String {
    format!("{}/{rel}", base.trim_end_matches('/'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A cache in memory; `None` answers nothing at all.
    pub(crate) struct Files(pub Option<HashMap<String, Vec<u8>>>);

    impl Fetch for Files {
        async fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Miss> {
            let files = self.0.as_ref().ok_or_else(|| Miss::Unreachable("connection refused".into()))?;
            let bytes = files.get(url).cloned().ok_or(Miss::NotFound)?;
            if bytes.len() as u64 > limit {
                return Err(Miss::TooLarge(limit));
            }
            Ok(bytes)
        }
    }

    #[tokio::test]
    async fn directories_and_file_urls_are_caches_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.json"), b"{}").unwrap();
        let f = Fetcher::new().unwrap();
        let base = dir.path().to_string_lossy().into_owned();
        assert_eq!(f.get(&join(&base, "index.json"), 2).await.unwrap(), b"{}");
        assert_eq!(f.get(&join(&format!("file://{base}/"), "index.json"), 2).await.unwrap(), b"{}");
        assert_eq!(f.get(&join(&base, "index.json"), 1).await, Err(Miss::TooLarge(1)));
        assert_eq!(f.get(&join(&base, "nope"), 2).await, Err(Miss::NotFound));
        // Nothing listens on port 9 of loopback (discard): refused at once.
        let err = f.get("http://127.0.0.1:9/index.json", 2).await.unwrap_err();
        assert!(matches!(err, Miss::Unreachable(_)), "{err:?}");
    }
}
