//! What a run in a pod left for the collecting machine: its exit, the question it asked and
//! the answer it got, its outputs and its log, each file with its SHA-256. The pod's
//! [`super::process::ProcessRunner`] writes it; [`super::replay::ReplayRunner`] plays it back
//! to the same build code that made the run, which checks it as it checks a local build.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::KubeError;
use crate::cache::sha256_hex;

pub const FILE: &str = "transcript.json";
/// The exchange's request, as the run wrote it.
pub const REQUEST: &str = "request";
/// The run's combined output.
pub const LOG: &str = "log";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Transcript {
    pub exit_code: i64,
    pub timed_out: bool,
    /// How long the run took in the pod (a statistic, as the run could forge it).
    #[serde(default)]
    pub seconds: f64,
    /// Whether the run asked its question ([`REQUEST`] holds it).
    pub asked: bool,
    /// The answer's files, in the order they were written (`reply/<name>`).
    pub replies: Vec<String>,
    /// The outputs that existed: container path, file (`output-<n>.tar`).
    pub outputs: Vec<(String, String)>,
    /// SHA-256 of every file above, by name.
    pub sha256: BTreeMap<String, String>,
}

pub fn reply_file(name: &str) -> String {
    format!("reply/{name}")
}

impl Transcript {
    /// Writes `bytes` as `name` in `dir` and records its digest.
    pub fn put(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KubeError> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(KubeError::io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(KubeError::io(&path))?;
        self.sha256.insert(name.to_string(), sha256_hex(bytes));
        Ok(())
    }

    /// The transcript itself, written last (its presence says the run's files are complete).
    pub fn finish(&self, dir: &Path) -> Result<(), KubeError> {
        let path = dir.join(FILE);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| KubeError::Result { dir: dir.to_path_buf(), message: e.to_string() })?;
        std::fs::write(&path, json).map_err(KubeError::io(&path))
    }

    pub fn read(dir: &Path) -> Result<Transcript, KubeError> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(KubeError::io(&path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| KubeError::Result { dir: dir.to_path_buf(), message: format!("{FILE}: {e}") })
    }

    /// The bytes of `name`, refused unless they are the ones recorded: a file changed after
    /// the pod wrote it, or one the transcript does not list, is not read.
    pub fn get(&self, dir: &Path, name: &str) -> Result<Vec<u8>, KubeError> {
        let tampered =
            |message: String| KubeError::Tampered { dir: dir.to_path_buf(), file: name.to_string(), message };
        let expected = self.sha256.get(name).ok_or_else(|| tampered("not listed in the transcript".into()))?;
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(KubeError::io(&path))?;
        let actual = sha256_hex(&bytes);
        if &actual != expected {
            return Err(tampered(format!("sha256 {actual}, the transcript says {expected}")));
        }
        Ok(bytes)
    }
}
