//! A module tree as its consumer leaves it (apt's /lib/modules, KMM's worker copy, a merged
//! system extension), put into the VM for `modprobe -d`: depmod's index of the tree and the
//! files its `modules.dep` names for the modules asked for, each at the path modprobe opens.
//!
//! The tree is read component by component, not through the host's own path resolution:
//! an absolute symlink in it (KMM's `host -> /lib/modules/<kver>`) means the consumer's root,
//! which in the VM is the kernel's own package, not this machine's /lib/modules.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::boot::BootKernel;
use super::initramfs::Node;
use super::modinfo;

/// Where the tree is in the VM: modprobe runs with `-d` this.
pub const ROOT: &str = "/ckms/root";
/// Symlinks followed before giving up (a loop).
const MAX_LINKS: usize = 32;

/// What the VM gets of the tree.
pub struct Probe {
    pub nodes: BTreeMap<String, Node>,
    /// The modules to load, as modprobe names them, with their files' bytes (for vermagic).
    pub modules: Vec<(String, String, Vec<u8>)>,
}

pub fn collect(root: &Path, release: &str, names: &[String], kernel: &BootKernel) -> Result<Probe, String> {
    let paths = kernel.module_paths().map_err(|e| format!("the kernel's module list: {e}"))?;
    let mut walk = Walk { root, release, kernel, paths, nodes: BTreeMap::new() };
    let kdir = format!("{ROOT}/lib/modules/{release}");
    let dep_path = walk.file(&format!("{kdir}/modules.dep"))?;
    let dep = match walk.nodes.get(&dep_path) {
        Some(Node::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
        _ => String::new(),
    };
    // depmod's other indexes, those that exist (modprobe reads the .bin ones first).
    for index in [
        "dep.bin",
        "alias",
        "alias.bin",
        "symbols",
        "symbols.bin",
        "softdep",
        "builtin",
        "builtin.bin",
        "builtin.alias.bin",
    ] {
        let vm = format!("{kdir}/modules.{index}");
        if walk.exists(&vm) {
            walk.file(&vm)?;
        }
    }
    let mut modules = Vec::new();
    for name in names {
        let wanted = modinfo::canonical(name);
        let line = dep
            .lines()
            .find(|l| {
                let file = l.split(':').next().unwrap_or_default().rsplit('/').next().unwrap_or_default();
                modinfo::name_of_file(file).as_deref() == Some(wanted.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "{name} is not in {}/lib/modules/{release}/modules.dep (run depmod for {release} there?)",
                    root.display()
                )
            })?;
        let (own, deps) = line.split_once(':').unwrap_or((line, ""));
        let own_vm = walk.file(&format!("{kdir}/{}", own.trim()))?;
        for d in deps.split_whitespace() {
            walk.file(&format!("{kdir}/{d}"))?;
        }
        let bytes = match walk.nodes.get(&own_vm) {
            Some(Node::File { data, .. }) => data.clone(),
            _ => Vec::new(),
        };
        modules.push((wanted, own.rsplit('/').next().unwrap_or_default().to_string(), bytes));
    }
    Ok(Probe { nodes: walk.nodes, modules })
}

struct Walk<'a> {
    root: &'a Path,
    release: &'a str,
    kernel: &'a BootKernel,
    /// The kernel's modules: file name → path under lib/modules/<release>.
    paths: BTreeMap<String, String>,
    nodes: BTreeMap<String, Node>,
}

impl Walk<'_> {
    fn exists(&mut self, vm: &str) -> bool {
        self.resolve(vm).is_ok_and(|r| match r {
            Resolved::Tree(host) => host.is_file(),
            Resolved::Kernel(..) => true,
        })
    }

    /// Adds the file at VM path `vm` (and the symlinks on the way to it); returns the path
    /// its bytes are at in the VM.
    fn file(&mut self, vm: &str) -> Result<String, String> {
        let (at, data) = match self.resolve(vm)? {
            Resolved::Tree(host) => {
                let data = fs::read(&host).map_err(|e| format!("{}: {e}", host.display()))?;
                (self.vm_of(&host), data)
            }
            Resolved::Kernel(at, file) => (at, fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?),
        };
        self.nodes.insert(at.clone(), Node::File { mode: 0o644, data });
        Ok(at)
    }

    fn vm_of(&self, host: &Path) -> String {
        let rel = host.strip_prefix(self.root).unwrap_or(host);
        format!("{ROOT}/{}", rel.display())
    }

    fn resolve(&mut self, vm: &str) -> Result<Resolved, String> {
        let mut path = vm.to_string();
        for _ in 0..MAX_LINKS {
            if let Some(rest) = path.strip_prefix(&format!("{ROOT}/")) {
                match self.step(rest)? {
                    Step::Done(host) => return Ok(Resolved::Tree(host)),
                    Step::Link(next) => path = next,
                }
            } else {
                let kdir = format!("/lib/modules/{}/", self.release);
                let rel = path
                    .strip_prefix(&kdir)
                    .or_else(|| path.strip_prefix("/usr").and_then(|p| p.strip_prefix(&kdir)))
                    .ok_or_else(|| format!("{vm} leads to {path}, outside the tree and the kernel's modules"))?;
                let file_name = rel.rsplit('/').next().unwrap_or_default();
                if self.paths.get(file_name).map(String::as_str) != Some(rel) {
                    return Err(format!("{vm} leads to {path}, which the kernel's package does not have"));
                }
                return Ok(Resolved::Kernel(path.clone(), self.kernel.dir.join("modules").join(file_name)));
            }
        }
        Err(format!("{vm}: too many symbolic links"))
    }

    /// Walks `rest` (relative to the tree) until a symlink, recording it as a VM node.
    fn step(&mut self, rest: &str) -> Result<Step, String> {
        let mut host = self.root.to_path_buf();
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        for (i, part) in parts.iter().enumerate() {
            host.push(part);
            let meta = fs::symlink_metadata(&host).map_err(|e| format!("{}: {e}", host.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host).map_err(|e| format!("{}: {e}", host.display()))?;
                let target = target.to_string_lossy().into_owned();
                let link_vm = self.vm_of(&host);
                self.nodes.insert(link_vm.clone(), Node::Symlink(target.clone()));
                let base = if target.starts_with('/') {
                    target
                } else {
                    let dir = link_vm.rsplit_once('/').map(|(d, _)| d).unwrap_or(ROOT);
                    normalize(&format!("{dir}/{target}"))
                };
                let remaining = parts[i + 1..].join("/");
                let next =
                    if remaining.is_empty() { base } else { format!("{}/{remaining}", base.trim_end_matches('/')) };
                return Ok(Step::Link(normalize(&next)));
            }
        }
        Ok(Step::Done(host))
    }
}

enum Resolved {
    Tree(PathBuf),
    /// VM path, and the kernel package's file.
    Kernel(String, PathBuf),
}

enum Step {
    Done(PathBuf),
    Link(String),
}

/// `a/./b/../c` → `a/c` (an absolute path stays absolute).
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(dir: &Path) -> BootKernel {
        fs::create_dir_all(dir.join("modules")).unwrap();
        fs::write(dir.join("vmlinuz"), b"k").unwrap();
        fs::write(dir.join("modules/videodev.ko"), b"VIDEODEV").unwrap();
        fs::write(dir.join("modules/mc.ko"), b"MC").unwrap();
        fs::write(dir.join("paths"), "kernel/drivers/media/v4l2-core/videodev.ko\nkernel/drivers/media/mc/mc.ko\n")
            .unwrap();
        BootKernel::existing(dir).unwrap()
    }

    #[test]
    fn kmm_tree_reaches_in_tree_modules_through_its_host_link() {
        let t = tempfile::tempdir().unwrap();
        let k = kernel(&t.path().join("boot"));
        let kdir = t.path().join("tree/lib/modules/6.1.0-56-amd64");
        fs::create_dir_all(kdir.join("updates/dkms")).unwrap();
        fs::write(kdir.join("updates/dkms/v4l2loopback.ko.xz"), b"OURS").unwrap();
        std::os::unix::fs::symlink("/lib/modules/6.1.0-56-amd64", kdir.join("host")).unwrap();
        fs::write(
            kdir.join("modules.dep"),
            "updates/dkms/v4l2loopback.ko.xz: host/kernel/drivers/media/v4l2-core/videodev.ko host/kernel/drivers/media/mc/mc.ko\n\
             host/kernel/drivers/media/mc/mc.ko:\n",
        )
        .unwrap();
        let p = collect(&t.path().join("tree"), "6.1.0-56-amd64", &["v4l2loopback".into()], &k).unwrap();
        let at = |p: &str| format!("{ROOT}/lib/modules/6.1.0-56-amd64/{p}");
        assert_eq!(p.nodes.get(&at("host")), Some(&Node::Symlink("/lib/modules/6.1.0-56-amd64".into())));
        assert!(matches!(p.nodes.get("/lib/modules/6.1.0-56-amd64/kernel/drivers/media/mc/mc.ko"),
            Some(Node::File { data, .. }) if data == b"MC"));
        assert!(p.nodes.contains_key(&at("updates/dkms/v4l2loopback.ko.xz")));
        assert!(p.nodes.contains_key(&at("modules.dep")));
        assert_eq!(p.modules[0].0, "v4l2loopback");
        assert_eq!(p.modules[0].2, b"OURS");
    }

    #[test]
    fn relative_links_stay_in_the_tree_and_unknown_modules_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let k = kernel(&t.path().join("boot"));
        let root = t.path().join("tree");
        let kdir = root.join("usr/lib/modules/6.1.0-56-amd64");
        fs::create_dir_all(kdir.join("kernel/drivers/media/mc")).unwrap();
        fs::write(kdir.join("kernel/drivers/media/mc/mc.ko"), b"MC").unwrap();
        fs::write(kdir.join("modules.dep"), "kernel/drivers/media/mc/mc.ko:\n").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        let p = collect(&root, "6.1.0-56-amd64", &["mc".into()], &k).unwrap();
        assert_eq!(p.nodes.get(&format!("{ROOT}/lib")), Some(&Node::Symlink("usr/lib".into())));
        assert!(p.nodes.contains_key(&format!("{ROOT}/usr/lib/modules/6.1.0-56-amd64/kernel/drivers/media/mc/mc.ko")));
        let err = collect(&root, "6.1.0-56-amd64", &["nope".into()], &k).err().unwrap();
        assert!(err.contains("nope is not in"), "{err}");
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("/ckms/root/lib/../usr/lib/./x"), "/ckms/root/usr/lib/x");
    }
}
