//! How to reach a registry: the options `farm publish --format kmm` and `farm kube render` share.

use std::path::PathBuf;

use super::error::Error;
use ckms::oci::registry::Registry;

/// How to reach a registry (kmm images, the farm's images for Kubernetes).
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// The registry's user (basic authentication).
    #[arg(long, value_name = "USER", env = "CKMS_REGISTRY_USER")]
    registry_user: Option<String>,
    /// A file holding the registry user's password (or CKMS_REGISTRY_PASSWORD).
    #[arg(long, value_name = "FILE")]
    registry_password_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (a loopback registry without TLS).
    #[arg(long)]
    insecure: bool,
    /// Trust this PEM CA certificate for the registry's TLS.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn registry(self, host: String) -> Result<Registry, Error> {
        let password = match &self.registry_password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Error::usage(format!("{}: {e}", f.display()), None))?
                    .trim_end_matches('\n')
                    .to_string(),
            ),
            None => std::env::var("CKMS_REGISTRY_PASSWORD").ok(),
        };
        Ok(Registry { host, user: self.registry_user, password, insecure: self.insecure, ca_cert: self.ca_cert })
    }
}
