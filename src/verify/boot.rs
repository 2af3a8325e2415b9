//! What the VM boots: the target kernel's own `vmlinuz` and in-tree modules, from its
//! linux-image package, extracted once per package into the cache; and busybox for the
//! initramfs, from the profile's busybox package.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::modinfo;
use crate::deb::{data_tar_threaded, read_data_file};

/// One kernel package's boot files in the cache: `vmlinuz`, `modules/<file name>`, and
/// `paths`: each module's path under `lib/modules/<release>/` in the package, a line each.
pub struct BootKernel {
    pub dir: PathBuf,
}

const PATHS: &str = "paths";
/// `alias module` lines: the kernel's plain aliases (see [`BootKernel::add_softdeps`]).
const ALIASES: &str = "aliases";

impl BootKernel {
    /// The boot files extracted into `dir` earlier, if they are there (an extraction of an
    /// older ckms, without `paths`, is redone).
    pub fn existing(dir: &Path) -> Option<BootKernel> {
        (dir.join("vmlinuz").is_file() && dir.join(PATHS).is_file()).then(|| BootKernel { dir: dir.to_path_buf() })
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// Every in-tree module of the kernel: name → file.
    pub fn modules(&self) -> io::Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(self.dir.join("modules"))? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str().and_then(modinfo::name_of_file) {
                out.insert(name, entry.path());
            }
        }
        Ok(out)
    }

    /// The in-tree modules that `depends` needs, transitively, read as the walk reaches them
    /// (a handful, not thousands); names in `skip` are provided otherwise.
    pub(crate) fn dependencies(
        &self,
        release: &str,
        depends: impl IntoIterator<Item = String>,
        skip: &[String],
    ) -> Result<BTreeMap<String, super::Candidate>, super::VerifyError> {
        let in_tree = self.modules().map_err(|e| super::package_err(release, "modules", e.to_string()))?;
        let mut found = BTreeMap::new();
        let mut queue: Vec<String> = depends.into_iter().collect();
        while let Some(name) = queue.pop() {
            if found.contains_key(&name) || skip.contains(&name) {
                continue;
            }
            let Some(path) = in_tree.get(&name) else { continue };
            let mut m = super::read_module(path)?;
            self.add_softdeps(release, &mut m)?;
            queue.extend(m.depends.iter().cloned());
            found.insert(name, m);
        }
        Ok(found)
    }

    /// Adds to a module's dependencies the in-tree modules its `softdep=` pre names stand for
    /// (a module's name, else every module with that alias, as modprobe resolves it); names
    /// the kernel does not have are left out, as modprobe leaves them.
    pub(crate) fn add_softdeps(&self, release: &str, m: &mut super::Candidate) -> Result<(), super::VerifyError> {
        if m.soft.is_empty() {
            return Ok(());
        }
        let err = |e: io::Error| super::package_err(release, "modules", e.to_string());
        let in_tree = self.modules().map_err(err)?;
        let mut aliases = None;
        for name in std::mem::take(&mut m.soft) {
            let direct = modinfo::canonical(&name);
            let found = if in_tree.contains_key(&direct) {
                vec![direct]
            } else {
                if aliases.is_none() {
                    aliases = Some(self.aliases(&in_tree).map_err(err)?);
                }
                aliases.as_ref().and_then(|a| a.get(&name)).cloned().unwrap_or_default()
            };
            for f in found {
                if f != m.name && !m.depends.contains(&f) {
                    m.depends.push(f);
                }
            }
        }
        Ok(())
    }

    /// Plain alias → in-tree modules, read from every module's `.modinfo` the first time a
    /// softdep needs it (a few seconds) and kept beside the modules.
    fn aliases(&self, in_tree: &BTreeMap<String, PathBuf>) -> io::Result<BTreeMap<String, Vec<String>>> {
        let file = self.dir.join(ALIASES);
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(_) => {
                let mut text = String::new();
                for (name, path) in in_tree {
                    // A module that does not parse names no alias; its load says why, if needed.
                    let Ok((_, info)) = super::decompressed(path, &fs::read(path)?) else { continue };
                    for alias in info.plain_aliases() {
                        text.push_str(&format!("{alias} {name}\n"));
                    }
                }
                let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
                fs::write(tmp.path(), &text)?;
                tmp.persist(&file).map_err(|e| e.error)?;
                text
            }
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (alias, name) in text.lines().filter_map(|l| l.split_once(' ')) {
            out.entry(alias.to_string()).or_default().push(name.to_string());
        }
        Ok(out)
    }

    /// Every in-tree module's path under `lib/modules/<release>/` (`kernel/drivers/...`),
    /// by file name: where a node that installed the package has it.
    pub fn module_paths(&self) -> io::Result<BTreeMap<String, String>> {
        let text = fs::read_to_string(self.dir.join(PATHS))?;
        Ok(text.lines().filter_map(|rel| Some((rel.rsplit('/').next()?.to_string(), rel.to_string()))).collect())
    }
}

/// Extracts `boot/vmlinuz-<release>` and every module under `lib/modules/<release>/` from the
/// linux-image package at `deb` into `dir` (written beside it, renamed into place when whole,
/// so an interrupted extraction is redone rather than half used).
pub fn extract(deb: &Path, origin: &str, release: &str, dir: &Path) -> Result<BootKernel, String> {
    let parent = dir.parent().ok_or("no parent directory")?;
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".extract-").tempdir_in(parent).map_err(|e| e.to_string())?;
    fs::create_dir(tmp.path().join("modules")).map_err(|e| e.to_string())?;
    let file = fs::File::open(deb).map_err(|e| format!("{}: {e}", deb.display()))?;
    let data = data_tar_threaded(file, origin, 16 << 20).map_err(|e| e.to_string())?;
    let (kernel_file, modules_dir) = (format!("boot/vmlinuz-{release}"), format!("lib/modules/{release}/"));
    let mut archive = tar::Archive::new(data);
    let mut found_kernel = false;
    let mut paths = String::new();
    for entry in archive.entries().map_err(|e| format!("{origin}: {e}"))? {
        let mut entry = entry.map_err(|e| format!("{origin}: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let dest = if path.ends_with(&kernel_file) {
            found_kernel = true;
            tmp.path().join("vmlinuz")
        } else if let Some((_, rel)) = path.split_once(&modules_dir) {
            let file_name = path.rsplit('/').next().unwrap_or_default();
            if modinfo::name_of_file(file_name).is_none() {
                continue;
            }
            paths.push_str(rel);
            paths.push('\n');
            tmp.path().join("modules").join(file_name)
        } else {
            continue;
        };
        let mut out = fs::File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        io::copy(&mut entry, &mut out).map_err(|e| format!("{origin}: {e}"))?;
    }
    if !found_kernel {
        return Err(format!("{origin} holds no {kernel_file}"));
    }
    fs::write(tmp.path().join(PATHS), paths).map_err(|e| e.to_string())?;
    if dir.is_dir() && BootKernel::existing(dir).is_none() {
        // An older ckms's extraction, without `paths`: replaced by this one.
        fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match fs::rename(tmp.path(), dir) {
        Ok(()) => {
            // Renamed: nothing left for the guard to delete.
            let _ = tmp.keep();
        }
        // Another run got there first with the same package: use its copy (the guard drops ours).
        Err(_) if BootKernel::existing(dir).is_some() => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    Ok(BootKernel { dir: dir.to_path_buf() })
}

/// The file at `wanted` (a path suffix such as `bin/busybox`) in a package.
pub fn read_file(deb: &Path, origin: &str, wanted: &str) -> Result<Vec<u8>, String> {
    let file = fs::File::open(deb).map_err(|e| format!("{}: {e}", deb.display()))?;
    read_data_file(file, origin, wanted)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{origin} holds no {wanted}"))
}
