//! `verify`: the built modules of a module version, loaded into a VM running their kernel.

use super::{KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::error::Error;
use crate::verify::Verification;

impl Lifecycle<'_> {
    /// Boots `target` in a VM and loads `mv`'s built modules (with their in-tree dependencies).
    pub async fn verify(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<Verification, Error> {
        let arch = self.arch(target)?;
        let dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch).join("module");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|_| LifecycleError::NotBuilt {
                module: mv.module.clone(),
                version: mv.version.clone(),
                kernel: target.release.clone(),
                arch: arch.clone(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        self.verify_files(&target.release, &files).await
    }

    /// Boots kernel `release` in a VM and loads `files` into it.
    pub async fn verify_files(&self, release: &str, files: &[std::path::PathBuf]) -> Result<Verification, Error> {
        let engine = self.engine().await?;
        let v = crate::verify::verify(self.ctx, &engine.engine, release, self.opts.profile.as_deref(), files).await?;
        for m in v.dependencies.iter().chain(&v.modules) {
            let status = match m.reason() {
                None => "loaded".to_string(),
                Some(r) => format!("NOT loaded: {r}"),
            };
            self.report().info(format!("  {} {} ({}): {status}", m.role, m.name, v.kernel));
        }
        Ok(v)
    }
}
