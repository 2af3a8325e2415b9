//! `unbuild` and `remove`: take built modules (and, for remove, the version) out of the tree.
//! The source in `<source_tree>` stays, as with dkms.

use super::{KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::tree;

impl Lifecycle<'_> {
    /// Uninstalls (if installed) and deletes the build of `mv` for `target`.
    pub async fn unbuild(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<bool, LifecycleError> {
        self.check_not_broken(mv)?;
        let arch = self.arch(target)?;
        self.uninstall(mv, target).await?;
        let dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
        if !dir.exists() {
            self.say("not_built", super::build::values(mv, &target.release, &arch));
            return Ok(false);
        }
        let _lock = self.lock()?;
        std::fs::remove_dir_all(&dir).map_err(LifecycleError::io(&dir))?;
        if let Some(kernel_dir) = dir.parent() {
            // Only if empty: other arches of the same kernel stay.
            let _ = std::fs::remove_dir(kernel_dir);
        }
        self.report().detail(format!("Module {mv} for kernel {} ({arch}) unbuilt", target.release));
        Ok(true)
    }

    /// Unbuilds `mv` for `targets` (every built kernel with `all`), then deletes the version
    /// from the tree once no kernel is left.
    pub async fn remove(&self, mv: &ModuleVersion, targets: &[KernelTarget], all: bool) -> Result<(), LifecycleError> {
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        if !module_dir.exists() {
            return Err(LifecycleError::NotInTree { module: mv.module.clone(), version: Some(mv.version.clone()) });
        }
        self.check_not_broken(mv)?;
        let targets: Vec<KernelTarget> = if all { self.built_kernels(mv) } else { targets.to_vec() };
        for t in &targets {
            self.unbuild(mv, t).await?;
        }
        if !self.built_kernels(mv).is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        std::fs::remove_dir_all(&module_dir).map_err(LifecycleError::io(&module_dir))?;
        let top = self.roots.dkms_tree.join(&mv.module);
        // The module's directory goes when nothing else is in it (no other version, no backups).
        let _ = std::fs::remove_dir(&top);
        let said =
            serde_json::json!({ "module": mv.module, "version": mv.version, "after_kernels": !targets.is_empty() });
        self.say("removed", said);
        Ok(())
    }

    /// The (kernel, arch) pairs `mv` is built for.
    pub fn built_kernels(&self, mv: &ModuleVersion) -> Vec<KernelTarget> {
        tree::status(&self.roots, Some(&mv.module))
            .into_iter()
            .filter(|s| s.version == mv.version)
            .filter_map(|s| Some(KernelTarget { release: s.kernel?, arch: s.arch }))
            .collect()
    }
}
