//! How a build in the dkms tree signs its modules, decided as dkms's `prepare_signing` and
//! `prepare_mok` decide (framework.conf's `sign_file`, `mok_signing_key`, `mok_certificate`;
//! the kernel's CONFIG_MODULE_SIG_HASH), and what dkms says about it before the build.
//!
//! One deliberate difference (docs/dkms-compat.md): a `sign_file` that is a kernel's
//! `scripts/sign-file` (dkms's default) is done in-process, byte for byte as that program,
//! so that a host without the kernel's headers or kbuild still signs. Any other program
//! framework.conf names is run as dkms runs it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Lifecycle, LifecycleError};
use crate::framework::Framework;
use crate::pair::realise::{ExternalSign, Key};
use crate::sign::{self, keys, KeyPaths, Signer};

/// The hash and key a build signs with.
pub(super) struct Signing {
    pub hash: String,
    pub key: TreeKey,
}

/// The tree's signing key: loaded, ckms's own to be made on first use, or a program.
pub(super) enum TreeKey {
    Loaded(Box<Signer>),
    Made(KeyPaths),
    External(Program),
}

impl TreeKey {
    pub fn as_key(&self) -> Key<'_> {
        match self {
            TreeKey::Loaded(signer) => Key::Loaded(signer),
            TreeKey::Made(paths) => Key::Made(paths),
            TreeKey::External(program) => Key::External(program),
        }
    }

    pub fn paths(&self) -> &KeyPaths {
        match self {
            TreeKey::Loaded(signer) => &signer.paths,
            TreeKey::Made(paths) => paths,
            TreeKey::External(program) => &program.paths,
        }
    }

    /// The modules the program failed to sign, with what it said (dkms warns for each).
    pub fn failures(&self) -> Vec<(String, String)> {
        match self {
            TreeKey::External(program) => program.failed.lock().map(|f| f.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// framework.conf's `sign_file` when it is not a kernel's sign-file: run as dkms runs it,
/// `<program> <hash> <key> <cert> <module>`, on the host (it is the host's configuration).
pub(super) struct Program {
    path: PathBuf,
    paths: KeyPaths,
    failed: Mutex<Vec<(String, String)>>,
}

impl ExternalSign for Program {
    fn sign(&self, module: &Path, built_name: &str, hash: &str) -> bool {
        let out = std::process::Command::new(&self.path)
            .arg(hash)
            .arg(&self.paths.key)
            .arg(&self.paths.cert)
            .arg(module)
            .stdin(std::process::Stdio::null())
            .output();
        let said = match out {
            Ok(out) if out.status.success() => return true,
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                text.trim_end().to_string()
            }
            Err(e) => format!("{}: {e}", self.path.display()),
        };
        if let Ok(mut failed) = self.failed.lock() {
            failed.push((built_name.to_string(), said));
        }
        false
    }

    fn fingerprint(&self) -> Option<String> {
        let der = std::fs::read(&self.paths.cert).ok()?;
        let cert = openssl::x509::X509::from_der(&der).or_else(|_| openssl::x509::X509::from_pem(&der)).ok()?;
        Some(keys::fingerprint(&cert))
    }
}

/// What dkms says about signing before a build (the `sign_prologue` line's values).
#[derive(Debug, Default, serde::Serialize)]
struct Prologue {
    /// The kernel has CONFIG_MODULE_SIG_HASH.
    facility: bool,
    command: String,
    /// The command exists (or is done in-process).
    binary: bool,
    key: String,
    cert: String,
    /// "key" or "cert": that file is missing and could not be made.
    missing: Option<&'static str>,
}

impl Lifecycle<'_> {
    /// How `kernel`'s modules are signed (None: they are not), with what dkms says about it,
    /// to be said by [`Lifecycle::say_signing`] when dkms would (not for a module that
    /// BUILD_EXCLUSIVE excludes: dkms stops before).
    pub(super) fn signing(
        &self,
        kernel: &str,
        kconfig: Option<&str>,
    ) -> Result<(Option<Signing>, serde_json::Value), LifecycleError> {
        let (prologue, signing) = self.sign_plan(kernel, kconfig)?;
        if let Some(s) = &signing {
            let shown = s.key.paths();
            self.report().detail(format!(
                "Modules will be signed ({}) with the key {} and certificate {}",
                s.hash,
                shown.key_shown(),
                shown.cert.display()
            ));
        }
        Ok((signing, serde_json::to_value(&prologue).unwrap_or_default()))
    }

    /// Says the signing prologue for `kernel`, once per kernel, as dkms does.
    pub(super) fn say_signing(&self, kernel: &str, prologue: serde_json::Value) {
        let first = self.prepared.lock().map(|mut p| p.replace(kernel.to_string()).as_deref() != Some(kernel));
        if first.unwrap_or(true) {
            self.say("sign_prologue", prologue);
        }
    }

    fn sign_plan(&self, kernel: &str, kconfig: Option<&str>) -> Result<(Prologue, Option<Signing>), LifecycleError> {
        let Some(hash) = kconfig.and_then(sign::kernel_hash) else {
            return Ok((Prologue::default(), None));
        };
        if !self.ctx.config.sign_enabled() {
            self.report().detail("Module signing is turned off ([sign] enabled = false): modules won't be signed");
            return Ok((Prologue::default(), None));
        }
        let framework = Framework::read(&self.ctx.config.conf_dir());
        let configured = framework.path("sign_file", Some(kernel));
        let command = configured.clone().unwrap_or_else(|| self.default_sign_file(kernel));
        let in_process = command.file_name().is_some_and(|n| n == "sign-file");
        let mut locations = self.ctx.config.key_locations(&self.roots.dkms_tree);
        locations.kernel = Some(kernel.to_string());
        let paths = locations.resolve(None, None);
        let mut prologue = Prologue {
            facility: true,
            command: command.display().to_string(),
            binary: in_process || is_executable(&command),
            key: paths.key_shown(),
            cert: paths.cert.display().to_string(),
            missing: None,
        };
        if !prologue.binary {
            return Ok((prologue, None));
        }
        let token = sign::token::uri(&paths.key).is_some();
        let key = if self.ctx.as_dkms && !token && !(paths.key.is_file() && paths.cert.is_file()) {
            // dkms makes the pair wherever it is configured (openssl writes into existing
            // directories only), and builds unsigned when it cannot.
            self.report().info("Certificate or key are missing, generating self signed certificate for MOK...");
            let dir_of = |p: &Path| p.parent().is_some_and(|d| d.as_os_str().is_empty() || d.is_dir());
            prologue.missing = match (dir_of(&paths.key), dir_of(&paths.cert)) {
                (false, _) => Some("key"),
                (true, false) => Some("cert"),
                (true, true) => None,
            };
            match prologue.missing {
                None => match keys::generate(&paths, true) {
                    Ok(signer) => TreeKey::Loaded(Box::new(signer)),
                    Err(e) => {
                        prologue.missing = Some(if paths.key.is_file() { "cert" } else { "key" });
                        self.report().detail(e.to_string());
                        return Ok((prologue, None));
                    }
                },
                Some(_) => return Ok((prologue, None)),
            }
        } else if sign::needs_generating(&paths) {
            TreeKey::Made(paths.clone())
        } else {
            TreeKey::Loaded(Box::new(Signer::load(&paths, sign::pin().as_deref())?))
        };
        let key = match (in_process, key) {
            (true, key) => key,
            (false, key) => {
                TreeKey::External(Program { path: command, paths: key.paths().clone(), failed: Mutex::default() })
            }
        };
        Ok((prologue, Some(Signing { hash, key })))
    }

    /// dkms's sign_file when framework.conf names none: the distribution's (the dialect's
    /// `default_sign_file`, when that file exists), else the kernel's build tree's.
    fn default_sign_file(&self, kernel: &str) -> PathBuf {
        let series = kernel.rsplit_once('.').map_or(kernel, |(s, _)| s);
        let distro =
            self.ctx.dialect().line("default_sign_file", serde_json::json!({ "kernel": kernel, "series": series }));
        match distro.is_empty() {
            false if Path::new(&distro).is_file() => PathBuf::from(distro),
            _ => self.roots.install_tree.join(kernel).join("build/scripts/sign-file"),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
