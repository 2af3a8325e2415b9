//! `build`: evaluate the dkms.conf for the kernel in its builder image, build there, and put
//! the modules, make.log and the build record into `<dkms_tree>/<m>/<v>/<kver>/<arch>/`.

use std::path::{Path, PathBuf};

use super::{KernelTarget, Lifecycle, LifecycleError, Manifest, ManifestModule, ModuleVersion};
use crate::build::{BuildError, Job, Ran, CONTAINER_TREE};
use crate::conf::{BuildPlan, DestPolicy, EvalContext, KernelFacts, Resolved};
use crate::error::{code, Error};

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

impl Lifecycle<'_> {
    /// Builds `mv` for `target` (adding it first if needed; BUILD_DEPENDS first).
    pub async fn build(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<BuildOutcome, Error> {
        self.build_with_deps(mv, target, &mut Vec::new()).await
    }

    async fn build_with_deps(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        chain: &mut Vec<String>,
    ) -> Result<BuildOutcome, Error> {
        self.ensure_added(mv)?;
        let arch = self.arch(target)?;
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
        if built_dir.join("module").is_dir() && !self.opts.force {
            self.report().info(format!(
                "Module {mv} already built for kernel {} ({arch}), skip. You may override by specifying --force.",
                target.release
            ));
            return Ok(BuildOutcome::AlreadyBuilt { module: mv.clone(), kernel: target.release.clone(), arch });
        }
        let started = std::time::Instant::now();
        // Independent steps overlap: connecting to the engine, reading the index, and then
        // checking the image while the kernel's config is read from its headers package.
        let (conn, found) =
            tokio::join!(self.engine(), self.ctx.find_kernel(&target.release, self.opts.profile.as_deref()));
        let (conn, (profile, index, kernel)) = (conn?, found?);
        let engine = &conn.engine;
        let extra = self.ctx.config.module_packages(&mv.module);
        let (image, kconfig) = tokio::join!(
            self.ctx.image_for(engine, profile, &index, &kernel, &extra, false),
            crate::kernel::config(&self.ctx.cache, &index, &kernel, self.report())
        );
        let (image, kconfig) = (image?, kconfig?);
        let recipe = self.ctx.catalog.recipe("builder")?;

        let source = self.source_dir(mv);
        let conf_path = source.join("dkms.conf");
        let conf = std::fs::read(&conf_path).map_err(|_| LifecycleError::NoConf(conf_path.clone()))?;
        let vars = EvalContext {
            conf_path: String::new(),
            override_dir: None,
            kernelver: target.release.clone(),
            arch: arch.clone(),
            kernel_source_dir: format!("/lib/modules/{}/build", target.release),
            dkms_tree: CONTAINER_TREE.into(),
            source_tree: "/usr/src".into(),
            install_tree: "/lib/modules".into(),
            module: mv.module.clone(),
            module_version: mv.version.clone(),
        };
        let overrides = self.overrides(mv, &target.release, &arch);
        let origin = conf_path.display().to_string();
        let image = image.reference.as_str();
        let facts = KernelFacts { release: target.release.clone(), arch: arch.clone(), config: kconfig.clone() };
        let policy = DestPolicy::Override(profile.install.module_location.clone());
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        let work = tempfile::Builder::new()
            .prefix(".ckms-build-")
            .tempdir_in(&module_dir)
            .map_err(LifecycleError::io(&module_dir))?;
        let limits = &self.ctx.config.build;
        let job = Job {
            recipe,
            image,
            source: &source,
            conf: &conf,
            overrides: &overrides,
            origin: &origin,
            vars: &vars,
            jobs: self.opts.jobs,
            timeout: self.ctx.config.build_timeout(),
            space_bytes: limits.space_mib.unwrap_or(4096) << 20,
            memory_bytes: limits.memory_mib.unwrap_or(4096) << 20,
            pids: limits.pids.unwrap_or(4096),
            follow: self.opts.verbose.then(|| {
                let report = self.ctx.report.clone();
                crate::engine::LogSink(std::sync::Arc::new(move |b: &[u8]| {
                    report.output(String::from_utf8_lossy(b).into_owned())
                }))
            }),
        };
        // Resolution happens while the container waits; why it stopped is kept here.
        let stop: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let resolve = |raw: Result<crate::conf::RawConf, crate::conf::ConfError>| {
            let decided = raw
                .and_then(|raw| crate::conf::resolve(&raw, &facts, &policy))
                .map_err(Error::from)
                .and_then(|r| self.accept(mv, target, &origin, r, chain));
            match decided {
                Ok(plan) => {
                    for note in &plan.notes {
                        self.report().info(format!("{origin}: {note}"));
                    }
                    for (name, reason) in &plan.excluded_modules {
                        self.report().info(format!("{name} is not built for {}: {reason}", target.release));
                    }
                    self.report().info(plan.make_command(self.opts.jobs));
                    Some(plan)
                }
                Err(e) => {
                    if let Ok(mut s) = stop.lock() {
                        *s = Some(e);
                    }
                    None
                }
            }
        };
        self.report().info(format!("Building module {mv} for kernel {} ({arch}) in {image}", target.release));
        let out = work.path().join("out");
        let (plan, built) = match crate::build::run_build(engine, &job, &resolve, &out).await? {
            Ran::Built { plan, built } => (plan, built),
            Ran::Stopped => {
                let why = stop.into_inner().ok().flatten();
                return match why {
                    Some(Error::Lifecycle(e)) => match *e {
                        LifecycleError::NeedsDependencies { dependencies, .. } => {
                            // BUILD_DEPENDS first, then this module again (its conf is evaluated anew).
                            self.build_dependencies(mv, &dependencies, target, chain).await?;
                            Box::pin(self.build_with_deps(mv, target, chain)).await
                        }
                        other => Err(other.into()),
                    },
                    Some(e) => Err(e),
                    None => Err(crate::build::BuildError::Input(std::io::Error::other("the build stopped")).into()),
                };
            }
        };
        if built.timed_out || built.space_exceeded || built.status != 0 {
            return Err(self.failed(mv, target, &arch, &built)?.into());
        }

        // Assemble the result next to its final place, then rename: a built dir is complete or absent.
        let staged = work.path().join("staged");
        let compression = kconfig.as_deref().map(crate::install::compress::Compression::from_kernel_config);
        let compression = compression.unwrap_or(crate::install::compress::Compression::None);
        let mut modules = Vec::new();
        std::fs::create_dir_all(staged.join("module")).map_err(LifecycleError::io(&staged))?;
        std::fs::create_dir_all(staged.join("log")).map_err(LifecycleError::io(&staged))?;
        for m in &plan.modules {
            let from = out.join("modules").join(format!("{}.ko", m.built_name));
            let bytes = std::fs::read(&from).map_err(LifecycleError::io(&from))?;
            let file = PathBuf::from("module").join(format!("{}.ko{}", m.built_name, compression.suffix()));
            let packed = compression.compress(&bytes).map_err(LifecycleError::io(&from))?;
            std::fs::write(staged.join(&file), packed).map_err(LifecycleError::io(staged.join(&file)))?;
            modules.push(ManifestModule {
                built_name: m.built_name.clone(),
                dest_name: m.dest_name.clone(),
                dest_location: m.dest_location.clone(),
                file,
            });
        }
        if let Some(log) = &built.make_log {
            std::fs::copy(log, staged.join("log/make.log")).map_err(LifecycleError::io(log))?;
        }
        let manifest = Manifest {
            module: mv.module.clone(),
            version: mv.version.clone(),
            kernel: target.release.clone(),
            arch: arch.clone(),
            profile: profile.name.clone(),
            image: image.to_string(),
            modules,
            autoinstall: plan.autoinstall,
            pre_install: plan.hooks.pre_install.clone(),
            post_install: plan.hooks.post_install.clone(),
            post_remove: plan.hooks.post_remove.clone(),
        };
        manifest.write(&staged)?;

        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &target.release, &arch);
        let _lock = self.lock()?;
        commit_dir(&staged, &built_dir).map_err(LifecycleError::io(&built_dir))?;
        // dkms cleans the build area after a good build; a failed one's make.log goes too.
        let _ = std::fs::remove_dir_all(module_dir.join("build"));
        let names: Vec<String> = manifest.modules.iter().map(|m| m.file.display().to_string()).collect();
        self.report().info(format!("Built {mv} for kernel {} ({arch}): {}", target.release, names.join(" ")));
        Ok(BuildOutcome::Built {
            module: mv.clone(),
            kernel: target.release.clone(),
            arch,
            modules: names,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// A failed build: make.log goes where dkms leaves it, `<m>/<v>/build/make.log`.
    fn failed(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        arch: &str,
        built: &crate::build::Built,
    ) -> Result<BuildError, Error> {
        let build_dir = self.roots.module_dir(&mv.module, &mv.version).join("build");
        std::fs::create_dir_all(&build_dir).map_err(LifecycleError::io(&build_dir))?;
        let log = build_dir.join("make.log");
        let mut text = built.make_log.as_ref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
        // The driver's own messages (patch, PRE_BUILD) are not in make.log; keep them too.
        if !built.log.is_empty() {
            text.extend_from_slice(b"\n--- ckms: build container output ---\n");
            text.extend_from_slice(&built.log);
        }
        std::fs::write(&log, &text).map_err(LifecycleError::io(&log))?;
        let space = self.ctx.config.build.space_mib.unwrap_or(4096);
        let (what, code) = match (built.timed_out, built.status) {
            (true, _) => (format!("the build did not finish in {:?}", self.ctx.config.build_timeout()), code::TIMEOUT),
            _ if built.space_exceeded => (format!("the build used more than {space} MiB of disk"), code::IO),
            (_, 6) => ("a patch did not apply".to_string(), code::INSTALL_FAILED),
            (_, 7) => ("a module named in BUILT_MODULE_NAME was not built".to_string(), code::MODULE_MISSING),
            _ => ("Bad return status for module build".to_string(), code::BUILD_FAILED),
        };
        Ok(BuildError::Failed(Box::new(crate::build::Failure {
            what,
            module: mv.module.clone(),
            version: mv.version.clone(),
            kernel: target.release.clone(),
            arch: arch.to_string(),
            code,
            log,
        })))
    }

    /// The host's decision on a resolved conf: a plan to build, or why not (skipped by
    /// BUILD_EXCLUSIVE, names that do not match the tree, BUILD_DEPENDS missing or unbuilt).
    fn accept(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        origin: &str,
        resolved: Resolved,
        chain: &[String],
    ) -> Result<Box<BuildPlan>, Error> {
        let plan = match resolved {
            Resolved::Build(plan) => plan,
            Resolved::Skipped { reason } => {
                return Err(LifecycleError::Skipped {
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    kernel: target.release.clone(),
                    reason,
                }
                .into())
            }
        };
        if plan.package_name != mv.module || plan.package_version != mv.version {
            return Err(crate::conf::invalid(
                origin,
                "PACKAGE_NAME/PACKAGE_VERSION",
                format!("say {}/{}, but the tree has it as {mv}", plan.package_name, plan.package_version),
                "the source directory must be named <PACKAGE_NAME>-<PACKAGE_VERSION>",
            )
            .into());
        }
        let arch = self.arch(target)?;
        let mut unbuilt = Vec::new();
        for dep in &plan.build_depends {
            let err = |cycle: bool| -> Error {
                let (module, version, dependency) = (mv.module.clone(), mv.version.clone(), dep.clone());
                if cycle {
                    LifecycleError::DependencyCycle { module, version, dependency }.into()
                } else {
                    LifecycleError::MissingDepends { module, version, dependency }.into()
                }
            };
            if chain.contains(dep) || *dep == mv.module {
                return Err(err(true));
            }
            let version = self.versions(dep).pop().ok_or_else(|| err(false))?;
            if !self.roots.built_dir(dep, &version, &target.release, &arch).join("module").is_dir() {
                unbuilt.push(dep.clone());
            }
        }
        if !unbuilt.is_empty() {
            return Err(LifecycleError::NeedsDependencies { module: mv.module.clone(), dependencies: unbuilt }.into());
        }
        Ok(plan)
    }

    /// Builds the BUILD_DEPENDS modules `deps` (newest version in the tree) for `target`.
    async fn build_dependencies(
        &self,
        mv: &ModuleVersion,
        deps: &[String],
        target: &KernelTarget,
        chain: &mut Vec<String>,
    ) -> Result<(), Error> {
        chain.push(mv.module.clone());
        for dep in deps {
            let Some(version) = self.versions(dep).pop() else { continue };
            let dep_mv = ModuleVersion { module: dep.clone(), version };
            Box::pin(self.build_with_deps(&dep_mv, target, chain)).await?;
        }
        chain.pop();
        Ok(())
    }

    /// dkms's override files that exist for this (module, version, kernel, arch).
    fn overrides(&self, mv: &ModuleVersion, kernel: &str, arch: &str) -> Vec<(String, Vec<u8>)> {
        let dir = self.ctx.config.conf_dir();
        let (m, v) = (&mv.module, &mv.version);
        [
            format!("{m}.conf"),
            format!("{m}-{v}.conf"),
            format!("{m}-{v}-{kernel}.conf"),
            format!("{m}-{v}-{kernel}-{arch}.conf"),
        ]
        .into_iter()
        .filter_map(|name| std::fs::read(dir.join(&name)).ok().map(|bytes| (name, bytes)))
        .collect()
    }

    /// The kernel's arch: given with `-k kver/arch` or `-a`, else the profile's machine.
    pub(super) fn arch(&self, target: &KernelTarget) -> Result<String, Error> {
        if let Some(a) = &target.arch {
            return Ok(a.clone());
        }
        let profiles = self.ctx.profiles(self.opts.profile.as_deref())?;
        let machine =
            profiles.iter().find(|p| p.may_offer(&target.release)).or(profiles.first()).map(|p| p.machine.clone());
        Ok(machine.unwrap_or_else(|| std::env::consts::ARCH.to_string()))
    }
}

/// Replaces `to` by the complete directory `from` (same filesystem): the old one is moved
/// aside first and removed after, so `to` is always either the old or the new result.
pub(super) fn commit_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let old = parent.join(format!(".ckms-old-{}", std::process::id()));
    let had_old = to.exists();
    if had_old {
        std::fs::rename(to, &old)?;
    }
    std::fs::rename(from, to)?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    if had_old {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}
