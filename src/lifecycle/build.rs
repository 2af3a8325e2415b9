//! `build`: evaluate the dkms.conf for the kernel in its builder image, build there, and put
//! the modules, make.log and the build record into `<dkms_tree>/<m>/<v>/<kver>/<arch>/`.

use std::path::{Path, PathBuf};

use super::{KernelTarget, Lifecycle, LifecycleError, Manifest, ManifestModule, ModuleVersion};
use crate::build::{BuildError, Job, Ran};
use crate::conf::{BuildPlan, DestPolicy, KernelFacts, Resolved};
use crate::diagnose::code;
use crate::error::Error;

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
        if self.is_binaries_only(mv) {
            return Err(self.binaries_only_error(mv));
        }
        let started = std::time::Instant::now();
        // Independent steps overlap: connecting to the engine, reading the index, and then
        // checking the image while the kernel's config is read from its headers package.
        let (conn, found) =
            tokio::join!(self.engine(), self.ctx.find_kernel(&target.release, self.opts.profile.as_deref()));
        let (conn, (profile, index, kernel)) = (conn?, found?);
        let engine = conn.engine.as_ref();
        let extra = self.extra_packages(mv, profile, &index);
        let plan = self.ctx.plan_image(profile, &index, &kernel, &extra.packages)?;
        let siblings = self.siblings(mv, &target.release, &arch);
        self.report_extra(mv, &extra, &plan, &siblings);
        let (image, kconfig) = tokio::join!(
            self.ctx.image_of(engine, profile, &plan, false),
            crate::kernel::config(&self.ctx.cache, &index, &kernel, self.report())
        );
        let (image, kconfig) = (image?, kconfig?);
        // The key is loaded before the build: a build that could not be signed is not started.
        let signing = self.signing(kconfig.as_deref())?;
        let recipe = self.ctx.catalog.recipe("builder")?;

        let source = self.source_dir(mv);
        let conf_path = source.join("dkms.conf");
        let conf = std::fs::read(&conf_path).map_err(|_| LifecycleError::NoConf(conf_path.clone()))?;
        let vars = crate::build::vars(&mv.module, &mv.version, &target.release, &arch);
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
            siblings: &siblings,
            image_sources: profile.relocated(crate::build::CONTAINER_SOURCES),
            conf: &conf,
            overrides: &overrides,
            origin: &origin,
            vars: &vars,
            jobs: self.opts.jobs,
            timeout: self.ctx.config.build_timeout(),
            space_bytes: limits.space_mib.unwrap_or(DEFAULT_SPACE_MIB) << 20,
            memory_bytes: limits.memory_mib.unwrap_or(4096) << 20,
            pids: limits.pids.unwrap_or(crate::image::DEFAULT_PIDS),
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
                .and_then(|r| self.accept(mv, target, r, chain));
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
                return match why.map(Error::downcast::<LifecycleError>) {
                    Some(Ok(LifecycleError::NeedsDependencies { dependencies, .. })) => {
                        // BUILD_DEPENDS first, then this module again (its conf is evaluated anew).
                        self.build_dependencies(mv, &dependencies, target, chain).await?;
                        Box::pin(self.build_with_deps(mv, target, chain)).await
                    }
                    Some(Ok(other)) => Err(other.into()),
                    Some(Err(e)) => Err(e),
                    None => Err(crate::build::BuildError::Input(std::io::Error::other("the build stopped")).into()),
                };
            }
        };
        if built.timed_out || built.space_exceeded || built.status != 0 {
            return Err(self.failed(mv, target, &arch, &plan, &built, None)?.into());
        }
        for (path, why) in &built.refused {
            self.report().warn(format!("{mv}: ignored {path:?} returned by the build: {why}"));
        }
        // A module the driver copied but that came back as something else (a link planted
        // after the copy) was refused by the unpacker: missing here.
        let wanted = |m: &crate::conf::Module| out.join("modules").join(format!("{}.ko", m.built_name));
        let lost: Vec<String> = plan
            .modules
            .iter()
            .filter(|m| !built.modules.contains(&wanted(m)))
            .map(|m| format!("{}.ko", m.built_name))
            .collect();
        if !lost.is_empty() {
            let what = format!("{} did not come back from the build as a regular file", lost.join(", "));
            return Err(self.failed(mv, target, &arch, &plan, &built, Some(what))?.into());
        }

        // A pair made on first use is made only now, so that a failed build leaves no key behind.
        let signing = match signing {
            Some(SignWith { hash, paths, signer }) => {
                let signer = match signer {
                    Some(loaded) => loaded,
                    None => crate::sign::signer(&paths, crate::sign::pin().as_deref(), self.report())?,
                };
                Some((signer, hash))
            }
            None => None,
        };

        // Assemble the result next to its final place, then rename: a built dir is complete or absent.
        let staged = work.path().join("staged");
        let compression = kconfig.as_deref().map(crate::install::compress::Compression::from_kernel_config);
        let compression = compression.unwrap_or(crate::install::compress::Compression::None);
        let mut modules = Vec::new();
        std::fs::create_dir_all(staged.join("module")).map_err(LifecycleError::io(&staged))?;
        std::fs::create_dir_all(staged.join("log")).map_err(LifecycleError::io(&staged))?;
        for m in &plan.modules {
            let from = wanted(m);
            let mut bytes = std::fs::read(&from).map_err(LifecycleError::io(&from))?;
            if self.opts.keep_unsigned {
                let to = staged.join(UNSIGNED).join(format!("{}.ko", m.built_name));
                std::fs::create_dir_all(staged.join(UNSIGNED)).map_err(LifecycleError::io(&staged))?;
                std::fs::write(&to, &bytes).map_err(LifecycleError::io(&to))?;
            }
            // dkms's order: strip (done in the sandbox), sign, compress.
            if let Some((signer, hash)) = &signing {
                self.report().info(format!("Signing module {}.ko ({hash})", m.built_name));
                bytes = crate::sign::sign(&bytes, signer, hash, &from)?;
            }
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
            sig_hash: kconfig.as_deref().and_then(crate::sign::kernel_hash),
            signed_by: signing.as_ref().map(|(signer, _)| signer.fingerprint()),
            make_seconds: built.make_seconds,
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

    /// The key pair and hash to sign this kernel's modules with: `None` when the kernel has
    /// no CONFIG_MODULE_SIG_HASH or signing is turned off, each said in one line. An existing
    /// pair is loaded (and checked) now; ckms's own, when missing, is made after the build.
    fn signing(&self, kconfig: Option<&str>) -> Result<Option<SignWith>, Error> {
        let Some(hash) = kconfig.and_then(crate::sign::kernel_hash) else {
            self.report().info("The kernel is built without module signing facility, modules won't be signed");
            return Ok(None);
        };
        if !self.ctx.config.sign_enabled() {
            self.report().info("Module signing is turned off ([sign] enabled = false): modules won't be signed");
            return Ok(None);
        }
        let paths = match &self.opts.keys {
            Some(paths) => paths.clone(),
            None => self.ctx.config.key_locations(&self.roots.dkms_tree).resolve(None, None),
        };
        let signer = if crate::sign::needs_generating(&paths) {
            None
        } else {
            Some(crate::sign::Signer::load(&paths, crate::sign::pin().as_deref())?)
        };
        self.report().info(format!(
            "Modules will be signed ({hash}) with the key {} and certificate {}",
            paths.key.display(),
            paths.cert.display()
        ));
        Ok(Some(SignWith { hash, paths, signer }))
    }

    /// A failed build: make.log goes where dkms leaves it, `<m>/<v>/build/make.log`. `what`
    /// overrides the failure's description (the build ran, but its result was refused).
    fn failed(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        arch: &str,
        plan: &BuildPlan,
        built: &crate::build::Built,
        what: Option<String>,
    ) -> Result<BuildError, Error> {
        use crate::build::status;
        let build_dir = self.roots.module_dir(&mv.module, &mv.version).join("build");
        std::fs::create_dir_all(&build_dir).map_err(LifecycleError::io(&build_dir))?;
        let log = build_dir.join("make.log");
        let mut text = built.make_log.as_ref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
        // The driver's own messages (patch, PRE_BUILD) are not in make.log; keep them too.
        if !built.log.is_empty() {
            text.extend_from_slice(b"\n--- ckms: build container output ---\n");
            text.extend_from_slice(&built.log);
        }
        for (path, why) in &built.refused {
            text.extend_from_slice(format!("ckms: refused {path:?} returned by the build: {why}\n").as_bytes());
        }
        std::fs::write(&log, &text).map_err(LifecycleError::io(&log))?;
        let limits = &self.ctx.config.build;
        let space = limits.space_mib.unwrap_or(DEFAULT_SPACE_MIB);
        let timeout = self.ctx.config.build_timeout();
        let (what, code, advice) = match (what, built.timed_out, built.status) {
            (Some(what), _, _) => (what, code::MODULE_MISSING, Some(LINK_ADVICE.to_string())),
            (None, true, _) => (
                format!("the build did not finish in {} s and was stopped", timeout.as_secs()),
                code::TIMEOUT,
                Some(
                    "If the module is only slow to build, raise the limit: CKMS_BUILD_TIMEOUT=<seconds> or \
                     [build] timeout_secs in /etc/ckms/config.toml"
                        .to_string(),
                ),
            ),
            _ if built.space_exceeded => (
                format!("the build used more than {space} MiB of disk and was stopped"),
                code::IO,
                Some(format!(
                    "The build's disk space is limited to {space} MiB; if the module really needs more, \
                     raise [build] space_mib in /etc/ckms/config.toml"
                )),
            ),
            (_, _, status::PATCH_FAILED) => ("a patch did not apply".to_string(), code::INSTALL_FAILED, None),
            (_, _, status::MODULE_MISSING) => {
                ("a module named in BUILT_MODULE_NAME was not built".to_string(), code::MODULE_MISSING, None)
            }
            (_, _, status::MODULE_IS_LINK) => {
                // The driver names the links it refused; only names the plan has are repeated.
                let stderr = String::from_utf8_lossy(&built.log);
                let mut links: Vec<String> = plan
                    .modules
                    .iter()
                    .map(|m| {
                        let dir =
                            if m.built_location.is_empty() { String::new() } else { format!("{}/", m.built_location) };
                        format!("{dir}{}.ko", m.built_name)
                    })
                    .filter(|p| stderr.contains(&format!("ckms: {p} is a symbolic link")))
                    .collect();
                if links.is_empty() {
                    links = plan.modules.iter().map(|m| format!("{}.ko", m.built_name)).collect();
                }
                (
                    format!("{} is a symbolic link, not a built module: refused", links.join(", ")),
                    code::MODULE_MISSING,
                    Some(LINK_ADVICE.to_string()),
                )
            }
            _ => (
                "Bad return status for module build".to_string(),
                code::BUILD_FAILED,
                sandbox_advice(&text, limits.pids.unwrap_or(crate::image::DEFAULT_PIDS)),
            ),
        };
        Ok(BuildError::Failed(Box::new(crate::build::Failure {
            what,
            module: mv.module.clone(),
            version: mv.version.clone(),
            kernel: target.release.clone(),
            arch: arch.to_string(),
            code,
            log,
            advice,
        })))
    }

    /// The host's decision on a resolved conf: a plan to build, or why not (skipped by
    /// BUILD_EXCLUSIVE, BUILD_DEPENDS missing or unbuilt).
    fn accept(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        resolved: Resolved,
        chain: &[String],
    ) -> Result<Box<BuildPlan>, Error> {
        let mut plan = match resolved {
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
        // dkms builds what -m/-v name whatever the conf says (mstflint-dkms ships
        // PACKAGE_VERSION="#MODULES_VERSION#"); so does ckms, and says so.
        if plan.package_name != mv.module || plan.package_version != mv.version {
            plan.notes.push(format!(
                "PACKAGE_NAME/PACKAGE_VERSION say {}/{}; built as {mv}, the names of its source directory (as dkms)",
                plan.package_name, plan.package_version
            ));
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
    pub fn overrides(&self, mv: &ModuleVersion, kernel: &str, arch: &str) -> Vec<(String, Vec<u8>)> {
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

/// How a build's modules are to be signed.
struct SignWith {
    hash: String,
    paths: crate::sign::KeyPaths,
    /// `None`: ckms's own pair, to be made on first use.
    signer: Option<crate::sign::Signer>,
}

/// Where [`Options::keep_unsigned`] keeps the modules in a built dir.
pub const UNSIGNED: &str = "unsigned";

/// `[build] space_mib` when unset.
const DEFAULT_SPACE_MIB: i64 = 4096;

const LINK_ADVICE: &str = "A module must be a regular file the build made: ckms never follows a link out of \
                           the build (dkms would copy what it points to); fix the module's Makefile";

/// What the sandbox refused, as make.log shows it, and what to do about it: a build that
/// failed because it tried to download, to write outside its directory, or to fork without end.
fn sandbox_advice(log: &[u8], pids: i64) -> Option<String> {
    let text = String::from_utf8_lossy(log);
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let mut advice = Vec::new();
    if has(&[
        "Network is unreachable",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Could not resolve host",
        "unable to resolve host",
    ]) {
        advice.push(
            "The build tried to reach the network, which builds never have: ship what it downloads \
             with the module's source"
                .to_string(),
        );
    }
    if has(&["Read-only file system"]) {
        advice.push(
            "The build tried to write outside its build directory: in the sandbox only the build \
             directory and /tmp are writable; fix the module's Makefile"
                .to_string(),
        );
    }
    if has(&["fork: Resource temporarily unavailable", "fork: retry: Resource temporarily unavailable"]) {
        advice.push(format!(
            "The build hit its limit of {pids} processes (a fork bomb, or [build] pids in \
             /etc/ckms/config.toml is too low)"
        ));
    }
    (!advice.is_empty()).then(|| advice.join(". "))
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

#[cfg(test)]
mod tests {
    use super::sandbox_advice;

    #[test]
    fn the_advice_names_what_the_sandbox_stopped() {
        let network = sandbox_advice(b"bash: connect: Network is unreachable\n", 4096).unwrap();
        assert!(network.contains("network"), "{network}");
        let ro = sandbox_advice(b"touch: cannot touch '/etc/x': Read-only file system\n", 4096).unwrap();
        assert!(ro.contains("outside its build directory"), "{ro}");
        let bomb = sandbox_advice(b"bash: fork: retry: Resource temporarily unavailable\n", 256).unwrap();
        assert!(bomb.contains("limit of 256 processes"), "{bomb}");
        assert_eq!(sandbox_advice(b"hello.c:3: error: expected ';'\n", 4096), None);
    }
}
