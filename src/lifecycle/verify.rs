//! `verify`: the built modules of a module version, loaded into a VM running their kernel.

use super::Manifest;
use super::{KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::verify::{self, Subject, Verification};

impl Lifecycle<'_> {
    /// Boots `target` in a VM and loads `mv`'s built modules (with their in-tree dependencies).
    pub async fn verify(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<Verification, LifecycleError> {
        let arch = self.arch(target)?;
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
        if !built_dir.join("module").is_dir() {
            return Err(LifecycleError::NotBuilt {
                module: mv.module.clone(),
                version: mv.version.clone(),
                kernel: target.release.clone(),
                arch,
            });
        }
        // The build record names the modules, as install reads them.
        let files: Vec<_> = Manifest::read(&built_dir)?.modules.iter().map(|m| built_dir.join(&m.file)).collect();
        self.verify_subject(&target.release, Subject::Files(&files)).await
    }

    /// Boots kernel `release` in a VM and loads `subject` into it.
    pub async fn verify_subject(&self, release: &str, subject: Subject<'_>) -> Result<Verification, LifecycleError> {
        let engine = self.engine().await?;
        let v =
            verify::verify(self.ctx, engine.engine.as_ref(), release, self.opts.profile.as_deref(), subject).await?;
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
