//! dkms 3.2's BUILD_DEPENDS_REBUILD: a module built against other modules (its BUILD_DEPENDS)
//! records the version of each it was built with (`.dep_<module>` beside its build), and is
//! built and installed again after an install leaves one of them in another version.

use std::path::Path;

use super::build::values;
use super::{KernelTarget, Lifecycle, LifecycleError, Manifest};
use crate::repo::version;

/// The file beside a build that names the version of `dependency` it was built with.
fn dep_file(built_dir: &Path, dependency: &str) -> std::path::PathBuf {
    built_dir.join(format!(".dep_{dependency}"))
}

impl Lifecycle<'_> {
    /// After a build (not forced): the version of each of `manifest`'s BUILD_DEPENDS_REBUILD
    /// dependencies built for the kernel, as dkms records it.
    pub(super) fn record_dependencies(&self, built_dir: &Path, manifest: &Manifest) -> Result<(), LifecycleError> {
        if self.opts.force {
            return Ok(());
        }
        for dep in &manifest.rebuild_with {
            if let Some(v) = self.newest_built(dep, &manifest.kernel, &manifest.arch) {
                let file = dep_file(built_dir, dep);
                std::fs::write(&file, format!("{v}\n")).map_err(LifecycleError::io(&file))?;
            }
        }
        Ok(())
    }

    /// After an install (not forced): every module built for the kernel whose recorded
    /// dependency versions are no longer the newest built is uninstalled, unbuilt, built and
    /// installed again, with dkms's line first.
    pub(super) async fn rebuild_dependents(&self, target: &KernelTarget, arch: &str) -> Result<(), LifecycleError> {
        if self.opts.force {
            return Ok(());
        }
        for mv in self.all() {
            let dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, arch);
            let Ok(manifest) = Manifest::read(&dir) else { continue };
            if !self.stale(&dir, &manifest) {
                continue;
            }
            self.say("rebuilding", values(&mv, &target.release, arch));
            self.unbuild(&mv, target).await?;
            Box::pin(self.install(&mv, target)).await?;
        }
        Ok(())
    }

    /// Whether a dependency of the build in `built_dir` was built in another version than the
    /// one recorded (or none was recorded), as dkms's check_dependencies_updated decides.
    fn stale(&self, built_dir: &Path, manifest: &Manifest) -> bool {
        manifest.rebuild_with.iter().any(|dep| {
            let Some(newest) = self.newest_built(dep, &manifest.kernel, &manifest.arch) else { return false };
            std::fs::read_to_string(dep_file(built_dir, dep)).map_or(true, |v| v.trim() != newest)
        })
    }

    /// The newest version of `module` built for the kernel (dkms's `module_status` of it).
    fn newest_built(&self, module: &str, kernel: &str, arch: &str) -> Option<String> {
        let mut built: Vec<String> = self
            .versions(module)
            .into_iter()
            .filter(|v| self.roots.built_dir(module, v, kernel, arch).join("module").is_dir())
            .collect();
        built.sort_by(|a, b| version::compare(a, b));
        built.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, context};
    use super::super::{Lifecycle, Options};
    use super::*;

    #[test]
    fn a_dependency_built_in_another_version_makes_its_dependent_stale() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let roots = built(root, b"\x7fELF", false); // m/1 for kernel k
        let ctx = context(root);
        let lc = Lifecycle::new(&ctx, roots.clone(), Options::default());
        let d = roots.built_dir("d", "1", "k", "x86_64");
        std::fs::create_dir_all(d.join("module")).unwrap();
        let manifest = Manifest {
            module: "d".into(),
            rebuild_with: vec!["m".into()],
            ..Manifest::read(&roots.built_dir("m", "1", "k", "x86_64")).unwrap()
        };

        assert!(lc.stale(&d, &manifest), "nothing recorded yet");
        lc.record_dependencies(&d, &manifest).unwrap();
        assert_eq!(std::fs::read_to_string(d.join(".dep_m")).unwrap(), "1\n");
        assert!(!lc.stale(&d, &manifest));

        std::fs::create_dir_all(roots.built_dir("m", "2", "k", "x86_64").join("module")).unwrap();
        assert_eq!(lc.newest_built("m", "k", "x86_64").as_deref(), Some("2"));
        assert!(lc.stale(&d, &manifest), "m/2 is built now");

        let forced = Lifecycle::new(&ctx, roots, Options { force: true, ..Default::default() });
        forced.record_dependencies(&d, &manifest).unwrap();
        assert_eq!(std::fs::read_to_string(d.join(".dep_m")).unwrap(), "1\n", "--force records nothing");
    }
}
