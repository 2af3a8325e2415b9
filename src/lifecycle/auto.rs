//! What the kernel's hooks run: `autoinstall` (and `kernel_postinst`) builds and installs, for
//! one kernel, the newest version of every AUTOINSTALL module, BUILD_DEPENDS first;
//! `kernel_prerm` unbuilds every module built for it. Both as dkms 3.2 does them: one module's
//! failure does not stop the others, and what each came to is said at the end.

use std::collections::{BTreeMap, BTreeSet};

use super::build::values;
use super::{add, KernelTarget, Lifecycle, LifecycleError, Manifest, ModuleVersion};
use crate::diagnose::code::SKIPPED;
use crate::diagnose::Diagnose;
use crate::install::{Depmod, HostDepmod};

/// Deletes the empty directories under `dir` (and `dir` itself when it ends up empty), as
/// dkms's `find DIR -type d -empty -delete`.
fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// What `autoinstall` did for one kernel.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Autoinstalled {
    pub kernel: String,
    /// `<conf_dir>/no-autoinstall` exists: nothing was done.
    pub disabled: bool,
    /// Installed already (dkms counts them as installed).
    pub already: Vec<ModuleVersion>,
    /// Installed now.
    pub installed: Vec<ModuleVersion>,
    /// Excluded for this kernel by BUILD_EXCLUSIVE (not a failure, as in dkms).
    pub skipped: Vec<ModuleVersion>,
    pub failed: Vec<AutoResult>,
    /// Never tried: these BUILD_DEPENDS were not installed.
    pub waiting: Vec<Waiting>,
}

impl Autoinstalled {
    /// Every module that should be installed is.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.waiting.is_empty()
    }

    /// ckms's account: one line for the kernel, then one per module.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        let each = |l: &[ModuleVersion], what: &str| l.iter().map(|mv| format!("  {mv}: {what}")).collect::<Vec<_>>();
        lines.extend(each(&self.already, "already installed"));
        lines.extend(each(&self.installed, "installed"));
        lines.extend(each(&self.skipped, "skipped (BUILD_EXCLUSIVE)"));
        lines.extend(self.failed.iter().map(|f| format!("  {}: {}", f.module, f.message)));
        lines.extend(self.waiting.iter().map(|w| format!("  {}: waits for {}", w.module, w.depends.join(" "))));
        let failed = self.failed.len() + self.waiting.len();
        format!("Autoinstall on {}: {} module(s), {failed} failed\n{}", self.kernel, lines.len(), lines.join("\n"))
            .trim_end()
            .to_string()
    }
}

/// One module's failure in `autoinstall`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutoResult {
    pub module: ModuleVersion,
    pub code: i32,
    pub message: String,
}

/// A module `autoinstall` did not try: its BUILD_DEPENDS were not installed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Waiting {
    pub module: ModuleVersion,
    pub depends: Vec<String>,
}

/// A module to autoinstall: its AUTOINSTALL as written (None: computed by the conf) and the
/// BUILD_DEPENDS still to be installed before it.
struct Candidate {
    mv: ModuleVersion,
    declared: Option<bool>,
    depends: Vec<String>,
}

impl Lifecycle<'_> {
    /// The newest version of each module that is not broken; with `kernel`, a broken entry
    /// is said as dkms 3.2's autoinstall says it.
    fn newest(&self, kernel: Option<&str>) -> Vec<ModuleVersion> {
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for mv in self.all() {
            if self.check_not_broken(&mv).is_err() {
                let line = kernel.and_then(|k| self.ctx.dialect().said("autoinstall_broken", values(&mv, k, "")));
                if let Some(line) = line {
                    self.report().notice(line);
                }
                continue;
            }
            newest.insert(mv.module, mv.version); // `all` is sorted oldest first
        }
        newest.into_iter().map(|(module, version)| ModuleVersion { module, version }).collect()
    }

    /// The modules `autoinstall` installs for a kernel: the newest version of each whose
    /// dkms.conf does not say AUTOINSTALL="no" (one that computes it counts).
    pub fn autoinstall_modules(&self) -> Vec<ModuleVersion> {
        self.newest(None)
            .into_iter()
            .filter(|mv| {
                let text = std::fs::read_to_string(self.source_dir(mv).join("dkms.conf")).unwrap_or_default();
                add::autoinstall_setting(&text) != Some(false)
            })
            .collect()
    }

    /// `autoinstall -k K`, dkms 3.2's way: what is installed counts as done; the rest is built
    /// and installed in rounds, each module once its BUILD_DEPENDS are installed.
    pub async fn autoinstall(&self, target: &KernelTarget) -> Result<Autoinstalled, LifecycleError> {
        let mut done = Autoinstalled { kernel: target.release.clone(), ..Default::default() };
        if self.ctx.config.conf_dir().join("no-autoinstall").exists() {
            self.say("autoinstall_disabled", serde_json::Value::Null);
            done.disabled = true;
            return Ok(done);
        }
        let arch = self.arch(target)?;
        let mut queue = Vec::new();
        for mv in self.newest(Some(&target.release)) {
            if self.installed_version(&mv.module, &target.release, &arch).as_deref() == Some(mv.version.as_str()) {
                done.already.push(mv);
                continue;
            }
            let conf = self.source_dir(&mv).join("dkms.conf");
            let Ok(text) = std::fs::read_to_string(&conf) else {
                let e = LifecycleError::NoConf(conf);
                done.failed.push(AutoResult { module: mv, code: e.exit_code(), message: e.to_string() });
                continue;
            };
            let declared = add::autoinstall_setting(&text);
            if declared != Some(false) {
                queue.push(Candidate { mv, declared, depends: add::build_depends(&text) });
            }
        }
        if queue.is_empty() {
            return Ok(done);
        }
        let mut attempted = false;
        loop {
            let finished: BTreeSet<String> =
                done.already.iter().chain(&done.installed).chain(&done.skipped).map(|mv| mv.module.clone()).collect();
            let (mut progress, mut next) = (false, Vec::new());
            for mut c in queue {
                c.depends.retain(|d| !finished.contains(d));
                if !c.depends.is_empty() {
                    next.push(c);
                    continue;
                }
                let built = self.roots.built_dir(&c.mv.module, &c.mv.version, &target.release, &arch);
                if !built.join("module").is_dir() {
                    self.prepare_kernel(target).await?;
                }
                let mut said = values(&c.mv, &target.release, &arch);
                said["first"] = (!attempted).into();
                self.say("autoinstall_module", said);
                attempted = true;
                match self.autoinstall_one(&c.mv, target, c.declared).await {
                    Ok(true) => {
                        done.installed.push(c.mv);
                        progress = true;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let dialect = self.ctx.dialect();
                        self.report().notice(dialect.error(e.dkms().as_ref(), &e.to_string(), e.hint().as_deref()));
                        if e.exit_code() == SKIPPED {
                            done.skipped.push(c.mv);
                            progress = true;
                        } else {
                            done.failed.push(AutoResult { module: c.mv, code: e.exit_code(), message: e.to_string() });
                        }
                    }
                }
            }
            queue = next;
            if !progress {
                break;
            }
        }
        done.waiting = queue.into_iter().map(|c| Waiting { module: c.mv, depends: c.depends }).collect();
        let names = |l: &[ModuleVersion]| l.iter().map(|mv| mv.module.clone()).collect::<Vec<_>>();
        let installed = [names(&done.already), names(&done.installed)].concat();
        let failed: Vec<String> = done.failed.iter().map(|f| format!("{}({})", f.module.module, f.code)).collect();
        self.say(
            "autoinstall_summary",
            serde_json::json!({
                "kernel": target.release,
                "attempted": attempted,
                "installed": installed,
                "skipped": names(&done.skipped),
                "failed": failed,
                "waiting": done.waiting,
            }),
        );
        Ok(done)
    }

    /// Installs one module for autoinstall; false when its conf (evaluated) does not ask for it.
    async fn autoinstall_one(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        declared: Option<bool>,
    ) -> Result<bool, LifecycleError> {
        if declared.is_none() {
            // AUTOINSTALL is computed by the conf: build, then ask the build record.
            self.build(mv, target).await?;
            let arch = self.arch(target)?;
            let dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
            if !Manifest::read(&dir)?.autoinstall {
                return Ok(false);
            }
        }
        self.install(mv, target).await?;
        Ok(true)
    }

    /// `kernel_prerm -k K`: unbuilds every module built for K, saying each as dkms does, and
    /// runs depmod once at the end. Returns the modules that failed. `preinst` (dkms's
    /// kernel_preinst, before a kernel is upgraded): the AUTOINSTALL modules only, which the
    /// kernel's postinst builds again, and the kernel's empty directories go too.
    pub async fn kernel_prerm(&self, target: &KernelTarget, preinst: bool) -> Result<Vec<AutoResult>, LifecycleError> {
        let arch = self.arch(target)?;
        let quiet_depmod =
            Lifecycle::new(self.ctx, self.roots.clone(), super::Options { depmod: false, ..self.opts.clone() });
        let (mut failed, mut uninstalled) = (Vec::new(), false);
        for mv in self.all() {
            let dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
            if !dir.exists() || (preinst && !Manifest::read(&dir).is_ok_and(|m| m.autoinstall)) {
                continue;
            }
            if let Some(line) = self.ctx.dialect().said("removing", values(&mv, &target.release, &arch)) {
                self.report().notice(line);
            }
            uninstalled |= quiet_depmod.installed_version(&mv.module, &target.release, &arch).as_deref()
                == Some(mv.version.as_str());
            if let Err(e) = quiet_depmod.unbuild(&mv, target).await {
                failed.push(AutoResult { module: mv, code: e.exit_code(), message: e.to_string() });
            }
            if !preinst {
                self.say("removing_end", serde_json::Value::Null);
            }
        }
        if uninstalled && self.opts.depmod {
            HostDepmod.run(&self.roots.install_tree, &target.release).map_err(|stderr| {
                let (module, kernel) = ("every module".to_string(), target.release.clone());
                LifecycleError::Install(crate::install::InstallError::DepmodAfterUninstall { module, kernel, stderr })
            })?;
            self.say("depmod", serde_json::Value::Null);
        }
        if preinst {
            remove_empty_dirs(&self.roots.install_tree.join(&target.release));
        }
        Ok(failed)
    }

    /// dkms's prepare_kernel_and_signing: the kernel is known (else dkms's "headers" error) and
    /// its signing lines are said, once per kernel.
    pub(super) async fn prepare_kernel(&self, target: &KernelTarget) -> Result<(), LifecycleError> {
        if self.prepared.lock().is_ok_and(|p| p.as_deref() == Some(target.release.as_str())) {
            return Ok(());
        }
        let (_, index, kernel) = self.ctx.find_kernel(&target.release, self.opts.profile.as_deref()).await?;
        let kconfig = self.kernel_config(&index, &kernel).await?;
        let (_, prologue) = self.signing(&target.release, kconfig.as_deref())?;
        self.say_signing(&target.release, prologue);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, context};
    use super::super::Options;
    use super::*;

    #[tokio::test]
    async fn kernel_preinst_unbuilds_only_the_autoinstall_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let roots = built(root, b"\x7fELF", false); // m/1 for kernel k, AUTOINSTALL not set
        std::fs::create_dir_all(roots.module_dir("m", "1").join("source")).unwrap();
        let ctx = context(root);
        let lc = Lifecycle::new(&ctx, roots.clone(), Options { depmod: false, ..Default::default() });
        let k = KernelTarget { release: "k".into(), arch: Some("x86_64".into()) };
        let m = roots.built_dir("m", "1", "k", "x86_64");
        let empty = roots.install_tree.join("k/updates/dkms");
        std::fs::create_dir_all(&empty).unwrap();

        assert!(lc.kernel_prerm(&k, true).await.unwrap().is_empty());
        assert!(m.is_dir(), "kernel_preinst leaves a module without AUTOINSTALL");
        assert!(!roots.install_tree.join("k").exists(), "its empty directories go");

        let mut manifest = Manifest::read(&m).unwrap();
        manifest.autoinstall = true;
        manifest.write(&m).unwrap();
        assert!(lc.kernel_prerm(&k, true).await.unwrap().is_empty());
        assert!(!m.exists(), "kernel_preinst unbuilds an AUTOINSTALL module");
    }
}
