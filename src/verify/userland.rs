//! The distribution's own modprobe in the VM (`ckms verify --tree`): kmod's binary from its
//! package and the shared libraries its dependencies ship, at the paths the packages give
//! them, started through the dynamic loader so that no ld.so cache or library path has to be
//! right in a rootfs that is not a whole system. busybox's modprobe has no `-d`, and it is not
//! what a node runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use regex::Regex;

use super::initramfs::Node;

/// Where kmod goes in the VM, and the modprobe that starts it.
pub const KMOD: &str = "/ckms/bin/kmod";
pub const MODPROBE: &str = "/ckms/bin/modprobe";

/// A library directly in a library directory (`lib/x86_64-linux-gnu/libzstd.so.1`,
/// `usr/lib64/ld-linux-x86-64.so.2`), not plugins below it (glibc's gconv).
fn library() -> Regex {
    Regex::new(r"^(usr/)?lib(32|64|x32)?/([a-z0-9_]+-linux-[a-z0-9_]+/)?[^/]*\.so(\.[0-9.]+)?$").expect("a valid regex")
}

/// kmod (`binary`, a path suffix in the package `package`) and the libraries of `debs`
/// (package name, cached file): every node to add to the initramfs.
pub fn nodes(package: &str, binary: &str, debs: &[(String, PathBuf)]) -> Result<BTreeMap<String, Node>, String> {
    let library = library();
    let mut nodes = BTreeMap::new();
    let mut found = false;
    for (name, deb) in debs {
        let file = std::fs::File::open(deb).map_err(|e| format!("{}: {e}", deb.display()))?;
        let data = crate::deb::data_tar(file, name).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(data);
        for entry in archive.entries().map_err(|e| format!("{name}: {e}"))? {
            let mut entry = entry.map_err(|e| format!("{name}: {e}"))?;
            let path = entry.path().map_err(|e| format!("{name}: {e}"))?.to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").to_string();
            let kind = entry.header().entry_type();
            if name == package && kind.is_file() && path.ends_with(binary) {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(|e| format!("{name}: {e}"))?;
                nodes.insert(KMOD.to_string(), Node::File { mode: 0o755, data });
                found = true;
            } else if library.is_match(&path) {
                let node = if kind.is_symlink() {
                    let target = entry.link_name().map_err(|e| format!("{name}: {e}"))?.unwrap_or_default();
                    Node::Symlink(target.to_string_lossy().into_owned())
                } else if kind.is_file() {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(|e| format!("{name}: {e}"))?;
                    Node::File { mode: 0o755, data }
                } else {
                    continue;
                };
                nodes.insert(format!("/{path}"), node);
            }
        }
    }
    if !found {
        return Err(format!("{package} holds no {binary}"));
    }
    let loader = nodes
        .keys()
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("ld-linux")))
        .cloned()
        .ok_or_else(|| "no dynamic loader (ld-linux) in the dependencies of kmod".to_string())?;
    let mut dirs: Vec<&str> = nodes.keys().filter_map(|p| p.rsplit_once('/').map(|(d, _)| d)).collect();
    dirs.sort();
    dirs.dedup();
    // kmod picks its tool by argv[0]: --argv0 makes it modprobe.
    let script = format!(
        "#!/bin/sh\nexec {loader} --argv0 modprobe --library-path {} {KMOD} \"$@\"\n",
        dirs.iter().filter(|d| !d.starts_with("/ckms")).copied().collect::<Vec<_>>().join(":")
    );
    nodes.insert(MODPROBE.to_string(), Node::File { mode: 0o755, data: script.into_bytes() });
    Ok(nodes)
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
            "lib/x86_64-linux-gnu/libc.so.6",
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
}
