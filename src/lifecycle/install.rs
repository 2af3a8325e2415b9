//! `install` and `uninstall`: built modules into `<install_tree>/<kver>/` and back out, with
//! dkms's backup of replaced modules and depmod (see [`crate::install`]). The module's own
//! PRE_INSTALL, POST_INSTALL and POST_REMOVE scripts run in the sandbox, never on the host.

use std::path::{Path, PathBuf};

use openssl::x509::X509;

use super::{KernelTarget, Lifecycle, LifecycleError, Manifest, ManifestModule, ModuleVersion};
use crate::build::run_script;
use crate::install::{self, Depmod, HostDepmod, ModuleFile, Target};
use crate::kernel;
use crate::pair::substitute::{SourceDir, Substitute, Want};
use crate::sign::{self, SignError};

/// Beside a build record placed from a cache: the module certificate the cache published.
const SIGNER_CERT: &str = "signer.der";

/// A module file in the install tree: its path, directory and file name.
#[derive(serde::Serialize)]
struct Placed {
    path: String,
    dir: String,
    name: String,
    /// Whether the file is there (dkms says so of each it uninstalls).
    found: bool,
}

/// What `install` or `uninstall` did for one (module, kernel).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum InstallOutcome {
    Installed { module: ModuleVersion, kernel: String, arch: String, files: Vec<String> },
    AlreadyInstalled { module: ModuleVersion, kernel: String, arch: String },
    Uninstalled { module: ModuleVersion, kernel: String, arch: String },
    NotInstalled { module: ModuleVersion, kernel: String, arch: String },
}

impl Lifecycle<'_> {
    /// Installs `mv` for `target`, building it first if needed.
    pub async fn install(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<InstallOutcome, LifecycleError> {
        let arch = self.arch(target)?;
        let kernel = target.release.clone();
        let installed = self.installed_version(&mv.module, &kernel, &arch);
        let same = installed.as_deref() == Some(mv.version.as_str());
        // Another version stays installed until this one takes its place (--force takes the
        // same version out first): dkms 3.0's sanity check says so.
        let had_install = installed.is_some() && !same;
        if same && !self.opts.force {
            self.say("already_installed", super::build::values(mv, &kernel, &arch));
            return Ok(InstallOutcome::AlreadyInstalled { module: mv.clone(), kernel, arch });
        }
        if same {
            // --force: taken out first, as dkms does (and says).
            self.uninstall(mv, target).await?;
        }
        // An older install taken out with dkms's lines (dkms then leaves an empty line).
        let mut replaced = installed.is_some() && !same;
        if let Some(other) = installed.filter(|v| *v != mv.version) {
            if self.ctx.as_dkms && !self.opts.force {
                // dkms's version check: a newer version takes the older one's place quietly; an
                // older one is refused (6).
                let other_mv = ModuleVersion { module: mv.module.clone(), version: other.clone() };
                if crate::repo::version::compare(&mv.version, &other) != std::cmp::Ordering::Greater {
                    let dir = self.roots.built_dir(&mv.module, &other, &kernel, &arch);
                    let file = Manifest::read(&dir)
                        .ok()
                        .and_then(|m| {
                            m.modules.first().and_then(|f| f.file.file_name().map(|n| n.to_string_lossy().into_owned()))
                        })
                        .unwrap_or_else(|| format!("{}.ko", mv.module));
                    return Err(LifecycleError::NotNewer {
                        module: mv.module.clone(),
                        version: mv.version.clone(),
                        other,
                        kernel,
                        file,
                    });
                }
                self.uninstall_saying(&other_mv, target, false).await?;
                replaced = false;
            } else if !self.opts.force {
                return Err(LifecycleError::OtherVersionInstalled {
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    other,
                    kernel,
                    arch,
                });
            } else {
                self.uninstall(&ModuleVersion { module: mv.module.clone(), version: other }, target).await?;
            }
        }
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &kernel, &arch);
        let built_now = !built_dir.join("module").is_dir();
        if built_now {
            // A farm's cache first, when one is configured: no engine, no headers, no compiler.
            self.ensure_added(mv)?;
            let found = match &self.substituter {
                Some(s) => s.substitute(&self.want(mv, &kernel)).await?,
                None => None,
            };
            match found {
                Some(found) => {
                    let sig_hash = self.kernel_sig_hash(&kernel).await?;
                    self.place_substitute(mv, &kernel, &arch, &found, sig_hash)?
                }
                None => {
                    self.build(mv, target).await?;
                }
            }
        }
        if self.ctx.as_dkms {
            // dkms reads the conf strictly again before it installs.
            let conf = self.roots.module_dir(&mv.module, &mv.version).join("source/dkms.conf");
            self.check_conf(&conf, true, !built_now)?;
        }
        let manifest = Manifest::read(&built_dir)?;
        if let Some(script) = &manifest.pre_install {
            let status = self.run_hook(mv, &manifest, "pre_install", script).await?;
            if status != 0 {
                return Err(LifecycleError::PreInstall {
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    kernel,
                    status,
                });
            }
        }
        let files = module_files(&manifest, &built_dir);
        // As dkms: a build whose module file went missing is not installed (6).
        if let Some(gone) = files.iter().find(|f| !f.file.is_file()) {
            return Err(LifecycleError::MissingBuilt {
                name: gone.dest_name.clone(),
                dir: gone.file.parent().unwrap_or(&built_dir).to_path_buf(),
            });
        }
        self.check_signatures(&manifest, &built_dir, &files)?;
        let done = {
            let _lock = self.lock()?;
            let t = self.target(mv, &kernel, &arch);
            install::install(&t, &files, self.depmod().as_ref().map(|d| d as &dyn Depmod))?
        };
        let placed = self.placed(&files, &kernel);
        let listed: Vec<String> = placed.iter().map(|p| p.path.clone()).collect();
        self.say(
            "installed",
            serde_json::json!({
                "files": listed, "modules": placed, "depmod": self.depmod_line(), "replaced": same || replaced,
                "archived": done.originals, "had_install": had_install,
            }),
        );
        if let Some(script) = &manifest.post_install {
            self.run_after(mv, &manifest, "post_install", script).await;
        }
        self.rebuild_dependents(target, &arch).await?;
        Ok(InstallOutcome::Installed { module: mv.clone(), kernel, arch, files: listed })
    }

    /// Uninstalls `mv` from `target` and puts back what it replaced.
    pub async fn uninstall(&self, mv: &ModuleVersion, target: &KernelTarget) -> Result<InstallOutcome, LifecycleError> {
        self.uninstall_saying(mv, target, true).await
    }

    /// [`Lifecycle::uninstall`], saying dkms's lines about it or not (a newer version taking
    /// its place, which dkms does without a word).
    async fn uninstall_saying(
        &self,
        mv: &ModuleVersion,
        target: &KernelTarget,
        saying: bool,
    ) -> Result<InstallOutcome, LifecycleError> {
        self.check_not_broken(mv)?;
        let arch = self.arch(target)?;
        let kernel = target.release.clone();
        if self.installed_version(&mv.module, &kernel, &arch).as_deref() != Some(mv.version.as_str()) {
            self.say("not_installed", super::build::values(mv, &kernel, &arch));
            return Ok(InstallOutcome::NotInstalled { module: mv.clone(), kernel, arch });
        }
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, &kernel, &arch);
        let manifest = Manifest::read(&built_dir)?;
        let files = module_files(&manifest, &built_dir);
        let placed = self.placed(&files, &kernel);
        let done = {
            let _lock = self.lock()?;
            let t = self.target(mv, &kernel, &arch);
            install::uninstall(&t, &files, self.depmod().as_ref().map(|d| d as &dyn Depmod))?
        };
        let mut said = super::build::values(mv, &kernel, &arch);
        said["kernel_dir"] = self.roots.install_tree.join(&kernel).display().to_string().into();
        said["files"] = placed.iter().map(|p| p.path.clone()).collect();
        said["modules"] = serde_json::json!(placed);
        said["depmod"] = self.depmod_line().into();
        said["restored"] = serde_json::json!(done.restored);
        if saying {
            self.say("uninstalled", said);
        }
        if let Some(script) = &manifest.post_remove {
            self.run_after(mv, &manifest, "post_remove", script).await;
        }
        Ok(InstallOutcome::Uninstalled { module: mv.clone(), kernel, arch })
    }

    /// Where each of `files` goes under the install tree, as dkms's lines name it.
    fn placed(&self, files: &[ModuleFile], kernel: &str) -> Vec<Placed> {
        files
            .iter()
            .map(|f| {
                let name = f.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let suffix = name.find(".ko").map(|i| name[i + 3..].to_string()).unwrap_or_default();
                let dir = format!("{}/{kernel}{}", self.roots.install_tree.display(), f.dest_location);
                let name = format!("{}.ko{suffix}", f.dest_name);
                let path = format!("{dir}/{name}");
                Placed { found: Path::new(&path).is_file(), path, dir, name }
            })
            .collect()
    }

    /// What a substituter needs to find (mv, kernel): the module's source, and the tree's
    /// other modules (the newest version of each) that its build would see.
    pub fn want(&self, mv: &ModuleVersion, kernel: &str) -> Want {
        let dir = |mv: ModuleVersion| SourceDir { dir: self.source_dir(&mv), origin: self.origin(&mv), mv };
        let mut newest: std::collections::BTreeMap<String, ModuleVersion> = Default::default();
        for other in self.all().into_iter().filter(|o| o.module != mv.module) {
            newest.insert(other.module.clone(), other); // `all` is sorted oldest first
        }
        let siblings =
            newest.into_values().filter(|o| self.source_dir(o).join("dkms.conf").is_file()).map(dir).collect();
        Want { module: dir(mv.clone()), kernel: kernel.to_string(), profile: self.opts.profile.clone(), siblings }
    }

    /// The kernel's CONFIG_MODULE_SIG_HASH, read from its headers package in the profile's
    /// signed repository as for a local build: whether a substitute must be signed is this
    /// host's decision, never the cache's.
    async fn kernel_sig_hash(&self, release: &str) -> Result<Option<String>, LifecycleError> {
        let (_, index, kernel) = self.ctx.find_kernel(release, self.opts.profile.as_deref()).await?;
        let kconfig = kernel::config(&self.ctx.cache, &index, &kernel, self.report()).await?;
        Ok(kconfig.as_deref().and_then(sign::kernel_hash))
    }

    /// Makes a substitute the built dir of (mv, kernel, arch), as a build would have left it;
    /// installing it then checks the module signatures as for a local build: required when
    /// `sig_hash` (the kernel's, see [`Self::kernel_sig_hash`]) says the kernel signs modules.
    fn place_substitute(
        &self,
        mv: &ModuleVersion,
        kernel: &str,
        arch: &str,
        found: &Substitute,
        sig_hash: Option<String>,
    ) -> Result<(), LifecycleError> {
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        let staged = tempfile::Builder::new()
            .prefix(".ckms-prebuilt-")
            .tempdir_in(&module_dir)
            .map_err(LifecycleError::io(&module_dir))?;
        let files = staged.path().join("module");
        std::fs::create_dir(&files).map_err(LifecycleError::io(&files))?;
        let mut modules = Vec::new();
        for m in &found.modules {
            let path = files.join(&m.file_name);
            std::fs::write(&path, &m.bytes).map_err(LifecycleError::io(&path))?;
            modules.push(ManifestModule {
                built_name: m.name.clone(),
                dest_name: m.name.clone(),
                dest_location: m.dest.clone(),
                file: std::path::Path::new("module").join(&m.file_name),
            });
        }
        let conf = std::fs::read_to_string(self.source_dir(mv).join("dkms.conf")).unwrap_or_default();
        let manifest = Manifest {
            module: mv.module.clone(),
            version: mv.version.clone(),
            kernel: kernel.to_string(),
            arch: arch.to_string(),
            profile: found.profile.clone(),
            image: found.from.clone(),
            modules,
            autoinstall: super::add::autoinstall_setting(&conf).unwrap_or(false),
            pre_install: None,
            post_install: None,
            post_remove: None,
            // The host's kernel decides: what the cache says of its signing is not trusted.
            sig_hash,
            signed_by: found.signed_by.clone(),
            make_seconds: None,
            rebuild_with: Vec::new(),
        };
        manifest.write(staged.path())?;
        if let Some(der) = &found.certificate {
            let path = staged.path().join(SIGNER_CERT);
            std::fs::write(&path, der).map_err(LifecycleError::io(&path))?;
        }
        let built_dir = self.roots.built_dir(&mv.module, &mv.version, kernel, arch);
        super::build::commit_dir(&staged.keep(), &built_dir).map_err(LifecycleError::io(&built_dir))?;
        Ok(())
    }

    /// The version of `module` installed for (kernel, arch), read from the tree's marker link.
    pub fn installed_version(&self, module: &str, kernel: &str, arch: &str) -> Option<String> {
        let link = std::fs::read_link(self.roots.installed_link(module, kernel, arch)).ok()?;
        link.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned())
    }

    /// Before anything is written: every signed module must verify against a certificate this
    /// host trusts (its own, or the one a trusted cache published with the modules), and when
    /// the kernel wants signatures (and signing is on) every module must have one, so nothing
    /// unsigned or wrongly signed is installed.
    fn check_signatures(
        &self,
        manifest: &Manifest,
        built_dir: &Path,
        files: &[ModuleFile],
    ) -> Result<(), LifecycleError> {
        let required = manifest.sig_hash.is_some() && self.ctx.config.sign_enabled();
        let mut certs = None;
        for f in files {
            let (module, _) = sign::read_module(&f.file)?;
            if !module.ends_with(sign::format::MAGIC) {
                if required {
                    return Err(SignError::NotSigned { path: f.file.clone() }.into());
                }
                continue;
            }
            let certs = match &certs {
                Some(c) => c,
                None => certs.insert(self.verifying_certs(manifest, built_dir)?),
            };
            // The first that verifies; else the first one's error (the host's own when it has one).
            let tried = certs.iter().map(|(cert, path)| sign::verify(&module, cert, &f.file, path));
            let v = tried.reduce(|first, next| first.or_else(|e| next.map_err(|_| e))).ok_or_else(|| {
                SignError::NoCertToVerify { path: f.file.clone(), signed_by: manifest.signed_by.clone() }
            })??;
            self.report()
                .detail(format!("Signature of {}.ko verified ({}, {})", f.dest_name, v.signer.signer, v.signer.hash));
        }
        Ok(())
    }

    /// The certificates a module may verify with: this host's (as `build` signs with) and the
    /// one its cache published with it (kept beside the build record); at least one.
    fn verifying_certs(&self, manifest: &Manifest, built_dir: &Path) -> Result<Vec<(X509, PathBuf)>, LifecycleError> {
        let own = self.ctx.config.key_locations(&self.roots.dkms_tree).resolve(None, None).cert;
        let mut certs = Vec::new();
        let mut missing = None;
        for path in [own, built_dir.join(SIGNER_CERT)] {
            match sign::keys::load_cert(&path) {
                Ok(cert) => certs.push((cert, path)),
                Err(SignError::CertMissing { path }) => missing = missing.or(Some(path)),
                Err(e) => return Err(e.into()),
            }
        }
        match missing {
            // Built elsewhere (ldtarball): the certificate of the key that signed them.
            Some(path) if certs.is_empty() => {
                Err(SignError::NoCertToVerify { path, signed_by: manifest.signed_by.clone() }.into())
            }
            _ => Ok(certs),
        }
    }

    fn target<'t>(&'t self, mv: &'t ModuleVersion, kernel: &'t str, arch: &'t str) -> Target<'t> {
        Target { roots: &self.roots, module: &mv.module, version: &mv.version, kernel, arch }
    }

    fn depmod(&self) -> Option<HostDepmod> {
        self.opts.depmod.then_some(HostDepmod)
    }

    /// POST_INSTALL, POST_REMOVE: the modules are in place (or gone) already, so their outcome,
    /// as in dkms, changes nothing; one that could not run (no engine) is a warning too.
    async fn run_after(&self, mv: &ModuleVersion, manifest: &Manifest, what: &str, script: &str) {
        if let Err(e) = self.run_hook(mv, manifest, what, script).await {
            self.report().warn(format!("the {what} script of {mv} did not run: {e}"));
        }
    }

    /// Runs a module's install-time script in the sandbox of the image that built it: it sees
    /// the module's source, not the host. Returns its exit status.
    /// A script that is not in the source (a binaries-only module has only its dkms.conf) is
    /// not run, with dkms's warning, and needs no engine.
    async fn run_hook(
        &self,
        mv: &ModuleVersion,
        manifest: &Manifest,
        what: &str,
        script: &str,
    ) -> Result<i64, LifecycleError> {
        let source = self.roots.module_dir(&mv.module, &mv.version).join("source");
        let program = script.split_whitespace().next().unwrap_or_default();
        if !source.join(program).is_file() {
            self.report()
                .warn(format!("The {what} script is not executable: {program} is not in {}", source.display()));
            return Ok(0);
        }
        // Said first: when no engine answers, the error that follows is about this script.
        self.report().info(format!("Running the {what} script (sandboxed):"));
        let conn = self.engine().await?;
        let recipe = self.ctx.catalog.recipe("builder")?;
        let outcome =
            run_script(conn.engine.as_ref(), recipe, &manifest.image, &source, mv_vars(manifest), script).await?;
        let log = String::from_utf8_lossy(&outcome.log);
        if !log.trim().is_empty() {
            self.report().info(log.trim_end().to_string());
        }
        if outcome.exit_code != 0 && what != "pre_install" {
            self.report().warn(format!("the {what} script of {mv} returned {}", outcome.exit_code));
        }
        Ok(outcome.exit_code)
    }
}

fn mv_vars(m: &Manifest) -> Vec<(String, String)> {
    vec![
        ("kernelver".into(), m.kernel.clone()),
        ("arch".into(), m.arch.clone()),
        ("module".into(), m.module.clone()),
        ("module_version".into(), m.version.clone()),
    ]
}

fn module_files(manifest: &Manifest, built_dir: &std::path::Path) -> Vec<ModuleFile> {
    manifest
        .modules
        .iter()
        .map(|m| ModuleFile {
            dest_name: m.dest_name.clone(),
            dest_location: m.dest_location.clone(),
            file: built_dir.join(&m.file),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, context};
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::pair::substitute::SubstitutedModule;
    use crate::sign::{keys, Locations, Signer};
    use crate::tree::Roots;
    use std::path::Path;

    /// ckms's own pair in the tree of `root`.
    fn own_pair(root: &Path) -> Signer {
        let loc = Locations {
            conf_dir: root.join("x"),
            dkms_dir: root.join("y"),
            own_dir: root.join("var/lib/ckms"),
            kernel: None,
        };
        keys::generate(&loc.resolve(None, None), false).unwrap()
    }

    async fn install(root: &Path, roots: Roots) -> Result<InstallOutcome, LifecycleError> {
        let ctx = context(root);
        let opts = super::super::Options { depmod: false, ..Default::default() };
        let lc = Lifecycle::new(&ctx, roots, opts);
        let mv = ModuleVersion { module: "m".into(), version: "1".into() };
        lc.install(&mv, &KernelTarget { release: "k".into(), arch: Some("x86_64".into()) }).await
    }

    fn installed(root: &Path) -> bool {
        root.join("lib/modules/k/updates/dkms/m.ko").exists()
    }

    #[tokio::test]
    async fn a_module_the_kernel_wants_signed_must_be_signed_by_our_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let ours = own_pair(root);
        let theirs = own_pair(&root.join("elsewhere"));
        let p = Path::new("m.ko");

        let unsigned = install(root, built(root, b"\x7fELF", true)).await.unwrap_err();
        assert_eq!(unsigned.exit_code(), code::BAD_MODULE_SIGNATURE, "{unsigned}");
        assert!(unsigned.to_string().contains("is not signed"), "{unsigned}");
        assert!(!installed(root), "an unsigned module was installed");

        let foreign = sign::sign(b"\x7fELF", &theirs, "sha256", p).unwrap();
        let err = install(root, built(root, &foreign, true)).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_MODULE_SIGNATURE, "{err}");
        assert!(!installed(root), "a module signed by another key was installed");

        let good = sign::sign(b"\x7fELF", &ours, "sha256", p).unwrap();
        install(root, built(root, &good, true)).await.unwrap();
        assert!(installed(root));
    }

    /// m/1 (`module`'s bytes) from a cache's entry that says it was signed by `signed_by` and
    /// publishes `certificate`, placed as the built dir of kernel k, whose config says
    /// `sig_hash`; then installed.
    async fn install_prebuilt(
        root: &Path,
        module: &[u8],
        (signed_by, certificate): (Option<&str>, Option<Vec<u8>>),
        sig_hash: Option<&str>,
    ) -> Result<InstallOutcome, LifecycleError> {
        let ctx = context(root);
        let roots = Roots::under(root, "/var/lib/ckms");
        let src = roots.source_tree.join("m-1");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("dkms.conf"), "PACKAGE_NAME=m\nPACKAGE_VERSION=1\nAUTOINSTALL=yes\n").unwrap();
        let lc = Lifecycle::new(&ctx, roots.clone(), super::super::Options { depmod: false, ..Default::default() });
        let mv = ModuleVersion { module: "m".into(), version: "1".into() };
        lc.ensure_added(&mv).unwrap();
        let found = Substitute {
            from: "prebuilt http://cache.invalid/ k1".into(),
            profile: "debian-bookworm".into(),
            modules: vec![SubstitutedModule {
                name: "m".into(),
                dest: "/updates/dkms".into(),
                file_name: "m.ko".into(),
                bytes: module.to_vec(),
            }],
            signed_by: signed_by.map(str::to_string),
            certificate,
        };
        lc.place_substitute(&mv, "k", "x86_64", &found, sig_hash.map(str::to_string)).unwrap();
        let manifest = Manifest::read(&roots.built_dir("m", "1", "k", "x86_64")).unwrap();
        assert!(manifest.autoinstall && manifest.image.contains("k1"), "{manifest:?}");
        assert_eq!(manifest.modules[0].file, Path::new("module/m.ko"));
        lc.install(&mv, &KernelTarget { release: "k".into(), arch: Some("x86_64".into()) }).await
    }

    #[tokio::test]
    async fn a_prebuilt_entry_installs_as_a_build_and_its_signature_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        install_prebuilt(dir.path(), ELF, (None, None), None).await.unwrap();
        assert!(installed(dir.path()));
        // The host's kernel signs modules: an unsigned file is refused, whatever the index says.
        for signed_by in [Some("f"), None] {
            let dir = tempfile::tempdir().unwrap();
            let err = install_prebuilt(dir.path(), ELF, (signed_by, None), Some("sha256")).await.unwrap_err();
            assert_eq!(err.exit_code(), code::BAD_MODULE_SIGNATURE, "{err}");
            assert!(!installed(dir.path()), "installed with an index signer {signed_by:?}");
        }
        // An index claiming a signer does not make an unsigning kernel require one.
        let dir = tempfile::tempdir().unwrap();
        install_prebuilt(dir.path(), ELF, (Some("f"), None), None).await.unwrap();
        assert!(installed(dir.path()));
    }

    const ELF: &[u8] = b"\x7fELF";

    #[tokio::test]
    async fn a_farm_signed_module_verifies_with_the_certificate_its_cache_published() {
        let farm = tempfile::tempdir().unwrap();
        let signer = own_pair(farm.path());
        let der = std::fs::read(farm.path().join("var/lib/ckms/mok.pub")).unwrap();
        let module = sign::sign(ELF, &signer, "sha256", Path::new("m.ko")).unwrap();
        let fp = signer.fingerprint();
        let published = |der: &[u8]| (Some(fp.as_str()), Some(der.to_vec()));

        // A host with no certificate of its own: the cache's verifies the farm's signature.
        let dir = tempfile::tempdir().unwrap();
        install_prebuilt(dir.path(), &module, published(&der), Some("sha256")).await.unwrap();
        assert!(installed(dir.path()));
        assert_eq!(std::fs::read(dir.path().join("var/lib/ckms/m/1/k/x86_64").join(SIGNER_CERT)).unwrap(), der);
        // Without it, nothing verifies the module: refused, nothing installed.
        let dir = tempfile::tempdir().unwrap();
        let err = install_prebuilt(dir.path(), &module, (Some(fp.as_str()), None), Some("sha256")).await.unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(!installed(dir.path()));
        // Another certificate (the host's own, published in its place) does not verify it.
        let dir = tempfile::tempdir().unwrap();
        own_pair(dir.path());
        let other = std::fs::read(dir.path().join("var/lib/ckms/mok.pub")).unwrap();
        let err = install_prebuilt(dir.path(), &module, published(&other), Some("sha256")).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_MODULE_SIGNATURE, "{err}");
        assert!(!installed(dir.path()));
    }

    #[tokio::test]
    async fn unsigned_modules_install_where_the_kernel_does_not_sign() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), built(dir.path(), b"\x7fELF", false)).await.unwrap();
        assert!(installed(dir.path()));
    }
}
