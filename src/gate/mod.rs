//! The host gate: when a kernel is installed, every AUTOINSTALL module is made ready for it
//! (from a `[prebuilt]` cache, or built here; with `[gate] verify`, proven to load in a VM)
//! before it can become the default, and `[gate] on_failure` decides what a kernel that is
//! not ready gets (docs/gate.md). The kernel's hooks call [`Gate::prepare`] from preinst.d
//! (nothing installed yet, so a refusal leaves the system as it was) and [`Gate::installed`]
//! from postinst.d, after autoinstall.
//!
//! Each kernel's last readiness is kept in `<state_dir>/<kver>.json`; `gate status` reads it
//! against the tree as it is now.

pub mod grub;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{GateConfig, OnFailure};
use crate::diagnose::{code, Diagnose};
use crate::farm::ready::{KernelReadiness, ModuleReadiness, State};
use crate::lifecycle::{Autoinstalled, KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::prebuilt;
use crate::verify::modinfo::canonical;
use crate::verify::Subject;

#[derive(Debug, Error)]
pub enum GateError {
    #[error("kernel {kernel} is not ready: {modules}")]
    NotReady { kernel: String, modules: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Lifecycle(#[from] Box<LifecycleError>),
}

impl From<LifecycleError> for GateError {
    fn from(e: LifecycleError) -> GateError {
        GateError::Lifecycle(Box::new(e))
    }
}

impl Diagnose for GateError {
    fn exit_code(&self) -> i32 {
        match self {
            GateError::NotReady { .. } => code::HOOK_FAILED,
            GateError::Io { .. } => code::NO_ACCESS,
            GateError::Lifecycle(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            GateError::NotReady { kernel, .. } => Some(format!(
                "[gate] on_failure = \"refuse\" (/etc/ckms/config.toml): the kernel was not installed and the \
                 system is as it was. Fix or remove the modules named (ckms status; their make.log), or publish \
                 them for {kernel} from the farm; `ckms gate status` shows each kernel's readiness"
            )),
            GateError::Io { .. } => Some("run as root (the kernel's hooks do)".into()),
            GateError::Lifecycle(e) => e.hint(),
        }
    }
}

/// What the hook does about a kernel, by policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Ready: nothing to say.
    Ready,
    /// Not ready, and the policy lets the kernel in: these lines are warnings.
    Warn(Vec<String>),
}

/// The host's gate over its dkms tree.
pub struct Gate<'a> {
    lc: &'a Lifecycle<'a>,
    cfg: &'a GateConfig,
}

impl<'a> Gate<'a> {
    pub fn new(lc: &'a Lifecycle<'a>, cfg: &'a GateConfig) -> Gate<'a> {
        Gate { lc, cfg }
    }

    /// preinst.d: makes each AUTOINSTALL module ready for `target` without installing
    /// anything (built into the tree, or found in a cache), proves the built ones load when
    /// `[gate] verify` says so, and keeps the result.
    pub async fn prepare(&self, target: &KernelTarget) -> Result<KernelReadiness, GateError> {
        let mut modules = Vec::new();
        for mv in self.lc.autoinstall_modules() {
            modules.push(self.make_ready(&mv, target).await);
        }
        let mut k = readiness(&target.release, modules);
        self.prove(target, &mut k).await?;
        self.save(&k)?;
        Ok(k)
    }

    /// postinst.d, after autoinstall: what `done` did, with the proofs kept by [`prepare`];
    /// modules installed without a proof are proven now when `[gate] verify` says so.
    pub async fn installed(&self, target: &KernelTarget, done: &Autoinstalled) -> Result<KernelReadiness, GateError> {
        let mut record = self.load(&target.release);
        let mut note = |mv: &ModuleVersion, state: State, why: String| {
            let m = ModuleReadiness { module: mv.module.clone(), version: mv.version.clone(), state, why: Some(why) };
            record.modules.retain(|r| r.module != m.module);
            record.modules.push(m);
        };
        for f in &done.failed {
            note(&f.module, State::Failed, self.with_first_error(&f.module, &f.message));
        }
        for w in &done.waiting {
            note(&w.module, State::Failed, format!("waits for {}", w.depends.join(" ")));
        }
        for mv in &done.skipped {
            note(mv, State::Skipped, "BUILD_EXCLUSIVE excludes this kernel".into());
        }
        let mut k = self.live(&target.release, Some(&record));
        self.prove(target, &mut k).await?;
        self.save(&k)?;
        Ok(k)
    }

    /// Each installed kernel (a directory of the install tree with the kernel's modules.order),
    /// newest first, with its readiness now.
    pub fn status(&self) -> Vec<KernelReadiness> {
        installed_kernels(&self.lc.roots.install_tree)
            .into_iter()
            .map(|kernel| {
                let record = self.load(&kernel);
                self.live(&kernel, Some(&record))
            })
            .collect()
    }

    /// What the policy makes of `k`; `Err` is a refusal.
    pub fn decide(&self, k: &KernelReadiness) -> Result<Decision, GateError> {
        if k.ready {
            return Ok(Decision::Ready);
        }
        let blocking: Vec<String> = k
            .blocking()
            .map(|m| {
                format!(
                    "{}/{} ({}{})",
                    m.module,
                    m.version,
                    m.state,
                    m.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
                )
            })
            .collect();
        match self.cfg.on_failure() {
            OnFailure::Refuse => Err(GateError::NotReady { kernel: k.kernel.clone(), modules: blocking.join("; ") }),
            OnFailure::KeepDefault | OnFailure::Warn => {
                let mut lines = vec![format!("kernel {} is not ready for this host's modules:", k.kernel)];
                lines.extend(blocking.iter().map(|b| format!("  {b}")));
                Ok(Decision::Warn(lines))
            }
        }
    }

    /// `ckms ready`: whether the configured caches hold every AUTOINSTALL module for
    /// `target`, signed and proven to load, without building or fetching a module.
    pub async fn from_caches(&self, target: &KernelTarget) -> KernelReadiness {
        let mut modules = Vec::new();
        for mv in self.lc.autoinstall_modules() {
            let (state, why) = match prebuilt::listed(self.lc.ctx, &self.lc.want(&mv, &target.release)).await {
                Ok(Some(l)) if l.entry.loaded == Some(true) => (State::Ready, None),
                Ok(Some(l)) if l.entry.loaded == Some(false) => {
                    (State::NotLoaded, Some(format!("did not load in the farm's VM ({})", l.url)))
                }
                Ok(Some(l)) => (State::Unproven, Some(format!("in {} (key {}), not proven to load", l.url, l.key))),
                Ok(None) => (State::Missing, Some("no [prebuilt] cache has it".into())),
                Err(e) => (State::Missing, Some(e.to_string())),
            };
            modules.push(ModuleReadiness { module: mv.module, version: mv.version, state, why });
        }
        readiness(&target.release, modules)
    }

    /// The newest installed kernel that is ready, if any.
    pub fn newest_ready(&self) -> Option<String> {
        self.status().into_iter().find(|k| k.ready).map(|k| k.kernel)
    }

    /// One module for preinst: in the tree already, in a cache, or built now.
    async fn make_ready(&self, mv: &ModuleVersion, target: &KernelTarget) -> ModuleReadiness {
        let (state, why) = match self.built(mv, target) {
            true => (self.built_state(), None),
            false => self.fetch_or_build(mv, target).await,
        };
        ModuleReadiness { module: mv.module.clone(), version: mv.version.clone(), state, why }
    }

    async fn fetch_or_build(&self, mv: &ModuleVersion, target: &KernelTarget) -> (State, Option<String>) {
        if !self.lc.ctx.config.prebuilt.urls.is_empty() {
            match prebuilt::listed(self.lc.ctx, &self.lc.want(mv, &target.release)).await {
                // The farm's proof counts as this host's: the pair is the same by its key.
                Ok(Some(l)) if !self.cfg.verify() || l.entry.loaded == Some(true) => return (State::Ready, None),
                Ok(Some(l)) => {
                    return (State::Unproven, Some(format!("{} (key {}) is not proven to load", l.url, l.key)))
                }
                Ok(None) if self.cfg.prebuilt_only() => {
                    return (State::Missing, Some("no [prebuilt] cache has it, and [gate] prebuilt_only".into()))
                }
                Err(e) if self.cfg.prebuilt_only() => return (State::Missing, Some(e.to_string())),
                Ok(None) => {}
                Err(e) => self.lc.ctx.reporter().warn(format!("{mv} for {}: {e}", target.release)),
            }
        } else if self.cfg.prebuilt_only() {
            return (State::Missing, Some("[gate] prebuilt_only, and no [prebuilt] urls".into()));
        }
        match self.lc.build(mv, target).await {
            Ok(_) => (self.built_state(), None),
            Err(e) if e.exit_code() == code::SKIPPED => {
                (State::Skipped, Some("BUILD_EXCLUSIVE excludes this kernel".into()))
            }
            Err(e) => (State::Failed, Some(self.with_first_error(mv, &e.to_string()))),
        }
    }

    /// `message`, and the first compiler or linker error of the make.log dkms leaves in
    /// `<tree>/<m>/<v>/build/` when the build failed.
    fn with_first_error(&self, mv: &ModuleVersion, message: &str) -> String {
        let log = self.lc.roots.module_dir(&mv.module, &mv.version).join("build/make.log");
        let first = std::fs::File::open(&log)
            .and_then(|f| Ok((f.metadata()?.len(), f)))
            .ok()
            .and_then(|(size, f)| crate::makelog::first_error_in(f, size));
        match first {
            Some(e) => format!("{message}: {e}"),
            None => message.to_string(),
        }
    }

    /// A module built here: ready, or with `[gate] verify` ready once [`Gate::prove`] loaded it.
    fn built_state(&self) -> State {
        if self.cfg.verify() {
            State::Unproven
        } else {
            State::Ready
        }
    }

    fn built(&self, mv: &ModuleVersion, target: &KernelTarget) -> bool {
        let arch = self.lc.arch(target).unwrap_or_default();
        self.lc.roots.built_dir(&mv.module, &mv.version, &target.release, &arch).join("module").is_dir()
    }

    /// The readiness of `kernel` from the tree as it is now and what `record` says of the rest.
    fn live(&self, kernel: &str, record: Option<&KernelReadiness>) -> KernelReadiness {
        let target = KernelTarget { release: kernel.to_string(), arch: None };
        let arch = self.lc.arch(&target).unwrap_or_default();
        let modules = self
            .lc
            .autoinstall_modules()
            .into_iter()
            .map(|mv| {
                let before =
                    record.and_then(|r| r.modules.iter().find(|m| m.module == mv.module && m.version == mv.version));
                let installed = self.lc.installed_version(&mv.module, kernel, &arch).as_deref() == Some(&mv.version);
                let (state, why) = match before {
                    _ if installed && !self.cfg.verify() => (State::Ready, None),
                    Some(b) if installed && matches!(b.state, State::Ready | State::NotLoaded) => {
                        (b.state, b.why.clone())
                    }
                    _ if installed => (State::Unproven, Some("not proven to load ([gate] verify)".into())),
                    Some(b) if b.state != State::Ready && b.state != State::Unproven => (b.state, b.why.clone()),
                    _ => (State::Missing, Some(format!("not installed for {kernel}"))),
                };
                ModuleReadiness { module: mv.module, version: mv.version, state, why }
            })
            .collect();
        readiness(kernel, modules)
    }

    /// With `[gate] verify`: boots the kernel once and loads every built module that is not
    /// proven yet; each gets its outcome.
    async fn prove(&self, target: &KernelTarget, k: &mut KernelReadiness) -> Result<(), GateError> {
        if !self.cfg.verify() {
            return Ok(());
        }
        let arch = self.lc.arch(target).unwrap_or_default();
        let mut files: Vec<(usize, PathBuf)> = Vec::new();
        for (i, m) in k.modules.iter().enumerate().filter(|(_, m)| m.state == State::Unproven) {
            let dir = self.lc.roots.built_dir(&m.module, &m.version, &target.release, &arch).join("module");
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            files.extend(entries.flatten().map(|e| (i, e.path())));
        }
        if files.is_empty() {
            return Ok(());
        }
        let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
        let v = self.lc.verify_subject(&target.release, Subject::Files(&paths)).await?;
        for (i, m) in k.modules.iter_mut().enumerate() {
            let names: Vec<String> = files.iter().filter(|(j, _)| *j == i).map(|(_, p)| module_name(p)).collect();
            if names.is_empty() {
                continue;
            }
            let mine: Vec<_> = v.modules.iter().filter(|l| names.contains(&l.name)).collect();
            let failed: Vec<String> = mine
                .iter()
                .filter(|l| !l.ok())
                .map(|l| format!("{}: {}", l.name, l.reason().unwrap_or_default()))
                .collect();
            (m.state, m.why) = match (mine.is_empty(), failed.is_empty()) {
                (false, true) => (State::Ready, None),
                (true, _) => (State::NotLoaded, Some("the VM did not report it".into())),
                (false, false) => (State::NotLoaded, Some(failed.join("; "))),
            };
        }
        k.ready = k.modules.iter().all(|m| m.state.ok());
        Ok(())
    }

    fn record_path(&self, kernel: &str) -> PathBuf {
        self.cfg.state_dir().join(format!("{kernel}.json"))
    }

    /// The kernel's kept readiness (empty when there is none, or it does not read).
    fn load(&self, kernel: &str) -> KernelReadiness {
        std::fs::read(self.record_path(kernel))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|k: &KernelReadiness| k.kernel == kernel)
            .unwrap_or_else(|| readiness(kernel, Vec::new()))
    }

    fn save(&self, k: &KernelReadiness) -> Result<(), GateError> {
        let path = self.record_path(&k.kernel);
        let io = |source| GateError::Io { path: path.clone(), source };
        let dir = self.cfg.state_dir();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        std::fs::write(tmp.path(), serde_json::to_vec_pretty(k).unwrap_or_default()).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

fn readiness(kernel: &str, modules: Vec<ModuleReadiness>) -> KernelReadiness {
    KernelReadiness { kernel: kernel.to_string(), ready: modules.iter().all(|m| m.state.ok()), modules }
}

/// `hello.ko.xz` → `hello`, as the kernel names it.
fn module_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    canonical(name.split(".ko").next().unwrap_or(&name))
}

/// The kernels installed under `install_tree` (those with a modules.order, which every
/// Debian linux-image ships), newest first.
pub fn installed_kernels(install_tree: &Path) -> Vec<String> {
    let mut kernels: Vec<String> = std::fs::read_dir(install_tree)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("modules.order").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    kernels.sort_by(|a, b| crate::repo::version::compare(b, a));
    kernels
}

#[cfg(test)]
mod tests;
