//! What a build leaves beside its modules: `ckms.json`, so that install, uninstall and status
//! need neither the engine nor another dkms.conf evaluation (in a dkms tree's built dir and a
//! farm store's entry alike).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::PairError;

pub const FILE: &str = "ckms.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    pub profile: String,
    /// The builder image that built it.
    pub image: String,
    pub modules: Vec<ManifestModule>,
    pub autoinstall: bool,
    pub pre_install: Option<String>,
    pub post_install: Option<String>,
    pub post_remove: Option<String>,
    /// The kernel's CONFIG_MODULE_SIG_HASH when it was built: its modules must be signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig_hash: Option<String>,
    /// SHA-256 of the certificate whose key signed the modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// How long make ran in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_seconds: Option<f64>,
    /// Its BUILD_DEPENDS when BUILD_DEPENDS_REBUILD is set: it is built again when one of them
    /// is installed in another version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuild_with: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestModule {
    pub built_name: String,
    pub dest_name: String,
    /// Under /lib/modules/<kver>, e.g. "/updates/dkms".
    pub dest_location: String,
    /// Relative to the built dir, e.g. "module/v4l2loopback.ko.xz".
    pub file: PathBuf,
}

impl Manifest {
    pub fn read(built_dir: &Path) -> Result<Manifest, PairError> {
        let path = built_dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(PairError::io(&path))?;
        serde_json::from_str(&text).map_err(|e| PairError::Manifest { path, message: e.to_string() })
    }

    pub fn write(&self, built_dir: &Path) -> Result<(), PairError> {
        let path = built_dir.join(FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| PairError::Manifest { path: path.clone(), message: e.to_string() })?;
        std::fs::write(&path, text + "\n").map_err(PairError::io(&path))
    }
}
