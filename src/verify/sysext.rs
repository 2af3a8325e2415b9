//! `ckms verify --sysext`: system extension images merged by the real `systemd-sysext merge`
//! in the VM, then the modules loaded by modprobe from the merged /usr, as an immutable host
//! loads them after boot.
//!
//! The VM's base /usr holds what a node has of its kernel for this, at their paths, from the
//! kernel's own package: the in-tree modules the extensions' modules depend on, those the
//! merge needs (loop devices, the images' filesystem, overlayfs) and the kernel's crypto and
//! library modules (what their soft dependencies name, e.g. erofs → libcrc32c → crc32c). The
//! VM indexes that base with depmod and loads the merge's modules with modprobe, as a node
//! does, before the merge. To know the extensions' dependencies the images are read on the
//! host with erofs-utils' `fsck.erofs --extract` or squashfs-tools' `unsquashfs` (the tools
//! `farm publish --format sysext` wrote them with).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::boot::BootKernel;
use super::initramfs::Node;
use super::{modinfo, VerifyError};

/// Where systemd-sysext looks for extensions.
const EXTENSIONS: &str = "/var/lib/extensions";
/// Directories of the kernel's package shipped whole into the base: soft dependencies name
/// aliases (crc32c), which only the index of the whole directory resolves.
const WHOLE: [&str; 3] = ["kernel/crypto/", "kernel/arch/x86/crypto/", "kernel/lib/"];

/// What the VM runs before modprobe: the base indexed and the merge's modules loaded, the
/// merge, then the extensions' own index hook. By their paths: busybox's sh prefers its own
/// applets (it has a modprobe and a depmod) to PATH; the hook runs in Debian's sh (dash),
/// which finds kmod's depmod first in PATH, as on a host.
fn prepare_script(merge_modules: &[String]) -> String {
    let bin = super::userland::BIN;
    format!(
        "#!/bin/sh\nset -e\nmkdir -p /run /tmp /var/tmp\nmount -t tmpfs ckms-run /run\nmount --make-rshared /\n{bin}/depmod\n\
         {bin}/modprobe -a -v {}\n{bin}/systemd-sysext merge\n{bin}/systemd-sysext status\n\
         PATH={bin}:/bin {bin}/sh /usr/lib/ckms/sysext-depmod\n",
        merge_modules.join(" ")
    )
}

/// What the VM gets for the images.
pub struct Prepared {
    pub nodes: BTreeMap<String, Node>,
    /// What the VM runs before modprobe.
    pub script: String,
    /// The modules asked for, each with the vermagic it was built for.
    pub modules: Vec<(String, Option<String>)>,
}

pub fn prepare(
    images: &[PathBuf],
    release: &str,
    names: &[String],
    kernel: &BootKernel,
) -> Result<Prepared, VerifyError> {
    let mut nodes = BTreeMap::new();
    let mut ours = Vec::new();
    let mut merge = vec!["loop".to_string(), "overlay".to_string()];
    let work = tempfile::tempdir().map_err(|e| tree_err(images, release, e.to_string()))?;
    for (i, image) in images.iter().enumerate() {
        let err = |m: String| tree_err(std::slice::from_ref(image), release, m);
        let bytes = std::fs::read(image).map_err(|e| err(e.to_string()))?;
        let file_name = image.file_name().and_then(|n| n.to_str()).ok_or_else(|| err("no file name".into()))?;
        let dir = work.path().join(i.to_string());
        let fs = extract(image, &bytes, &dir).map_err(err)?;
        merge.push(fs.into());
        nodes.insert(format!("{EXTENSIONS}/{file_name}"), Node::File { mode: 0o644, data: bytes });
        let kdir = dir.join("usr/lib/modules").join(release);
        for path in module_files(&kdir) {
            ours.push(super::read_module(&path)?);
        }
    }
    let own_names: Vec<String> = ours.iter().map(|c| c.name.clone()).collect();
    let files = kernel.modules().map_err(|e| super::package_err(release, "modules", e.to_string()))?;
    // A merge module the package does not ship is built in: nothing to load.
    merge.retain(|m| files.contains_key(m));
    merge.sort();
    merge.dedup();
    let depends = ours.iter().flat_map(|c| c.depends.clone()).chain(merge.iter().cloned());
    let mut base: Vec<String> = kernel.dependencies(release, depends, &own_names)?.into_keys().collect();
    let paths = kernel.module_paths().map_err(|e| super::package_err(release, "modules", e.to_string()))?;
    base.extend(
        paths
            .iter()
            .filter(|(_, rel)| WHOLE.iter().any(|w| rel.starts_with(w)))
            .filter_map(|(file, _)| modinfo::name_of_file(file)),
    );
    base.sort();
    base.dedup();
    for name in &base {
        let Some(file) = files.get(name) else { continue };
        let Some(rel) = file.file_name().and_then(|n| n.to_str()).and_then(|n| paths.get(n)) else { continue };
        let data = std::fs::read(file).map_err(|e| super::package_err(release, "modules", e.to_string()))?;
        nodes.insert(format!("/usr/lib/modules/{release}/{rel}"), Node::File { mode: 0o644, data });
    }
    let mut modules = Vec::new();
    for name in names {
        let wanted = modinfo::canonical(name);
        let c = ours
            .iter()
            .find(|c| c.name == wanted)
            .ok_or_else(|| tree_err(images, release, format!("no extension holds the module {name} for {release}")))?;
        modules.push((wanted, c.built_for.clone()));
    }
    Ok(Prepared { nodes, script: prepare_script(&merge), modules })
}

fn tree_err(images: &[PathBuf], release: &str, message: String) -> VerifyError {
    VerifyError::Tree { root: images.first().cloned().unwrap_or_default(), kernel: release.to_string(), message }
}

/// Extracts an erofs or squashfs image into `dir`; returns the filesystem's kernel module.
fn extract(image: &Path, bytes: &[u8], dir: &Path) -> Result<&'static str, String> {
    let erofs = bytes.get(1024..1028) == Some(&0xE0F5_E1E2u32.to_le_bytes()[..]);
    let squashfs = bytes.starts_with(b"hsqs");
    let (tool, package, fs, mut cmd) = if erofs {
        let mut c = Command::new("fsck.erofs");
        c.arg(format!("--extract={}", dir.display())).arg(image);
        ("fsck.erofs", "erofs-utils", "erofs", c)
    } else if squashfs {
        let mut c = Command::new("unsquashfs");
        c.args(["-no-xattrs", "-d"]).arg(dir).arg(image);
        ("unsquashfs", "squashfs-tools", "squashfs", c)
    } else {
        return Err("neither an erofs nor a squashfs image".into());
    };
    let out = cmd.output().map_err(|e| format!("{tool} (from {package}): {e}"))?;
    if !out.status.success() {
        return Err(format!("{tool}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(fs)
}

/// The module files under `dir`, sorted.
fn module_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).and_then(modinfo::name_of_file).is_some() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
