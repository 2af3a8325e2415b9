//! A minimal HTTP/1.1 server on localhost for the repository's tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A minimal HTTP/1.1 server on localhost: serves `files` by path, counts requests; each
/// answer has an ETag (the body's SHA-256), and an If-None-Match naming it gets a 304.
pub async fn serve(files: Files) -> (String, Arc<AtomicUsize>) {
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
                let etag = body.as_ref().map(|b| format!("\"{}\"", crate::cache::sha256_hex(b)));
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let asked = text.lines().find_map(|l| l.strip_prefix("if-none-match:")).map(str::trim);
                let resp = match body {
                    Some(_)
                        if asked.is_some()
                            && asked.map(str::to_string) == etag.as_ref().map(|e| e.to_ascii_lowercase()) =>
                    {
                        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                    }
                    Some(b) => {
                        let etag = etag.unwrap_or_default();
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
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
