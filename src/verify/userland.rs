//! The distribution's own tools in the VM (`ckms verify --tree/--sysext`): kmod's modprobe
//! and depmod, systemd-sysext, taken from their packages with the shared libraries their
//! dependencies ship, at the paths the packages give them, and started through the dynamic
//! loader so that no ld.so cache has to be right in a rootfs that is not a whole system.
//! busybox's modprobe has no `-d`, and neither it nor busybox's tools are what a node runs.
//!
//! The VM's root is laid out merged-/usr as Debian's is (`/lib -> usr/lib`): systemd-sysext
//! merges over /usr, and modprobe must find the merged modules through /lib/modules.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use regex::Regex;

use super::initramfs::Node;
use crate::deb::data_tar;

/// Where the tools' wrappers are in the VM; init puts it first in PATH.
pub const BIN: &str = "/ckms/bin";

/// A file to take from a package: `binary` is a path suffix, `at` its place in the VM.
pub struct Want<'a> {
    pub package: &'a str,
    pub binary: &'a str,
    pub at: String,
    pub mode: u32,
}

/// A shared library directly in a library directory (`lib/x86_64-linux-gnu/libzstd.so.1`,
/// `usr/lib64/ld-linux-x86-64.so.2`) or systemd's private one, not plugins (glibc's gconv).
fn library() -> Regex {
    Regex::new(r"^(usr/)?lib(32|64|x32)?/([a-z0-9_]+-linux-[a-z0-9_]+/)?(systemd/)?[^/]*\.so(\.[0-9.]+)?$")
        .expect("a valid regex")
}

/// The wanted files and the libraries of `debs` (package name, cached file).
pub fn nodes(wants: &[Want], debs: &[(String, PathBuf)]) -> Result<BTreeMap<String, Node>, String> {
    let library = library();
    let mut nodes = BTreeMap::new();
    let mut found = vec![false; wants.len()];
    for (name, deb) in debs {
        let file = std::fs::File::open(deb).map_err(|e| format!("{}: {e}", deb.display()))?;
        let data = data_tar(file, name).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(data);
        for entry in archive.entries().map_err(|e| format!("{name}: {e}"))? {
            let mut entry = entry.map_err(|e| format!("{name}: {e}"))?;
            let path = entry.path().map_err(|e| format!("{name}: {e}"))?.to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").to_string();
            let kind = entry.header().entry_type();
            let wanted = wants.iter().position(|w| w.package == name && kind.is_file() && path.ends_with(w.binary));
            let node = if kind.is_symlink() && library.is_match(&path) {
                let target = entry.link_name().map_err(|e| format!("{name}: {e}"))?.unwrap_or_default();
                Node::Symlink(target.to_string_lossy().into_owned())
            } else if kind.is_file() && (wanted.is_some() || library.is_match(&path)) {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| format!("{name}: {e}"))?;
                Node::File { mode: 0o755, data }
            } else {
                continue;
            };
            match (wanted, node) {
                (Some(i), Node::File { data, .. }) => {
                    found[i] = true;
                    nodes.insert(wants[i].at.clone(), Node::File { mode: wants[i].mode, data });
                }
                (_, node) => {
                    nodes.insert(format!("/{path}"), node);
                }
            }
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(format!("{} holds no {}", wants[i].package, wants[i].binary));
    }
    Ok(nodes)
}

/// A script at `BIN/<name>` that starts the binary at `target` through the libraries' loader,
/// as `argv0` (kmod picks its tool by its name).
pub fn wrapper(nodes: &BTreeMap<String, Node>, target: &str, argv0: &str) -> Result<Node, String> {
    let loader = nodes
        .keys()
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("ld-linux")))
        .ok_or_else(|| "no dynamic loader (ld-linux) among the tools' dependencies".to_string())?;
    let mut dirs: Vec<&str> = nodes
        .keys()
        .filter(|p| library().is_match(p.trim_start_matches('/')))
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
        .collect();
    dirs.sort();
    dirs.dedup();
    let script =
        format!("#!/bin/sh\nexec {loader} --argv0 {argv0} --library-path {} {target} \"$@\"\n", dirs.join(":"));
    Ok(Node::File { mode: 0o755, data: script.into_bytes() })
}

/// The nodes laid out merged-/usr: `/lib/...` as `/usr/lib/...`, and `/lib -> usr/lib`.
pub fn merged_usr(nodes: BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut links = BTreeMap::new();
    for (path, node) in nodes {
        let top = path.trim_start_matches('/').split('/').next().unwrap_or_default().to_string();
        if top.starts_with("lib") && path.len() > top.len() + 1 {
            links.insert(format!("/{top}"), Node::Symlink(format!("usr/{top}")));
            out.insert(format!("/usr{path}"), node);
        } else {
            out.insert(path, node);
        }
    }
    out.extend(links);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_the_shared_objects_of_library_directories_only() {
        let re = library();
        for yes in [
            "lib/x86_64-linux-gnu/libzstd.so.1",
            "usr/lib/x86_64-linux-gnu/libzstd.so.1.5.4",
            "lib64/ld-linux-x86-64.so.2",
            "usr/lib64/ld-linux-x86-64.so.2",
            "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "usr/lib/x86_64-linux-gnu/gconv/IBM1047.so",
            "usr/share/doc/libc6/copyright",
            "bin/kmod",
            "usr/lib/x86_64-linux-gnu/libzstd.a",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    #[test]
    fn wrappers_start_the_binary_through_the_loader_with_every_library_directory() {
        let file = || Node::File { mode: 0o755, data: vec![] };
        let nodes = BTreeMap::from([
            ("/lib64/ld-linux-x86-64.so.2".to_string(), Node::Symlink("/lib/x86_64-linux-gnu/ld.so".into())),
            ("/lib/x86_64-linux-gnu/libc.so.6".to_string(), file()),
            ("/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so".to_string(), file()),
            ("/ckms/lib/kmod".to_string(), file()),
        ]);
        let Node::File { data, .. } = wrapper(&nodes, "/ckms/lib/kmod", "modprobe").unwrap() else { panic!() };
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "#!/bin/sh\nexec /lib64/ld-linux-x86-64.so.2 --argv0 modprobe --library-path \
             /lib/x86_64-linux-gnu:/lib64:/usr/lib/x86_64-linux-gnu/systemd /ckms/lib/kmod \"$@\"\n"
        );
        let merged = merged_usr(nodes);
        assert!(merged.contains_key("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(merged.get("/lib"), Some(&Node::Symlink("usr/lib".into())));
        assert_eq!(merged.get("/lib64"), Some(&Node::Symlink("usr/lib64".into())));
        assert!(merged.contains_key("/ckms/lib/kmod"));
    }
}
