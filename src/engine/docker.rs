//! [`DockerApi`]: the bollard-backed [`Engine`] for both Docker and Podman's compat socket.
//!
//! Container calls go through bollard's typed API, but never read container state enums
//! (Podman 4 reports states such as "stopped" that bollard rejects): a wait gives the exit
//! code, Docker's `wait_container` or, on Podman, libpod's own wait (its compat one burns a
//! core while it waits). Image list/inspect and engine info are read as raw JSON (see [`raw`]).

use super::config::{container_config, parse_user, EngineCaps, RUN_LABEL};
use super::{
    raw, Answer, Engine, EngineError, EngineInfo, EngineKind, Exchange, ImageSummary, Images, RunOutcome, RunSpec,
    Runner,
};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, ImportImageOptionsBuilder,
    KillContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryFutureExt, TryStreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time for ordinary API calls (create, start, inspect, remove).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for loading one image archive (hundreds of MB; Podman's vfs driver copies every layer).
const LOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// After a kill, how long to wait for the container to be reported as exited.
const KILL_GRACE: Duration = Duration::from_secs(30);
/// How often a running container is asked whether its exchange request is there: soon after
/// the start (a conf evaluates in a fraction of a second), then less and less often, so that a
/// slow one costs the engine little (each look is an archive request).
const EXCHANGE_POLL_FIRST: Duration = Duration::from_millis(10);
const EXCHANGE_POLL_MAX: Duration = Duration::from_millis(250);
/// How often Podman's own wait looks at the container's state. Its Docker-compatible wait
/// polls without pause in Podman 4 (a core's worth of CPU for as long as the build runs).
const PODMAN_WAIT_INTERVAL: &str = "50ms";

/// A Docker Engine or Podman endpoint, spoken to with the Docker API.
#[derive(Debug, Clone)]
pub struct DockerApi {
    docker: Docker,
    info: EngineInfo,
    caps: EngineCaps,
}

impl DockerApi {
    /// Connects to `endpoint` (unix:///path or tcp://host:port), pings it within `timeout`,
    /// negotiates the API version and reads what kind of engine it is. The error is a short
    /// reason for the discovery report.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<DockerApi, String> {
        // bollard's connect_with_host would send tcp:// through TLS when DOCKER_TLS_VERIFY is
        // set; ckms only speaks plain unix and tcp, so pick the transport itself.
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if !Path::new(path).exists() {
                return Err("socket not found".into());
            }
        } else if !(endpoint.starts_with("tcp://") || endpoint.starts_with("http://")) {
            return Err("unsupported scheme (use unix:///path or tcp://host:port)".into());
        }
        // One round of concurrent requests instead of bollard's negotiate_version plus ours:
        // Podman answers /version and /info slowly (0.2-0.3 s each).
        let info = match tokio::time::timeout(timeout, read_info(endpoint, timeout)).await {
            Ok(info) => info?,
            Err(_) => return Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        let version = client_version(&info.api_version);
        // bollard's connect_with_host would send tcp:// through TLS when DOCKER_TLS_VERIFY is
        // set; ckms only speaks plain unix and tcp, so pick the transport itself.
        let docker = if endpoint.starts_with("unix://") {
            Docker::connect_with_unix(endpoint, API_TIMEOUT.as_secs(), &version)
        } else {
            Docker::connect_with_http(endpoint, API_TIMEOUT.as_secs(), &version)
        }
        .map_err(|e| e.to_string())?;
        let caps = EngineCaps::new(info.kind, info.rootless, info.cgroup_version.as_deref());
        Ok(DockerApi { docker, info, caps })
    }

    /// The engine description read when connecting.
    pub fn info_cached(&self) -> EngineInfo {
        self.info.clone()
    }

    pub fn endpoint(&self) -> &str {
        &self.info.endpoint
    }

    /// What this engine enforces (limits are dropped where it cannot).
    pub fn caps(&self) -> EngineCaps {
        self.caps
    }

    /// Containers ckms created that still exist (ids), e.g. after a crash; `ckms doctor` and
    /// tests use it. Raw JSON: Podman's container states do not fit bollard's enum.
    pub async fn leftover_containers(&self) -> Result<Vec<(String, String)>, EngineError> {
        let filters = raw::encode(&format!(r#"{{"label":["{RUN_LABEL}"]}}"#));
        let v = self.get_json("list containers", &format!("/containers/json?all=1&filters={filters}")).await?;
        Ok(v.as_array()
            .map(|a| a.iter().map(|c| (str_field(c, "Id"), str_field(c, "Command"))).collect())
            .unwrap_or_default())
    }

    async fn get_json(&self, op: &str, path: &str) -> Result<Value, EngineError> {
        let (status, body) =
            raw::get(self.endpoint(), path, API_TIMEOUT).await.map_err(|e| EngineError::api(self.endpoint(), op, e))?;
        if status >= 300 {
            return Err(EngineError::api(self.endpoint(), op, raw::error_message(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| EngineError::api(self.endpoint(), op, e))
    }

    /// Image inspect JSON, None when the engine does not have the image.
    async fn inspect_image(&self, reference: &str) -> Result<Option<Value>, EngineError> {
        let op = format!("inspect image {reference}");
        let (status, body) = raw::get(self.endpoint(), &format!("/images/{reference}/json"), API_TIMEOUT)
            .await
            .map_err(|e| EngineError::api(self.endpoint(), &op, e))?;
        match status {
            404 => Ok(None),
            s if s >= 300 => Err(EngineError::api(self.endpoint(), &op, raw::error_message(&body))),
            _ => serde_json::from_slice(&body).map(Some).map_err(|e| EngineError::api(self.endpoint(), &op, e)),
        }
    }

    fn err(&self, op: String) -> impl FnOnce(BollardError) -> EngineError + '_ {
        move |e| EngineError::api(self.endpoint(), op, short_error(&e))
    }

    /// Everything between create and remove; the caller removes the container whatever happens.
    async fn run_created(
        &self,
        id: &str,
        spec: &RunSpec,
        uid: u32,
        gid: u32,
        exchange: Option<(&Exchange, &Answer<'_>)>,
    ) -> Result<RunOutcome, EngineError> {
        // Into the volumes, not the rootfs: Docker refuses uploads into a read-only rootfs.
        // One request per volume, all at once: each costs the engine a mount (~0.1 s on Podman).
        let volumes =
            std::iter::once((&spec.scratch, &spec.input)).chain(spec.volumes.iter().map(|v| (&v.path, &v.input)));
        let uploads = volumes.map(|(path, input)| async move {
            let (body, written) = super::upload::stream_input(input.clone(), path.clone(), uid, gid);
            let opts = UploadToContainerOptionsBuilder::new().path(path).build();
            let sent = self.docker.upload_to_container(id, Some(opts), bollard::body_try_stream(body)).await;
            // The writer's own error (a source file that cannot be read) says more than the
            // engine's "unexpected EOF".
            let written = written.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            written.map_err(|source| EngineError::Io { path: format!("the input of {path}"), source })?;
            sent.map_err(self.err(format!("upload input into {path} of container {id}")))
        });
        futures_util::future::try_join_all(uploads).await?;

        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(self.err(format!("start container {id} (image {})", spec.image)))?;

        let timeout = spec.limits.timeout;
        let follower = spec.follow.clone().map(|sink| {
            let (docker, id) = (self.docker.clone(), id.to_string());
            tokio::spawn(async move {
                let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(true).build();
                let mut logs = docker.logs(&id, Some(opts));
                while let Some(Ok(chunk)) = logs.next().await {
                    (sink.0)(&chunk.into_bytes());
                }
            })
        });
        let run = async {
            let wait = self.wait(id, timeout);
            tokio::pin!(wait);
            if let Some((ex, answer)) = exchange {
                let mut poll = EXCHANGE_POLL_FIRST;
                loop {
                    tokio::select! {
                        code = &mut wait => return code,
                        _ = tokio::time::sleep(poll) => {}
                    }
                    poll = (poll * 5 / 4).min(EXCHANGE_POLL_MAX);
                    if let Some(request) = self.download(id, &ex.request).await? {
                        let files = answer(&super::config::first_file(&request).unwrap_or_default());
                        self.upload_files(id, &ex.reply_dir, &files, uid, gid).await?;
                        break;
                    }
                }
            }
            wait.await
        };
        let (exit_code, timed_out) = match tokio::time::timeout(timeout, run).await {
            Ok(code) => (code?, false),
            Err(_) => {
                let kill = KillContainerOptionsBuilder::new().signal("KILL").build();
                // It may have exited meanwhile; the wait below tells.
                let _ = self.docker.kill_container(id, Some(kill)).await;
                let code = tokio::time::timeout(KILL_GRACE, self.wait(id, KILL_GRACE)).await;
                (code.ok().and_then(Result::ok).unwrap_or(137), true)
            }
        };

        if let Some(f) = follower {
            // It ends with the container; whatever it has not printed by then is in the log.
            let handle = f.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), f).await.is_err() {
                handle.abort();
            }
        }
        // The log and the outputs at once: the exit is known, each read costs a round trip.
        let log_opts = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(false).build();
        let log = self
            .docker
            .logs(id, Some(log_opts))
            .map_ok(|chunk| chunk.into_bytes())
            .try_fold(Vec::new(), |mut acc, b| async move {
                acc.extend_from_slice(&b);
                Ok(acc)
            })
            .map_err(self.err(format!("read logs of container {id}")));
        let outputs = futures_util::future::try_join_all(spec.outputs.iter().map(|path| self.download(id, path)));
        let (log, outputs) = futures_util::try_join!(log, outputs)?;
        let outputs =
            spec.outputs.iter().zip(outputs).filter_map(|(path, bytes)| Some((path.clone(), bytes?))).collect();
        Ok(RunOutcome { exit_code, timed_out, log, outputs })
    }

    /// Writes `files` (in order) into `dir` of a running container, owned by the build user.
    async fn upload_files(
        &self,
        id: &str,
        dir: &str,
        files: &[(String, Vec<u8>)],
        uid: u32,
        gid: u32,
    ) -> Result<(), EngineError> {
        let bad = |e: std::io::Error| EngineError::BadSpec(format!("reply for {dir}: {e}"));
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(uid.into());
            h.set_gid(gid.into());
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, name, &bytes[..]).map_err(bad)?;
        }
        let tar = b.into_inner().map_err(bad)?;
        let opts = UploadToContainerOptionsBuilder::new().path(dir).build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(self.err(format!("upload the reply into {dir} of container {id}")))
    }

    /// Waits until the container is not running and returns its exit code.
    async fn wait(&self, id: &str, timeout: Duration) -> Result<i64, EngineError> {
        if self.info.kind == EngineKind::Podman {
            return self.wait_libpod(id, timeout).await;
        }
        // The wait request's own client timeout must outlast the build (the engine answers
        // only when the container exits); the caller enforces the real limit.
        let docker = self.docker.clone().with_timeout(timeout + API_TIMEOUT);
        let opts = WaitContainerOptionsBuilder::new().condition("not-running").build();
        let mut stream = docker.wait_container(id, Some(opts));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard turns non-zero exit codes into this error.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(EngineError::api(self.endpoint(), format!("wait for container {id}"), short_error(&e))),
            None => Err(EngineError::api(self.endpoint(), format!("wait for container {id}"), "no answer")),
        }
    }

    /// Podman's own wait: its compat endpoint busy-loops (see [`PODMAN_WAIT_INTERVAL`]). The
    /// condition "exited" also covers a container that exited before the request came.
    async fn wait_libpod(&self, id: &str, timeout: Duration) -> Result<i64, EngineError> {
        let op = format!("wait for container {id}");
        let path = format!("/v4.0.0/libpod/containers/{id}/wait?condition=exited&interval={PODMAN_WAIT_INTERVAL}");
        let (status, body) = raw::request(self.endpoint(), http::Method::POST, &path, timeout + API_TIMEOUT)
            .await
            .map_err(|e| EngineError::api(self.endpoint(), &op, e))?;
        if status >= 300 {
            return Err(EngineError::api(self.endpoint(), &op, raw::error_message(&body)));
        }
        // The body is the exit code as a bare number.
        let text = String::from_utf8_lossy(&body);
        text.trim().parse().map_err(|_| EngineError::api(self.endpoint(), &op, format!("unexpected answer {text:?}")))
    }

    /// A path from the container as tar bytes; None if it does not exist.
    async fn download(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let opts = DownloadFromContainerOptionsBuilder::new().path(path).build();
        // What a container returns is the build's to choose: bounded, in ckms's memory too.
        let mut stream = self.docker.download_from_container(id, Some(opts));
        let mut bytes = Vec::new();
        let mut res = Ok(());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) if (bytes.len() + b.len()) as u64 > super::MAX_OUTPUT => {
                    return Err(EngineError::api(
                        self.endpoint(),
                        format!("copy {path} out of container {id}"),
                        format!("it holds more than {} MiB", super::MAX_OUTPUT >> 20),
                    ));
                }
                Ok(b) => bytes.extend_from_slice(&b),
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        let res = res.map(|()| bytes);
        match res {
            Ok(bytes) => super::config::output_tar(&bytes, path).map(Some).map_err(|e| {
                EngineError::api(
                    self.endpoint(),
                    format!("read the archive of {path} from container {id}"),
                    e.to_string(),
                )
            }),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            // Podman 4 answers a missing path with 500 "... no such file or directory".
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("no such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => {
                Err(EngineError::api(self.endpoint(), format!("copy {path} out of container {id}"), short_error(&e)))
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        // v: also remove the anonymous volumes.
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        let mut last = None;
        for _ in 0..2 {
            match self.docker.remove_container(id, Some(opts.clone())).await {
                Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(EngineError::api(
            self.endpoint(),
            format!("remove container {id} (remove it with `docker rm -fv {id}` or `podman rm -fv {id}`)"),
            last.map(|e| short_error(&e)).unwrap_or_default(),
        ))
    }
}

#[async_trait::async_trait]
impl Engine for DockerApi {
    /// As read when connecting.
    async fn info(&self) -> Result<EngineInfo, EngineError> {
        Ok(self.info.clone())
    }
}

#[async_trait::async_trait]
impl Images for DockerApi {
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        Ok(self.inspect_image(reference).await?.map(|v| str_field(&v, "Id")))
    }

    async fn image_layers(&self, reference: &str) -> Result<Vec<String>, EngineError> {
        let v = self.inspect_image(reference).await?.ok_or_else(|| EngineError::ImageNotFound {
            endpoint: self.endpoint().to_string(),
            reference: reference.to_string(),
        })?;
        Ok(v.pointer("/RootFS/Layers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    async fn load_image(&self, archive: &Path) -> Result<(), EngineError> {
        let load_err = |message: String| EngineError::Load {
            endpoint: self.endpoint().to_string(),
            archive: archive.display().to_string(),
            message,
        };
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| EngineError::Io { path: archive.display().to_string(), source })?;
        // Streamed in chunks: archives are hundreds of MB.
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let docker = self.docker.clone().with_timeout(LOAD_TIMEOUT);
        let opts = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut stream = docker.import_image(opts, bollard::body_try_stream(body), None);
        let mut loaded = false;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| load_err(short_error(&e)))?;
            if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                return Err(load_err(msg));
            }
            loaded |= info.stream.as_deref().is_some_and(|s| s.contains("Loaded image"));
        }
        if !loaded {
            return Err(load_err("the engine did not report any image loaded".into()));
        }
        Ok(())
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageSummary>, EngineError> {
        let filters = raw::encode(&serde_json::json!({ "label": [label] }).to_string());
        let v = self.get_json("list images", &format!("/images/json?filters={filters}")).await?;
        let images = v.as_array().cloned().unwrap_or_default();
        Ok(images
            .iter()
            .map(|i| ImageSummary {
                id: str_field(i, "Id"),
                tags: i
                    .get("RepoTags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter(|t| *t != "<none>:<none>")
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                labels: i
                    .get("Labels")
                    .and_then(|l| serde_json::from_value::<HashMap<String, String>>(l.clone()).ok())
                    .unwrap_or_default(),
                size: i.get("Size").and_then(Value::as_u64).unwrap_or(0),
                created: i.get("Created").and_then(Value::as_i64).unwrap_or(0),
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        let op = format!("remove image {reference}");
        let (status, body) =
            raw::request(self.endpoint(), http::Method::DELETE, &format!("/images/{reference}"), API_TIMEOUT)
                .await
                .map_err(|e| EngineError::api(self.endpoint(), &op, e))?;
        match status {
            404 => Err(EngineError::ImageNotFound {
                endpoint: self.endpoint().to_string(),
                reference: reference.to_string(),
            }),
            s if s >= 300 => Err(EngineError::api(self.endpoint(), &op, raw::error_message(&body))),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Runner for DockerApi {
    async fn run(&self, spec: &RunSpec) -> Result<RunOutcome, EngineError> {
        self.run_with(spec, None).await
    }

    async fn run_exchange(
        &self,
        spec: &RunSpec,
        exchange: &Exchange,
        answer: &Answer<'_>,
    ) -> Result<RunOutcome, EngineError> {
        self.run_with(spec, Some((exchange, answer))).await
    }
}

impl DockerApi {
    async fn run_with(
        &self,
        spec: &RunSpec,
        exchange: Option<(&Exchange, &Answer<'_>)>,
    ) -> Result<RunOutcome, EngineError> {
        let (uid, gid) = parse_user(&spec.user)?;
        for path in std::iter::once(&spec.scratch).chain(spec.volumes.iter().map(|v| &v.path)) {
            if !path.starts_with('/') || path == "/" {
                return Err(EngineError::BadSpec(format!("volume {path:?} must be an absolute directory below /")));
            }
        }
        let body = container_config(spec, &self.caps);
        let name = unique_name();
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = match self.docker.create_container(Some(opts), body).await {
            Ok(r) => r.id,
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {
                return Err(EngineError::ImageNotFound {
                    endpoint: self.endpoint().to_string(),
                    reference: spec.image.clone(),
                })
            }
            Err(e) => {
                return Err(EngineError::api(
                    self.endpoint(),
                    format!("create container from image {}", spec.image),
                    short_error(&e),
                ))
            }
        };
        let result = self.run_created(&id, spec, uid, gid, exchange).await;
        let removed = self.remove_container(&id).await;
        // A run error says more than a failed cleanup after it.
        let outcome = result?;
        removed?;
        Ok(outcome)
    }
}

/// Reads kind, versions, rootless, storage driver and cgroup version. The ping's headers say
/// which engine answers; then Podman's own info holds everything (its compat /version and /info
/// cost a rootless service 0.2-0.5 s each), Docker's /version and /info answer at once.
async fn read_info(endpoint: &str, timeout: Duration) -> Result<EngineInfo, String> {
    let json = |path: &'static str| async move {
        let (status, body) = raw::get(endpoint, path, timeout).await?;
        if status >= 300 {
            return Err(format!("GET {path}: {}", raw::error_message(&body)));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("GET {path}: {e}"))
    };
    let ping = raw::ping(endpoint, timeout).await?;
    let header = |name: &str| ping.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if ping.contains_key("libpod-api-version") {
        return Ok(podman_info(endpoint, &json("/v4.0.0/libpod/info").await?, header("api-version")));
    }
    let (version, info) = tokio::try_join!(json("/version"), json("/info"))?;
    let security = info.get("SecurityOptions").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(EngineInfo {
        kind: EngineKind::Docker,
        version: str_field(&version, "Version"),
        api_version: str_field(&version, "ApiVersion"),
        rootless: security.iter().filter_map(Value::as_str).any(|s| s.contains("name=rootless")),
        endpoint: endpoint.to_string(),
        storage_driver: non_empty(str_field(&info, "Driver")),
        cgroup_version: non_empty(str_field(&info, "CgroupVersion")),
    })
}

/// Podman's facts from its libpod info; `api_version` is the Docker-compatible API's (the
/// ping's `Api-Version`), which bollard speaks.
fn podman_info(endpoint: &str, libpod: &Value, api_version: String) -> EngineInfo {
    let text = |pointer: &str| libpod.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    EngineInfo {
        kind: EngineKind::Podman,
        version: text("/version/Version"),
        api_version,
        rootless: libpod.pointer("/host/security/rootless").and_then(Value::as_bool).unwrap_or(false),
        endpoint: endpoint.to_string(),
        storage_driver: non_empty(text("/store/graphDriverName")),
        // "v1" there, "1" in the compat API's /info.
        cgroup_version: non_empty(text("/host/cgroupVersion").trim_start_matches('v').to_string()),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The API version to speak: the server's, but never newer than what bollard knows.
fn client_version(server: &str) -> bollard::ClientVersion {
    let ours = bollard::API_DEFAULT_VERSION;
    let mut parts = server.split('.').map(|p| p.parse::<usize>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) < (ours.major_version, ours.minor_version) => {
            bollard::ClientVersion { major_version: major, minor_version: minor }
        }
        _ => *ours,
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// bollard's messages for server errors, without the status code noise.
fn short_error(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

fn unique_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("ckms-run-{}-{nanos:x}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_facts_come_from_its_libpod_info() {
        let libpod = serde_json::json!({
            "host": { "cgroupVersion": "v1", "security": { "rootless": true } },
            "store": { "graphDriverName": "overlay" },
            "version": { "Version": "4.3.1", "APIVersion": "4.3.1" },
        });
        let info = podman_info("unix:///run/p.sock", &libpod, "1.41".into());
        assert_eq!(info.kind, EngineKind::Podman);
        assert_eq!((info.version.as_str(), info.api_version.as_str()), ("4.3.1", "1.41"));
        assert!(info.rootless);
        assert_eq!(info.storage_driver.as_deref(), Some("overlay"));
        assert_eq!(info.cgroup_version.as_deref(), Some("1"), "as the compat API says it");
        let bare = podman_info("unix:///run/p.sock", &serde_json::json!({}), "1.41".into());
        assert!(!bare.rootless && bare.storage_driver.is_none() && bare.cgroup_version.is_none());
    }
}
