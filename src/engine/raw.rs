//! Plain JSON requests to an engine, for what bollard cannot express or deserialise on both
//! engines: the libpod endpoints (info for Podman's rootless flag, wait) and image
//! list/inspect, whose bollard models require fields that differ between Docker and Podman
//! versions.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Status code and body of one request. Errors are transport failures as text.
pub(crate) async fn get(host: &str, path: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    request(host, http::Method::GET, path, timeout).await
}

/// The headers of `GET /_ping`: the cheapest request an engine answers, and the one whose
/// headers say which engine it is (Podman adds `Libpod-Api-Version`) and its API version.
pub(crate) async fn ping(host: &str, timeout: Duration) -> Result<http::HeaderMap, String> {
    match tokio::time::timeout(timeout, exchange(host, http::Method::GET, "/_ping")).await {
        Ok(r) => r.and_then(|(status, headers, body)| match status {
            200..=299 => Ok(headers),
            _ => Err(format!("GET /_ping: {}", error_message(&body))),
        }),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

pub(crate) async fn request(
    host: &str,
    method: http::Method,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    match tokio::time::timeout(timeout, exchange(host, method, path)).await {
        Ok(r) => r.map(|(status, _, body)| (status, body)),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

type Answer = (u16, http::HeaderMap, Bytes);

async fn exchange(host: &str, method: http::Method, path: &str) -> Result<Answer, String> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "d")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    if let Some(sock) = host.strip_prefix("unix://") {
        let stream = tokio::net::UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
        send(TokioIo::new(stream), req).await
    } else if let Some(addr) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
        let addr = addr.trim_end_matches('/');
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        send(TokioIo::new(stream), req).await
    } else {
        Err(format!("unsupported endpoint scheme in {host:?} (ckms speaks unix:// and tcp://)"))
    }
}

async fn send<T>(io: TokioIo<T>, req: http::Request<Full<Bytes>>) -> Result<Answer, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    // The connection task ends when the response body has been read and the sender dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, headers, body))
}

/// The engine's error message from a JSON error body ({"message": ...}), or the body as text.
pub(crate) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// Percent-encodes a query value or path segment (image references contain '/' and ':').
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_references_and_filters() {
        assert_eq!(encode("localhost/a:b"), "localhost%2Fa%3Ab");
        assert_eq!(encode(r#"{"label":["x"]}"#), "%7B%22label%22%3A%5B%22x%22%5D%7D");
    }

    #[test]
    fn error_message_prefers_json_message() {
        assert_eq!(error_message(br#"{"message":"no such image"}"#), "no such image");
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }
}
