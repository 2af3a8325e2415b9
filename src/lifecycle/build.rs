//! `build`: the pair realised in its builder image ([`crate::pair::realise`]), then committed
//! into `<dkms_tree>/<m>/<v>/<kver>/<arch>/` (a failed build's make.log where dkms leaves it).

use std::path::{Path, PathBuf};

use super::{KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::conf::{BuildPlan, KernelFacts};
use crate::engine::LogSink;
use crate::pair::inputs;
use crate::pair::realise::{self, Depends, Key, Limits, Realise, Realised, SignWith, Staged, UNSIGNED};
use crate::pair::PairError;
use crate::sign::{self, KeyPaths, Signer};

/// What `build` did for one (module, kernel).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum BuildOutcome {
    Built {
        module: ModuleVersion,
        kernel: String,
        arch: String,
        modules: Vec<String>,
        seconds: f64,
    },
    /// Built before; not rebuilt without --force.
    AlreadyBuilt {
        module: ModuleVersion,
        kernel: String,
        arch: String,
    },
}

/// What dkms's "Sign command:" line names: ckms signs in-process, byte for byte as the
/// kernel's scripts/sign-file (docs/signing.md); there is no command to name.
const SIGN_COMMAND: &str = "ckms (in-process, as scripts/sign-file)";

/// The values dkms's lines about one (module, kernel) name.
pub(super) fn values(mv: &ModuleVersion, kernel: &str, arch: &str) -> serde_json::Value {
    serde_json::json!({ "module": mv.module, "version": mv.version, "kernel": kernel, "arch": arch })
}

impl Lifecycle<'_> {
    /// Builds `mv` for `target` (adding it first if needed; BUILD_DEPENDS first).
    pub async fn build(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<BuildOutcome, LifecycleError> {
        self.build_with_deps(mv, target, &mut Vec::new()).await
    }

    async fn build_with_deps(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        chain: &mut Vec<String>,
    ) -> Result<BuildOutcome, LifecycleError> {
        self.ensure_added(mv)?;
        let arch = self.arch(target)?;
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
        if built_dir.join("module").is_dir() && !self.opts.force {
            self.say("already_built", values(mv, &target.release, &arch));
            return Ok(BuildOutcome::AlreadyBuilt { module: mv.clone(), kernel: target.release.clone(), arch });
        }
        if self.is_binaries_only(mv) {
            return Err(self.binaries_only_error(mv));
        }
        let started = std::time::Instant::now();
        // Independent steps overlap: connecting to the engine, reading the index, and then
        // checking the image while the kernel's config is read from its headers package.
        let (conn, found) =
            tokio::join!(self.engine(), self.ctx.find_kernel(&target.release, self.opts.profile.as_deref()));
        let (conn, (profile, index, kernel)) = (conn?, found?);
        let extra = self.extra_packages(mv, profile, &index);
        let plan = self.ctx.plan_image(profile, &index, &kernel, &extra.packages)?;
        let siblings = self.siblings(mv, &target.release, &arch);
        self.report_extra(mv, &extra, &plan, &siblings);
        let (image, kconfig) = tokio::join!(
            self.ctx.image_of(conn.engine.as_ref(), profile, &plan, false),
            crate::kernel::config(&self.ctx.cache, &index, &kernel, self.report())
        );
        let (image, kconfig) = (image?, kconfig?);
        // The key is loaded before the build: a build that could not be signed is not started.
        let signing = self.signing(kconfig.as_deref())?;
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        let work = tempfile::Builder::new()
            .prefix(".ckms-build-")
            .tempdir_in(&module_dir)
            .map_err(LifecycleError::io(&module_dir))?;
        let overrides = inputs::overrides(&self.ctx.config.conf_dir(), mv, &target.release, &arch);
        let source = self.source_dir(mv);
        let pair = Realise {
            mv,
            source: &source,
            siblings: &siblings,
            overrides: &overrides,
            recipe: self.ctx.catalog.recipe("builder")?,
            image: &image.reference,
            profile,
            kernel: KernelFacts { release: target.release.clone(), arch: arch.clone(), config: kconfig },
            jobs: self.opts.jobs,
            limits: Limits::of(&self.ctx.config),
            follow: self.opts.verbose.then(|| {
                let report = self.ctx.report.clone();
                LogSink(std::sync::Arc::new(move |b: &[u8]| report.output(String::from_utf8_lossy(b).into_owned())))
            }),
            signing: signing.as_ref().map(|(hash, key)| SignWith { hash: hash.clone(), key: key.as_key() }),
            report: self.report(),
        };
        let depends = |plan: &BuildPlan| self.depends(mv, &target.release, &arch, plan, chain);
        let staged = match realise::realise(conn.engine.as_ref(), &pair, &depends, work.path()).await? {
            Realised::Built(staged) => {
                self.said_built(mv, &staged, signing.as_ref().map(|(_, key)| key.paths()));
                staged
            }
            Realised::NeedsDependencies(deps) => {
                // BUILD_DEPENDS first, then this module again (its conf is evaluated anew).
                drop(work);
                self.build_dependencies(mv, &deps, target, chain).await?;
                return Box::pin(self.build_with_deps(mv, target, chain)).await;
            }
            Realised::Skipped { reason } => {
                let (module, version, kernel) = (mv.module.clone(), mv.version.clone(), target.release.clone());
                return Err(LifecycleError::Skipped { module, version, kernel, reason });
            }
            Realised::Refused(e) => return Err(e.into()),
            Realised::Failed(failed) => {
                // make.log goes where dkms leaves it: <m>/<v>/build/make.log.
                let build_dir = module_dir.join("build");
                std::fs::create_dir_all(&build_dir).map_err(LifecycleError::io(&build_dir))?;
                let log = build_dir.join("make.log");
                std::fs::write(&log, &failed.log).map_err(LifecycleError::io(&log))?;
                return Err(failed.into_error(mv, &target.release, &arch, log).into());
            }
        };
        // A dkms tree keeps only what installs.
        let unsigned = staged.dir.join(UNSIGNED);
        std::fs::remove_dir_all(&unsigned).map_err(LifecycleError::io(&unsigned))?;
        let _lock = self.lock()?;
        commit_dir(&staged.dir, &built_dir).map_err(LifecycleError::io(&built_dir))?;
        // dkms cleans the build area after a good build; a failed one's make.log goes too.
        let _ = std::fs::remove_dir_all(module_dir.join("build"));
        let names: Vec<String> = staged.manifest.modules.iter().map(|m| m.file.display().to_string()).collect();
        self.report().detail(format!("Built {mv} for kernel {} ({arch}): {}", target.release, names.join(" ")));
        Ok(BuildOutcome::Built {
            module: mv.clone(),
            kernel: target.release.clone(),
            arch,
            modules: names,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The hash and key to sign this kernel's modules with: `None` when the kernel has no
    /// CONFIG_MODULE_SIG_HASH or signing is turned off, each said in one line. An existing
    /// pair is loaded (and checked) now; ckms's own, when missing, is made after the build.
    fn signing(&self, kconfig: Option<&str>) -> Result<Option<(String, TreeKey)>, LifecycleError> {
        let Some(hash) = kconfig.and_then(sign::kernel_hash) else {
            return Ok(None);
        };
        if !self.ctx.config.sign_enabled() {
            self.report().detail("Module signing is turned off ([sign] enabled = false): modules won't be signed");
            return Ok(None);
        }
        let paths = self.ctx.config.key_locations(&self.roots.dkms_tree).resolve(None, None);
        let key = if sign::needs_generating(&paths) {
            TreeKey::Made(paths)
        } else {
            TreeKey::Loaded(Box::new(Signer::load(&paths, sign::pin().as_deref())?))
        };
        let shown = key.paths();
        self.report().detail(format!(
            "Modules will be signed ({hash}) with the key {} and certificate {}",
            shown.key.display(),
            shown.cert.display()
        ));
        Ok(Some((hash, key)))
    }

    /// dkms's lines for a build that made its modules: how they were signed, "done", and each
    /// module signed (named where dkms's build directory has it).
    fn said_built(&self, mv: &ModuleVersion, staged: &Staged, keys: Option<&KeyPaths>) {
        let build_dir = self.roots.module_dir(&mv.module, &mv.version).join("build");
        let sign = keys.map(|k| serde_json::json!({ "command": SIGN_COMMAND, "key": k.key_shown(), "cert": k.cert }));
        self.say("build_begin", serde_json::json!({ "sign": sign, "make": staged.make }));
        let signed: Vec<PathBuf> = match staged.manifest.signed_by {
            Some(_) => staged.manifest.modules.iter().map(|m| build_dir.join(format!("{}.ko", m.built_name))).collect(),
            None => Vec::new(),
        };
        self.say("build_done", serde_json::json!({ "signed": signed }));
    }

    /// The tree's answer on a plan's BUILD_DEPENDS: each must be in the tree (newest version)
    /// and built for the kernel, else built first; a cycle or a missing one is refused.
    fn depends(&self, mv: &ModuleVersion, kernel: &str, arch: &str, plan: &BuildPlan, chain: &[String]) -> Depends {
        let mut unbuilt = Vec::new();
        for dep in &plan.build_depends {
            let (module, version, dependency) = (mv.module.clone(), mv.version.clone(), dep.clone());
            if chain.contains(dep) || *dep == mv.module {
                return Depends::Refused(PairError::DependencyCycle { module, version, dependency });
            }
            let Some(dep_version) = self.versions(dep).pop() else {
                return Depends::Refused(PairError::MissingDepends { module, version, dependency });
            };
            if !self.roots.built_dir(dep, &dep_version, kernel, arch).join("module").is_dir() {
                unbuilt.push(dep.clone());
            }
        }
        if unbuilt.is_empty() {
            Depends::Met
        } else {
            Depends::Unbuilt(unbuilt)
        }
    }

    /// Builds the BUILD_DEPENDS modules `deps` (newest version in the tree) for `target`.
    async fn build_dependencies(
        &self,
        mv: &ModuleVersion,
        deps: &[String],
        target: &KernelTarget,
        chain: &mut Vec<String>,
    ) -> Result<(), LifecycleError> {
        chain.push(mv.module.clone());
        for dep in deps {
            let Some(version) = self.versions(dep).pop() else { continue };
            let dep_mv = ModuleVersion { module: dep.clone(), version };
            Box::pin(self.build_with_deps(&dep_mv, target, chain)).await?;
        }
        chain.pop();
        Ok(())
    }

    /// The kernel's arch: given with `-k kver/arch` or `-a`, else the profile's machine.
    pub(super) fn arch(&self, target: &KernelTarget) -> Result<String, LifecycleError> {
        if let Some(a) = &target.arch {
            return Ok(a.clone());
        }
        let profiles = self.ctx.profiles(self.opts.profile.as_deref())?;
        let machine =
            profiles.iter().find(|p| p.may_offer(&target.release)).or(profiles.first()).map(|p| p.machine.clone());
        Ok(machine.unwrap_or_else(|| std::env::consts::ARCH.to_string()))
    }
}

/// The tree's signing key: loaded, or ckms's own to be made on first use.
enum TreeKey {
    Loaded(Box<Signer>),
    Made(KeyPaths),
}

impl TreeKey {
    fn as_key(&self) -> Key<'_> {
        match self {
            TreeKey::Loaded(signer) => Key::Loaded(signer),
            TreeKey::Made(paths) => Key::Made(paths),
        }
    }

    fn paths(&self) -> &KeyPaths {
        match self {
            TreeKey::Loaded(signer) => &signer.paths,
            TreeKey::Made(paths) => paths,
        }
    }
}

/// errno of a rename across file systems.
const EXDEV: i32 = 18;

/// Replaces `to` by the complete directory `from` (copied when on another file system): the old one is moved
/// aside first and removed after, so `to` is always either the old or the new result.
pub(super) fn commit_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let old = parent.join(format!(".ckms-old-{}", std::process::id()));
    let had_old = to.exists();
    if had_old {
        std::fs::rename(to, &old)?;
    }
    if let Err(e) = std::fs::rename(from, to) {
        // Another file system (a separate /var): copied beside `to` first, then renamed.
        if e.raw_os_error() != Some(EXDEV) {
            return Err(e);
        }
        super::add::copy_tree(from, to)?;
    }
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    if had_old {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}
