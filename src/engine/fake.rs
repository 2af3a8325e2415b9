//! [`FakeEngine`]: an in-memory [`Engine`] (so also [`Images`] and [`Runner`]) for other
//! modules' unit tests, compiled into test builds only. It records every call, keeps images
//! (loaded from real docker-archive files, or added directly) and answers `run` with
//! scripted outcomes.

use super::{Engine, EngineError, EngineInfo, EngineKind, ImageSummary, Images, RunOutcome, RunSpec, Runner};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// One call made to the fake, in order.
#[derive(Debug, Clone)]
pub enum Call {
    Info,
    ImageId(String),
    ImageLayers(String),
    LoadImage(PathBuf),
    ListImages(String),
    RemoveImage(String),
    Run(Box<RunSpec>),
    /// What `run_exchange`'s answer returned.
    Reply(Vec<(String, Vec<u8>)>),
}

#[derive(Debug, Clone, Default)]
pub struct FakeImage {
    pub id: String,
    pub tags: Vec<String>,
    pub layers: Vec<String>,
    pub labels: HashMap<String, String>,
    pub size: u64,
    pub created: i64,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    images: Vec<FakeImage>,
    runs: VecDeque<Result<RunOutcome, EngineError>>,
    requests: VecDeque<Vec<u8>>,
    load_error: Option<String>,
}

pub struct FakeEngine {
    pub info: EngineInfo,
    state: Mutex<State>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

pub const FAKE_ENDPOINT: &str = "fake://engine";

impl FakeEngine {
    /// A rootless Podman lookalike with no images; `run` succeeds with exit 0 unless scripted.
    pub fn new() -> Self {
        FakeEngine {
            info: EngineInfo {
                kind: EngineKind::Podman,
                version: "4.3.1".into(),
                api_version: "1.41".into(),
                rootless: true,
                endpoint: FAKE_ENDPOINT.into(),
                storage_driver: Some("overlay".into()),
                cgroup_version: Some("2".into()),
            },
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the calls from the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_image(&self, image: FakeImage) {
        let mut s = self.state();
        s.images.retain(|i| i.id != image.id);
        s.images.push(image);
    }

    /// The next `run` returns this (outcomes queue up; unscripted runs exit 0 with no output).
    pub fn push_run(&self, outcome: Result<RunOutcome, EngineError>) {
        self.state().runs.push_back(outcome);
    }

    /// The next `run_exchange`'s container asks this.
    pub fn push_request(&self, request: impl Into<Vec<u8>>) {
        self.state().requests.push_back(request.into());
    }

    /// The next `load_image` fails with this engine message.
    pub fn fail_next_load(&self, message: impl Into<String>) {
        self.state().load_error = Some(message.into());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn images(&self) -> Vec<FakeImage> {
        self.state().images.clone()
    }

    fn find(&self, reference: &str) -> Option<FakeImage> {
        self.state().images.iter().find(|i| i.id == reference || i.tags.iter().any(|t| t == reference)).cloned()
    }

    fn not_found(reference: &str) -> EngineError {
        EngineError::ImageNotFound { endpoint: FAKE_ENDPOINT.into(), reference: reference.into() }
    }
}

/// Reads manifest.json and each image config from a docker-archive, as an engine would.
pub fn read_docker_archive(path: &Path) -> Result<Vec<FakeImage>, String> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().trim_start_matches("./").to_string();
        // Layers are skipped: only the small JSON files matter here.
        if name.ends_with(".json") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| e.to_string())?;
            files.insert(name, buf);
        }
    }
    let manifest = files.get("manifest.json").ok_or("no manifest.json in archive")?;
    let manifest: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for m in manifest.as_array().ok_or("manifest.json is not an array")? {
        let config_name = m.get("Config").and_then(|c| c.as_str()).ok_or("manifest entry without Config")?;
        let config = files.get(config_name).ok_or_else(|| format!("{config_name} missing from archive"))?;
        let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| e.to_string())?;
        use sha2::Digest;
        out.push(FakeImage {
            id: format!("sha256:{}", hex::encode(sha2::Sha256::digest(config))),
            tags: m
                .get("RepoTags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            layers: v
                .pointer("/rootfs/diff_ids")
                .and_then(|d| d.as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            labels: v
                .pointer("/config/Labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default(),
            size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            created: 0,
        });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn info(&self) -> Result<EngineInfo, EngineError> {
        self.state().calls.push(Call::Info);
        Ok(self.info.clone())
    }
}

#[async_trait::async_trait]
impl Images for FakeEngine {
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        self.state().calls.push(Call::ImageId(reference.into()));
        Ok(self.find(reference).map(|i| i.id))
    }

    async fn image_layers(&self, reference: &str) -> Result<Vec<String>, EngineError> {
        self.state().calls.push(Call::ImageLayers(reference.into()));
        self.find(reference).map(|i| i.layers).ok_or_else(|| Self::not_found(reference))
    }

    async fn load_image(&self, archive: &Path) -> Result<(), EngineError> {
        let scripted = {
            let mut s = self.state();
            s.calls.push(Call::LoadImage(archive.to_path_buf()));
            s.load_error.take()
        };
        let fail = |message: String| EngineError::Load {
            endpoint: FAKE_ENDPOINT.into(),
            archive: archive.display().to_string(),
            message,
        };
        if let Some(message) = scripted {
            return Err(fail(message));
        }
        for image in read_docker_archive(archive).map_err(fail)? {
            // Tags move to the newest image carrying them, as in a real engine.
            let mut s = self.state();
            for other in s.images.iter_mut() {
                other.tags.retain(|t| !image.tags.contains(t));
            }
            drop(s);
            self.add_image(image);
        }
        Ok(())
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageSummary>, EngineError> {
        let mut s = self.state();
        s.calls.push(Call::ListImages(label.into()));
        Ok(s.images
            .iter()
            .filter(|i| i.labels.contains_key(label))
            .map(|i| ImageSummary {
                id: i.id.clone(),
                tags: i.tags.clone(),
                labels: i.labels.clone(),
                size: i.size,
                created: i.created,
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        self.state().calls.push(Call::RemoveImage(reference.into()));
        let image = self.find(reference).ok_or_else(|| Self::not_found(reference))?;
        self.state().images.retain(|i| i.id != image.id);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runner for FakeEngine {
    /// Records the run with its inputs read now, as an engine reads a directory input when
    /// the run starts (a test may look after the directory is gone).
    async fn run(&self, spec: &RunSpec) -> Result<RunOutcome, EngineError> {
        let mut read = spec.clone();
        let volumes = std::iter::once((&read.scratch, &mut read.input))
            .chain(read.volumes.iter_mut().map(|v| (&v.path, &mut v.input)));
        for (path, inputs) in volumes {
            for input in inputs {
                // As the real engine reports a writer's error (docker.rs).
                let io = |source| EngineError::Io { path: format!("the input of {path}"), source };
                input.content = input.tar().map_err(io)?.into_owned().into();
            }
        }
        let mut s = self.state();
        s.calls.push(Call::Run(Box::new(read)));
        s.runs
            .pop_front()
            .unwrap_or_else(|| Ok(RunOutcome { exit_code: 0, timed_out: false, log: Vec::new(), outputs: Vec::new() }))
    }

    /// Asks `answer` the next request queued by [`FakeEngine::push_request`] (if any) and
    /// records the reply as [`Call::Reply`] before the scripted outcome.
    async fn run_exchange(
        &self,
        spec: &RunSpec,
        _exchange: &super::Exchange,
        answer: &super::Answer<'_>,
    ) -> Result<RunOutcome, EngineError> {
        let request = self.state().requests.pop_front();
        if let Some(request) = request {
            let reply = answer(&request);
            self.state().calls.push(Call::Reply(reply));
        }
        self.run(spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path) -> PathBuf {
        let config =
            br#"{"config":{"Labels":{"io.ckms.image":"x"}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        use sha2::Digest;
        let hexid = hex::encode(sha2::Sha256::digest(config));
        let manifest =
            format!(r#"[{{"Config":"{hexid}.json","RepoTags":["localhost/ckms/t:1"],"Layers":["l/layer.tar"]}}]"#);
        let path = dir.join("a.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in
            [(format!("{hexid}.json"), config.to_vec()), ("manifest.json".into(), manifest.into_bytes())]
        {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
        path
    }

    #[tokio::test]
    async fn load_list_remove_and_scripted_run() {
        let dir = tempfile::tempdir().unwrap();
        let f = FakeEngine::new();
        f.load_image(&archive(dir.path())).await.unwrap();
        let id = f.image_id("localhost/ckms/t:1").await.unwrap().unwrap();
        assert!(id.starts_with("sha256:"));
        assert_eq!(f.image_layers(&id).await.unwrap(), ["sha256:aa"]);
        assert_eq!(f.list_images("io.ckms.image").await.unwrap().len(), 1);
        assert!(f.list_images("other").await.unwrap().is_empty());
        f.remove_image(&id).await.unwrap();
        assert_eq!(f.image_id(&id).await.unwrap(), None);

        f.push_run(Ok(RunOutcome { exit_code: 2, timed_out: false, log: b"err".to_vec(), outputs: vec![] }));
        let spec = RunSpec {
            image: id,
            cmd: vec!["make".into()],
            env: vec![],
            user: "1000:1000".into(),
            workdir: "/build".into(),
            scratch: "/build".into(),
            input: vec![],
            volumes: vec![],
            outputs: vec![],
            limits: Default::default(),
            network: false,
            follow: None,
        };
        assert_eq!(f.run(&spec).await.unwrap().exit_code, 2);
        assert_eq!(f.run(&spec).await.unwrap().exit_code, 0);
        assert_eq!(f.calls().iter().filter(|c| matches!(c, Call::Run(_))).count(), 2);

        f.fail_next_load("disk full");
        let err = f.load_image(&archive(dir.path())).await.unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }
}
