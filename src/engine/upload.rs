//! A volume's input as a streamed request body: a blocking task writes the tar in chunks, so
//! a module's source is read from disk as the engine takes it, never held whole in memory
//! (a 29 MB source held twice was the farm's peak RSS).

use super::Input;
use bytes::Bytes;
use futures_util::Stream;
use std::io;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes per chunk sent: few messages, small next to a big source.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the writer and the request.
const DEPTH: usize = 4;

/// The tar of `inputs` for the volume at `at` (see [`super::input_tar`]) as a body stream,
/// and the writer's task: its error, if any, explains a failed upload better than the engine.
pub fn stream_input(
    inputs: Vec<Input>,
    at: String,
    uid: u32,
    gid: u32,
) -> (impl Stream<Item = io::Result<Bytes>> + Send + 'static, JoinHandle<io::Result<()>>) {
    let (tx, mut rx) = mpsc::channel(DEPTH);
    let writer = tokio::task::spawn_blocking(move || {
        let sink = ChunkSink { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let done = super::input_tar(&inputs, &at, uid, gid, sink).and_then(ChunkSink::finish);
        if let Err(e) = &done {
            // Aborts the request: the engine must not extract a truncated tar.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        done
    });
    (futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)), writer)
}

/// A `Write` that hands full chunks to the request; blocks while the engine is behind.
struct ChunkSink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading the upload"))
    }

    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{input_tar, Content, Input};
    use futures_util::StreamExt;

    async fn collect(inputs: Vec<Input>) -> (Vec<u8>, io::Result<()>) {
        let (stream, writer) = stream_input(inputs, "/usr/src".into(), 1000, 1000);
        let chunks: Vec<_> = stream.collect().await;
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => break,
            }
        }
        (out, writer.await.unwrap())
    }

    #[tokio::test]
    async fn streams_the_same_tar_as_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Bigger than a few chunks, so the stream is really in pieces.
        std::fs::write(dir.path().join("big.bin"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        std::fs::write(dir.path().join("a.c"), "int x;\n").unwrap();
        let inputs = vec![Input::user(Content::dir(dir.path(), "m-1"))];
        let (streamed, done) = collect(inputs.clone()).await;
        done.unwrap();
        let whole = input_tar(&inputs, "/usr/src", 1000, 1000, Vec::new()).unwrap();
        assert_eq!(streamed, whole);
    }

    #[tokio::test]
    async fn a_vanished_directory_fails_the_stream_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let (stream, writer) = stream_input(vec![Input::user(Content::dir(&gone, "m-1"))], "/usr/src".into(), 1, 1);
        let items: Vec<_> = stream.collect().await;
        assert!(items.last().unwrap().is_err(), "the request is aborted, not ended cleanly");
        let e = writer.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
