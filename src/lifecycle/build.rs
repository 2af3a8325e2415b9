//! `build`: the pair realised in its builder image ([`crate::pair::realise`]), then committed
//! into `<dkms_tree>/<m>/<v>/<kver>/<arch>/` (a failed build's make.log where dkms leaves it).

use std::path::{Path, PathBuf};

use super::signing::{Signing, TreeKey};
use super::{KernelTarget, Lifecycle, LifecycleError, ModuleVersion};
use crate::conf::{BuildPlan, KernelFacts};
use crate::engine::LogSink;
use crate::error::Usage;
use crate::kernel::Kernel;
use crate::pair::inputs;
use crate::pair::realise::{self, Depends, Limits, Realise, Realised, SignWith, Staged, UNSIGNED};
use crate::pair::PairError;
use crate::repo::Index;

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
        if self.ctx.as_dkms {
            // dkms reads the conf strictly before it builds, from the tree's source link.
            self.check_conf(&self.roots.module_dir(&mv.module, &mv.version).join("source/dkms.conf"), true, true)?;
        }
        let started = std::time::Instant::now();
        // Independent steps overlap: connecting to the engine, reading the index, and then
        // checking the image while the kernel's config is read from its headers package.
        let (conn, found) =
            tokio::join!(self.engine(), self.ctx.find_kernel(&target.release, self.opts.profile.as_deref()));
        let (conn, (profile, index, kernel)) = (conn?, found?);
        if arch != profile.machine {
            // dkms would run make with that ARCH against these headers; ckms builds for the
            // kernel's own architecture, so the tree would file the modules under the wrong one.
            return Err(Usage {
                message: format!(
                    "kernel {} is an {} kernel ({}), not {arch}",
                    kernel.release, profile.machine, profile.name
                ),
                hint: Some(format!("leave out -a/--arch: the kernel's architecture ({}) is used", profile.machine)),
            }
            .into());
        }
        let extra = self.extra_packages(mv, profile, &index);
        let plan = self.ctx.plan_image(profile, &index, &kernel, &extra.packages).await?;
        let siblings = self.siblings(mv, &target.release, &arch);
        self.report_extra(mv, &extra, &plan, &siblings);
        let (image, kconfig) = tokio::join!(
            self.ctx.image_of(conn.engine.as_ref(), profile, &plan, false),
            self.kernel_config(&index, &kernel)
        );
        let (image, kconfig) = (image?, kconfig?);
        // The key is loaded before the build: a build that could not be signed is not started.
        let (signing, prologue) = self.signing(&target.release, kconfig.as_deref())?;
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
            signing: signing.as_ref().map(|s| SignWith { hash: s.hash.clone(), key: s.key.as_key() }),
            report: self.report(),
        };
        // The conf is read and not excluded: dkms says how it signs here, before BUILD_DEPENDS.
        let depends = |plan: &BuildPlan| {
            self.say_signing(&target.release, prologue.clone());
            self.depends(mv, &target.release, &arch, plan, chain)
        };
        let staged = match realise::realise(conn.engine.as_ref(), &pair, &depends, work.path()).await? {
            Realised::Built(staged) => {
                self.said_built(mv, &staged, signing.as_ref());
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
                let dir = self.roots.built_dir(&mv.module, &mv.version, &kernel, &arch);
                return Err(LifecycleError::Skipped { module, version, kernel, reason, dir });
            }
            // dkms names the patch where its copy of the source has it.
            Realised::Refused(PairError::BadPatch { module, version, patch, dotdot, .. }) => {
                let dir = module_dir.join("build/patches");
                return Err(PairError::BadPatch { module, version, patch, dotdot, dir }.into());
            }
            Realised::Refused(e) => return Err(e.into()),
            Realised::Failed(failed) => {
                if let Some(status) = failed.make_status {
                    self.say("build_failing", serde_json::json!({ "make": failed.make, "status": status }));
                }
                // make.log goes where dkms leaves it: <m>/<v>/build/make.log.
                let build_dir = module_dir.join("build");
                std::fs::create_dir_all(&build_dir).map_err(LifecycleError::io(&build_dir))?;
                let log = build_dir.join("make.log");
                let text = self.dkms_make_log(mv, &target.release, &arch, &failed.log);
                std::fs::write(&log, text).map_err(LifecycleError::io(&log))?;
                return Err(failed.into_error(mv, &target.release, &arch, log).into());
            }
        };
        let log = staged.dir.join("log/make.log");
        if let Ok(body) = std::fs::read(&log) {
            let text = self.dkms_make_log(mv, &target.release, &arch, &body);
            std::fs::write(&log, text).map_err(LifecycleError::io(&log))?;
        }
        // A dkms tree keeps only what installs.
        let unsigned = staged.dir.join(UNSIGNED);
        std::fs::remove_dir_all(&unsigned).map_err(LifecycleError::io(&unsigned))?;
        let _lock = self.lock()?;
        commit_dir(&staged.dir, &built_dir).map_err(LifecycleError::io(&built_dir))?;
        self.record_dependencies(&built_dir, &staged.manifest)?;
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

    /// dkms's lines for a build that made its modules: "done", and each module signed (named
    /// where dkms's build directory has it), with a warning for each the program failed on.
    fn said_built(&self, mv: &ModuleVersion, staged: &Staged, signing: Option<&Signing>) {
        let build_dir = self.roots.module_dir(&mv.module, &mv.version).join("build");
        let steps = &staged.steps;
        self.say(
            "build_begin",
            serde_json::json!({ "make": staged.make, "patches": steps.patches, "pre_build": steps.pre_build }),
        );
        let failures = signing.map(|s| s.key.failures()).unwrap_or_default();
        let signed: Vec<PathBuf> = match (signing, &staged.manifest.signed_by) {
            (Some(_), Some(_)) | (Some(Signing { key: TreeKey::External(_), .. }), None) => {
                staged.manifest.modules.iter().map(|m| build_dir.join(format!("{}.ko", m.built_name))).collect()
            }
            _ => Vec::new(),
        };
        self.say("build_done", serde_json::json!({ "signed": signed }));
        for (name, said) in failures {
            let module = build_dir.join(format!("{name}.ko"));
            self.report()
                .warn(self.ctx.dialect().line("sign_failed", serde_json::json!({ "module": module, "said": said })));
        }
    }

    /// The kernel's .config: dkms's --config file when given, else the one in its headers
    /// package.
    pub(super) async fn kernel_config(&self, index: &Index, kernel: &Kernel) -> Result<Option<String>, LifecycleError> {
        match &self.opts.kernel_config {
            Some(file) => Ok(Some(read_kernel_config(file)?)),
            None => Ok(crate::kernel::config(&self.ctx.cache, index, kernel, self.report()).await?),
        }
    }

    /// make.log as the host's dkms release writes it: its first line (the build's own header)
    /// in that release's words.
    fn dkms_make_log(&self, mv: &ModuleVersion, kernel: &str, arch: &str, log: &[u8]) -> Vec<u8> {
        let header = self.ctx.dialect().line("make_log_header", values(mv, kernel, arch));
        let body = log.iter().position(|b| *b == b'\n').map_or(log, |end| &log[end..]);
        [header.as_bytes(), body].concat()
    }

    /// The tree's answer on a plan's BUILD_DEPENDS: each must be in the tree (newest version)
    /// and built for the kernel, else built first; a cycle or a missing one is refused.
    fn depends(&self, mv: &ModuleVersion, kernel: &str, arch: &str, plan: &BuildPlan, chain: &[String]) -> Depends {
        if self.ctx.as_dkms {
            return self.dkms_depends(mv, kernel, arch, plan);
        }
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

    /// dkms's answer on BUILD_DEPENDS: each must be installed for the kernel (any version);
    /// with --force the build goes on without the missing ones, with a warning.
    fn dkms_depends(&self, mv: &ModuleVersion, kernel: &str, arch: &str, plan: &BuildPlan) -> Depends {
        let missing: Vec<String> = plan
            .build_depends
            .iter()
            .filter(|dep| self.installed_version(dep, kernel, arch).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Depends::Met;
        }
        let mut said = values(mv, kernel, arch);
        said["depends"] = missing.clone().into();
        if self.opts.force {
            self.report().warn(self.ctx.dialect().line("depends_forced", said));
            return Depends::Met;
        }
        let (module, version, kernel, arch) = (mv.module.clone(), mv.version.clone(), kernel.into(), arch.into());
        Depends::Refused(PairError::DependsNotInstalled { module, version, kernel, arch, depends: missing })
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
    pub fn arch(&self, target: &KernelTarget) -> Result<String, LifecycleError> {
        if let Some(a) = &target.arch {
            return Ok(a.clone());
        }
        let profiles = self.ctx.profiles(self.opts.profile.as_deref())?;
        let machine =
            profiles.iter().find(|p| p.may_offer(&target.release)).or(profiles.first()).map(|p| p.machine.clone());
        Ok(machine.unwrap_or_else(|| std::env::consts::ARCH.to_string()))
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

/// The most of a --config file read: a kernel's .config is a few hundred KiB.
const MAX_KERNEL_CONFIG: u64 = 16 << 20;

/// dkms's --config FILE, read (bounded) on the host.
fn read_kernel_config(file: &Path) -> Result<String, LifecycleError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_KERNEL_CONFIG).read_to_string(&mut text))
        .map_err(LifecycleError::io(file))?;
    Ok(text)
}
