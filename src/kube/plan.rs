//! The plan the pods read (`plan.json`, in the image's inputs layer and in the rendered
//! directory): per Job, the kernel's facts and one entry per index. It holds no secret and
//! nothing the build could not see anyway; `collect` trusts none of it but the keys, which it
//! computes again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::KubeError;
use crate::cache::sha256_hex;
use crate::k8s;

pub const FORMAT: u32 = 1;
pub const FILE: &str = "plan.json";
/// Where the image's inputs layer puts the plan and the module sources (`src/<m>-<v>`).
pub const IN_IMAGE: &str = "/usr/lib/ckms/kube";
/// Where the image's ckms layer puts the binary and the libraries it brings (`lib/`).
pub const CKMS_DIR: &str = "/usr/lib/ckms";
/// What every result directory holds besides the run's transcript.
pub const RESULT: &str = "result.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubePlan {
    pub format: u32,
    /// What `render` was given, so that `collect` evaluates the same plan.
    pub sources: Vec<String>,
    pub kernels: Vec<String>,
    pub profile: Option<String>,
    pub jobs: Vec<JobPlan>,
}

/// One Indexed Job: one builder image, one kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPlan {
    pub name: String,
    pub kernel: String,
    pub profile: String,
    /// The builder image as the lifecycle names it, and its ID.
    pub builder: String,
    pub builder_id: String,
    /// What the pods run: the pushed image, digest-pinned.
    pub image: String,
    /// make's -j (the pod's CPU request).
    pub make_jobs: u32,
    pub timeout_secs: u64,
    pub space_bytes: i64,
    pub memory_bytes: i64,
    pub pids: i64,
    /// The kernel's .config (BUILD_EXCLUSIVE_CONFIG), where the modules are installed, and
    /// where the image keeps what its packages put in /usr/src.
    pub kernel_config: Option<String>,
    pub module_location: String,
    pub image_sources: Option<String>,
    pub pairs: Vec<PodPair>,
}

/// What index i of a Job builds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodPair {
    pub key: String,
    pub module: String,
    pub version: String,
    pub arch: String,
    /// Other modules the build sees (module, version): their sources are in the image too.
    pub visible: Vec<(String, String)>,
    /// /etc/dkms overrides that apply (file name, text).
    pub overrides: Vec<(String, String)>,
}

/// What a pod says it built, next to its transcript.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub job: String,
    pub index: usize,
    pub key: String,
    pub module: String,
    pub version: String,
    pub kernel: String,
}

impl KubePlan {
    pub fn read(path: &Path) -> Result<KubePlan, KubeError> {
        let bytes = std::fs::read(path).map_err(KubeError::io(path))?;
        let plan: KubePlan = serde_json::from_slice(&bytes)
            .map_err(|e| KubeError::Result { dir: path.to_path_buf(), message: e.to_string() })?;
        if plan.format != FORMAT {
            return Err(KubeError::Result {
                dir: path.to_path_buf(),
                message: format!("plan format {} (this ckms reads {FORMAT}): render again", plan.format),
            });
        }
        Ok(plan)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The builder images the pods ran in: tag → ID.
    pub fn images(&self) -> BTreeMap<String, String> {
        self.jobs.iter().map(|j| (j.builder.clone(), j.builder_id.clone())).collect()
    }
}

impl JobPlan {
    pub fn read(path: &Path) -> Result<JobPlan, KubeError> {
        let bytes = std::fs::read(path).map_err(KubeError::io(path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| KubeError::Result { dir: path.to_path_buf(), message: e.to_string() })
    }
}

/// A Job's name: `ckms-<kernel>-<12 hex of its pairs' keys>`, an RFC 1123 label.
pub fn job_name(kernel: &str, keys: &[&str]) -> String {
    let digest = sha256_hex(keys.join("\n").as_bytes());
    let kernel = k8s::name(kernel);
    let kernel: String = kernel.chars().take(63 - "ckms--".len() - 12).collect();
    format!("ckms-{}-{}", kernel.trim_end_matches('-'), &digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_labels_and_differ_by_pairs() {
        let a = job_name("6.12.118+deb13-amd64", &["k1", "k2"]);
        assert!(a.starts_with("ckms-6-12-118-deb13-amd64-"), "{a}");
        assert!(a.len() <= 63 && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(a, job_name("6.12.118+deb13-amd64", &["k1"]));
        let long = job_name(&"x".repeat(100), &["k"]);
        assert!(long.len() <= 63, "{long}");
    }
}
