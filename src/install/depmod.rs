//! depmod after the install tree changed: the host's own, with `-b` when the tree is not
//! `/lib/modules`.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::InstallError;

/// Refreshes a kernel's module index after files changed.
pub trait Depmod {
    /// Runs it; `Err` carries its stderr.
    fn run(&self, install_tree: &Path, kernel: &str) -> Result<(), String>;
    /// Whether it can run at all for `install_tree`; asked before anything is changed.
    fn check(&self, _install_tree: &Path) -> Result<(), InstallError> {
        Ok(())
    }
}

/// The host's `depmod` (from kmod).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostDepmod;

impl Depmod for HostDepmod {
    fn run(&self, install_tree: &Path, kernel: &str) -> Result<(), String> {
        let argv = depmod_argv(install_tree, kernel).map_err(|e| e.to_string())?;
        let prog = find_depmod().ok_or("depmod is not installed")?;
        let out = Command::new(&prog)
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", prog.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if stderr.is_empty() { format!("{} exited with {}", prog.display(), out.status) } else { stderr })
    }

    fn check(&self, install_tree: &Path) -> Result<(), InstallError> {
        depmod_argv(install_tree, "-")?;
        find_depmod()
            .map(drop)
            .ok_or_else(|| InstallError::NoDepmod { why: "depmod was not found in PATH, /usr/sbin or /sbin".into() })
    }
}

/// `depmod -a <kernel>`, with `-b <base>` when the install tree is not `/lib/modules`
/// (depmod always looks in `<base>/lib/modules`).
pub fn depmod_argv(install_tree: &Path, kernel: &str) -> Result<Vec<String>, InstallError> {
    let bad = || InstallError::DepmodTree { path: install_tree.to_path_buf() };
    let parts: Vec<Component> = install_tree.components().filter(|c| *c != Component::CurDir).collect();
    let n = parts.len();
    if n < 2 || parts[n - 2].as_os_str() != "lib" || parts[n - 1].as_os_str() != "modules" {
        return Err(bad());
    }
    let mut argv = vec!["depmod".to_string()];
    if parts != [Component::RootDir, Component::Normal(OsStr::new("lib")), Component::Normal(OsStr::new("modules"))] {
        let base: PathBuf = parts[..n - 2].iter().collect();
        let base = if base.as_os_str().is_empty() { ".".to_string() } else { base.to_str().ok_or_else(bad)?.into() };
        argv.extend(["-b".to_string(), base]);
    }
    argv.extend(["-a".to_string(), kernel.to_string()]);
    Ok(argv)
}

/// depmod lives in /sbin, which a non-login root shell on Debian may not have in PATH.
pub(super) fn find_depmod() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("depmod"))
        .find(|p| p.is_file())
}
