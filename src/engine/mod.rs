//! Container engines behind small traits: [`Images`] (the image store) and [`Runner`] (what
//! runs a [`RunSpec`]); an [`Engine`] is both, and says what it is ([`EngineInfo`]). Each
//! function takes the narrowest of them it needs, so a runner without an engine
//! (`kube::process`, `kube::replay`) builds with the same code. Docker Engine and Podman
//! (through its Docker-compatible socket) are both driven by [`DockerApi`], a bollard client
//! with a few raw JSON requests where bollard's strict models reject what Podman sends.
//!
//! - [`discover`]: which endpoint to use, and a private rootless Podman service as last resort;
//! - [`doctor`]: checks that explain what is missing;
//! - `fake` (unit tests only): a scripted [`Engine`] for other modules' tests.

mod config;
pub mod discover;
mod docker;
pub mod doctor;
mod error;
#[cfg(test)]
pub mod fake;
mod raw;
mod upload;

pub use config::{container_config, first_file, input_tar, parse_user, EngineCaps};
pub use discover::{candidates, connect, start_private, Connection, Endpoint, EngineSettings};
pub use docker::DockerApi;
pub use error::EngineError;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::artifact::pack_dir;

/// The most ckms takes back from one output path of a run (a tar of the build's results),
/// whoever ran it: an engine's container, or a pod whose transcript `farm kube collect` reads.
pub const MAX_OUTPUT: u64 = 2 << 30;

/// An engine's image store: what ckms asks about builder images.
#[async_trait::async_trait]
pub trait Images: Send + Sync {
    /// The image's id ("sha256:..."), or None if the engine does not have it.
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError>;
    /// RootFS.Layers diff ids, bottom first.
    async fn image_layers(&self, reference: &str) -> Result<Vec<String>, EngineError>;
    /// Loads a docker-archive tar (manifest.json + layers), streamed from disk.
    async fn load_image(&self, archive: &Path) -> Result<(), EngineError>;
    /// Images carrying the label key `label` (any value).
    async fn list_images(&self, label: &str) -> Result<Vec<ImageSummary>, EngineError>;
    async fn remove_image(&self, reference: &str) -> Result<(), EngineError>;
}

/// What runs a [`RunSpec`] to completion: a container engine, or a stand-in for one (a run
/// as child processes of a pod, a pod's run played back).
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Runs one sandboxed container to completion (or timeout) and cleans up after it.
    async fn run(&self, spec: &RunSpec) -> Result<RunOutcome, EngineError>;
    /// Like [`Runner::run`], but the container may ask the host one question on the way: when
    /// the file `exchange.request` appears in it, `answer` gets its contents and the files it
    /// returns are written, in order, into `exchange.reply_dir` (the container waits for the
    /// last one). One container can then do what would otherwise take two.
    async fn run_exchange(
        &self,
        spec: &RunSpec,
        exchange: &Exchange,
        answer: &Answer<'_>,
    ) -> Result<RunOutcome, EngineError>;
}

/// A container engine: an image store that runs containers from its images. Implemented by
/// [`DockerApi`] (Docker and Podman); `&dyn Engine` coerces to `&dyn Images` and `&dyn Runner`.
#[async_trait::async_trait]
pub trait Engine: Images + Runner {
    async fn info(&self) -> Result<EngineInfo, EngineError>;
}

/// The host's side of an [`Exchange`]: request bytes in, (file name, bytes) out.
pub type Answer<'a> = dyn Fn(&[u8]) -> Vec<(String, Vec<u8>)> + Send + Sync + 'a;

/// Where a container puts its one question and expects the answer (paths in the scratch volume).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Written by the container, complete (renamed into place) when it appears.
    pub request: String,
    pub reply_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EngineKind {
    Docker,
    Podman,
    /// Runs made in Kubernetes pods, replayed on the collecting machine (`farm kube collect`).
    Kubernetes,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
            EngineKind::Kubernetes => "Kubernetes",
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineInfo {
    pub kind: EngineKind,
    pub version: String,
    pub api_version: String,
    pub rootless: bool,
    pub endpoint: String,
    pub storage_driver: Option<String>,
    pub cgroup_version: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: HashMap<String, String>,
    pub size: u64,
    pub created: i64,
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Numeric "uid[:gid]", e.g. "1000:1000"; root is refused.
    pub user: String,
    pub workdir: String,
    /// Absolute path of the main writable directory (a fresh volume), e.g. "/build": outputs
    /// and the exchange live there.
    pub scratch: String,
    /// Extracted into `scratch` before start, in order.
    pub input: Vec<Input>,
    /// More fresh volumes besides `scratch` (e.g. a build's /usr/src), each with its input.
    pub volumes: Vec<Volume>,
    /// Absolute paths (under scratch) copied back after exit, as tar bytes whose entries are
    /// relative to the path (see `config::output_tar`).
    pub outputs: Vec<String>,
    pub limits: Limits,
    /// false = no network at all.
    pub network: bool,
    /// Gets the container's output while it runs; the whole log is in the outcome either way.
    pub follow: Option<LogSink>,
}

/// What to extract into a volume before the container starts, and who owns what it holds.
/// The volume's root always belongs to the run's user.
#[derive(Debug, Clone)]
pub struct Input {
    pub content: Content,
    pub owner: Owner,
}

/// An input's entries. Cheap to clone: an upload streams them from a task of its own.
#[derive(Debug, Clone)]
pub enum Content {
    /// A tar in memory (ckms's own small files).
    Tar(bytes::Bytes),
    /// A host directory, packed as [`crate::artifact::pack_dir`] packs it (paths under
    /// `prefix`) when the run starts: a module's source can be tens of MB, never held whole.
    Dir { path: PathBuf, prefix: String },
}

impl From<Vec<u8>> for Content {
    fn from(tar: Vec<u8>) -> Self {
        Content::Tar(tar.into())
    }
}

impl Content {
    pub fn dir(path: &Path, prefix: &str) -> Content {
        Content::Dir { path: path.to_path_buf(), prefix: prefix.to_string() }
    }
}

impl Input {
    /// Owned by the run's user: the run may change it.
    pub fn user(content: impl Into<Content>) -> Input {
        Input { content: content.into(), owner: Owner::User }
    }

    /// Owned by uid 0: the run reads it and cannot change it (on rootless Podman uid 0 is the
    /// service's user on the host, still not the run's).
    pub fn root(content: impl Into<Content>) -> Input {
        Input { content: content.into(), owner: Owner::Root }
    }

    /// The entries as one tar in memory, for runners that unpack on the host.
    pub fn tar(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match &self.content {
            Content::Tar(t) => Ok(std::borrow::Cow::Borrowed(t)),
            Content::Dir { path, prefix } => {
                pack_dir(path, prefix).map(std::borrow::Cow::Owned).map_err(std::io::Error::other)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    User,
    Root,
}

/// One more writable volume of a run: fresh, anonymous, removed with the container.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Absolute path in the container.
    pub path: String,
    pub input: Vec<Input>,
}

/// Where a running container's output goes as it comes (`--verbose`).
#[derive(Clone)]
pub struct LogSink(pub std::sync::Arc<LogFn>);

/// What a [`LogSink`] calls with each chunk of output.
pub type LogFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub pids: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub tmpfs_bytes: i64,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: None,
            pids: None,
            nano_cpus: None,
            tmpfs_bytes: 64 << 20,
            timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub exit_code: i64,
    pub timed_out: bool,
    /// stdout and stderr, interleaved as the engine recorded them.
    pub log: Vec<u8>,
    /// (path, tar bytes) for each requested output that existed.
    pub outputs: Vec<(String, Vec<u8>)>,
}
