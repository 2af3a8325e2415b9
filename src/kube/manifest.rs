//! TEMPORARY stub until the typed manifests land (same API).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct BuildJob {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub completions: i32,
    pub parallelism: i32,
    pub backoff_limit_per_index: i32,
    pub deadline_seconds: i64,
    pub uid: i64,
    pub gid: i64,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub storage_bytes: i64,
    pub tmp_bytes: i64,
    pub scratch: Vec<String>,
    pub results_mount: String,
}
pub fn job(_j: &BuildJob, _claim: &str) -> k8s_openapi::api::batch::v1::Job {
    Default::default()
}
pub fn network_policy() -> k8s_openapi::api::networking::v1::NetworkPolicy {
    Default::default()
}
pub fn results_claim(_name: &str, _bytes: i64) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    Default::default()
}
pub fn write(_dir: &Path, _objects: &[(String, serde_json::Value)]) -> Result<Vec<PathBuf>, super::KubeError> {
    Ok(vec![])
}
