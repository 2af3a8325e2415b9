//! What a run in a pod left for the collecting machine: its exit, the question it asked and
//! the answer it got, its outputs and its log, each file with its SHA-256. The pod's
//! [`super::process::ProcessRunner`] writes it; [`super::replay::ReplayRunner`] plays it back
//! to the same build code that made the run, which checks it as it checks a local build.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::KubeError;
use crate::cache::{hash_reader, sha256_hex};
use crate::confine;
use crate::engine::MAX_OUTPUT;

pub const FILE: &str = "transcript.json";
/// The exchange's request, as the run wrote it.
pub const REQUEST: &str = "request";
/// The run's combined output.
pub const LOG: &str = "log";

// What the collecting machine reads of a result at most: a pod writes what it likes, and a
// name, a size or a file type it should not have is refused before anything is read.
/// The transcript itself: names and digests.
pub const MAX_TRANSCRIPT: u64 = 4 << 20;
/// The exchange's request and each reply file (a dkms.conf's directives, a build plan).
pub const MAX_EXCHANGE: u64 = 1 << 20;
/// The run's output: the most the pod keeps of it.
pub const MAX_LOG: u64 = 16 << 20;
/// Every file of one result together: an output as large as a container's may be, the rest.
const MAX_TOTAL: u64 = MAX_OUTPUT + MAX_LOG + (16 << 20);

/// The most `name` of a transcript may hold: an output's is a container output's.
fn limit(name: &str) -> u64 {
    if name == LOG {
        MAX_LOG
    } else if name == REQUEST || name.starts_with("reply/") {
        MAX_EXCHANGE
    } else {
        MAX_OUTPUT
    }
}

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

    /// The transcript in the result directory `dir` (read as every file of a result is: see
    /// [`confine`]).
    pub fn read(dir: &Path) -> Result<Transcript, KubeError> {
        let bytes = confine::read_inside(dir, FILE, MAX_TRANSCRIPT)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| KubeError::Result { dir: dir.to_path_buf(), message: format!("{FILE}: {e}") })
    }

    /// Every file the transcript lists is a regular file inside `dir`, within its limit and
    /// theirs together, with the recorded bytes: checked before anything of the result is
    /// used, without holding the files in memory.
    pub fn verify(&self, dir: &Path) -> Result<(), KubeError> {
        let mut total = 0u64;
        for name in self.sha256.keys() {
            let (file, size) = confine::open_inside(dir, name)?;
            total = total.saturating_add(size);
            if size > limit(name) || total > MAX_TOTAL {
                let limit = limit(name).min(MAX_TOTAL);
                return Err(
                    confine::ConfineError::TooLarge { dir: dir.to_path_buf(), name: name.clone(), limit }.into()
                );
            }
            let (actual, _) = hash_reader(std::io::Read::take(file, size))
                .map_err(|source| confine::ConfineError::Io { dir: dir.to_path_buf(), name: name.clone(), source })?;
            self.matches(dir, name, &actual)?;
        }
        Ok(())
    }

    /// The bytes of `name`, refused unless they are the ones recorded: a file changed after
    /// the pod wrote it, or one the transcript does not list, is not read.
    pub fn get(&self, dir: &Path, name: &str) -> Result<Vec<u8>, KubeError> {
        if !self.sha256.contains_key(name) {
            return Err(tampered(dir, name, "not listed in the transcript".into()));
        }
        let bytes = confine::read_inside(dir, name, limit(name))?;
        self.matches(dir, name, &sha256_hex(&bytes))?;
        Ok(bytes)
    }

    /// Whether `actual` is the digest recorded for `name` (a file inside `dir`: its digest may
    /// be told).
    fn matches(&self, dir: &Path, name: &str, actual: &str) -> Result<(), KubeError> {
        match self.sha256.get(name) {
            Some(expected) if expected == actual => Ok(()),
            Some(expected) => Err(tampered(dir, name, format!("sha256 {actual}, the transcript says {expected}"))),
            None => Err(tampered(dir, name, "not listed in the transcript".into())),
        }
    }
}

fn tampered(dir: &Path, name: &str, message: String) -> KubeError {
    KubeError::Tampered { dir: dir.to_path_buf(), file: name.to_string(), message }
}
