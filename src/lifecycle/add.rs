//! `add`: put a module source into the tree (`<dkms_tree>/<m>/<v>/source -> <source_tree>/<m>-<v>`),
//! with the Debian package it came from when ckms knows it (`<dkms_tree>/<m>/<v>/origin.json`).

use std::path::{Path, PathBuf};

use super::{Lifecycle, LifecycleError, ModuleVersion};
use crate::conf::Literal;
use crate::source::{self, from_deb, Origin};
use crate::tree;

/// What `add` was given.
#[derive(Debug, Clone)]
pub enum AddSource {
    /// `-m M -v V`: the source is already in `<source_tree>/<m>-<v>`.
    Tree(ModuleVersion),
    /// `add DIR`: a directory with a dkms.conf, copied to the source tree if elsewhere.
    Dir(PathBuf),
    /// `add FILE.tar.gz`: a source tarball (as `mktarball` writes, or a plain one).
    Tarball(PathBuf),
    /// `add FILE.deb`: a `*-dkms` package; its `/usr/src/<m>-<v>` is the source, and its
    /// control fields are recorded (`learned_from`: where the file came from, when not the
    /// file itself).
    Deb { file: PathBuf, learned_from: Option<String> },
}

/// What `add` did: `already` when the tree held that source for that version before (dkms's
/// `add` refuses that, exit 3; the farm and the implicit adds of build and install take it).
#[derive(Debug, Clone)]
pub struct Added {
    pub mv: ModuleVersion,
    pub already: bool,
}

impl Lifecycle<'_> {
    /// Adds a module version to the tree.
    pub fn add(&self, source: &AddSource, names: Option<&ModuleVersion>) -> Result<Added, LifecycleError> {
        let given = names.into_iter().chain(match source {
            AddSource::Tree(mv) => Some(mv),
            _ => None,
        });
        super::check_names(given.flat_map(|mv| [mv.module.as_str(), mv.version.as_str()]))?;
        let mut origin = None;
        let mv = match source {
            AddSource::Tree(mv) => mv.clone(),
            AddSource::Deb { file, learned_from } => {
                let tmp = self.scratch_dir(file)?;
                let unpacked = from_deb(file, tmp.path(), learned_from.clone())?;
                let mv = match names {
                    Some(mv) => mv.clone(),
                    None => names_of(&unpacked.dir, &unpacked.name)?,
                };
                origin = Some(unpacked.origin);
                self.import_dir(&unpacked.dir, Some(&mv))?
            }
            AddSource::Dir(dir) => self.import_dir(dir, names)?,
            AddSource::Tarball(file) => {
                // As dkms: `add TARBALL` is `ldtarball TARBALL`.
                let tmp = self.unpack(file)?;
                return Ok(Added { mv: self.load_unpacked(tmp.path(), file, names)?, already: false });
            }
        };
        let already = self.link_source(&mv)?;
        if let Some(origin) = origin {
            self.record_origin(&mv, &origin)?;
        }
        Ok(Added { mv, already })
    }

    /// `add deb:PACKAGE`: the package's newest version from the profile's signed repository
    /// (`--profile`, else the one of this host's distribution), added as its .deb.
    pub async fn add_package(&self, package: &str, names: Option<&ModuleVersion>) -> Result<Added, LifecycleError> {
        let profile = match &self.opts.profile {
            Some(name) => self.ctx.catalog.profile(name)?,
            None => {
                let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
                source::host_profile(&self.ctx.catalog, &os_release)?
            }
        };
        let (file, learned_from) = source::fetch(self.ctx, profile, package).await?;
        self.add(&AddSource::Deb { file, learned_from: Some(learned_from) }, names)
    }

    /// `add -m M -v V --package P` (common.postinst, with dpkg's DPKG_MAINTSCRIPT_PACKAGE):
    /// records the installed package's fields from the dpkg database beside the source tree.
    /// A package dpkg does not know is a warning: the build falls back to asking dpkg then.
    pub fn record_installed(&self, mv: &ModuleVersion, package: &str) -> Result<(), LifecycleError> {
        let name = format!("{}-{}", mv.module, mv.version);
        match source::installed(&self.roots.source_tree, &name, Some(package)) {
            Some(origin) => self.record_origin(mv, &origin),
            None => {
                self.report().warn(format!("{mv}: the dpkg database has no installed package {package}"));
                Ok(())
            }
        }
    }

    fn record_origin(&self, mv: &ModuleVersion, origin: &Origin) -> Result<(), LifecycleError> {
        let dir = self.roots.module_dir(&mv.module, &mv.version);
        origin.write(&dir).map_err(LifecycleError::io(dir.join(source::origin::FILE)))?;
        self.report().info(format!("{mv} comes from the package {} {}", origin.package, origin.version));
        Ok(())
    }

    /// A temporary directory beside the source tree (same file system: the copy is a rename
    /// away), else in /tmp.
    pub(super) fn scratch_dir(&self, file: &Path) -> Result<tempfile::TempDir, LifecycleError> {
        tempfile::Builder::new()
            .prefix(".ckms-add-")
            .tempdir_in(self.roots.source_tree.parent().unwrap_or(Path::new("/tmp")))
            .or_else(|_| tempfile::tempdir())
            .map_err(LifecycleError::io(file))
    }

    /// Makes sure `mv` is in the tree (build and install imply add).
    pub(super) fn ensure_added(&self, mv: &ModuleVersion) -> Result<(), LifecycleError> {
        if self.roots.module_dir(&mv.module, &mv.version).join("source").exists() {
            return Ok(());
        }
        self.check_not_broken(mv)?;
        self.link_source(mv)?;
        self.say("implicitly_added", serde_json::Value::Null);
        Ok(())
    }

    /// dkms's checks of the dkms.conf at `conf` (`strict`: as it is added), when it is plain
    /// assignments ([`Literal`]): warnings said, errors refuse it (exit 8), in dkms's words.
    /// `sourced`: dkms sources the conf anew (not when this invocation has read it already),
    /// and names its deprecated directives as it does.
    pub(super) fn check_conf(&self, conf: &Path, strict: bool, sourced: bool) -> Result<(), LifecycleError> {
        let Some(literal) = std::fs::read_to_string(conf).ok().as_deref().and_then(Literal::parse) else {
            return Ok(());
        };
        if strict && sourced {
            for name in literal.deprecated() {
                if let Some(line) =
                    self.ctx.dialect().said("deprecated", serde_json::json!({ "name": name, "conf": conf }))
                {
                    self.report().notice(line);
                }
            }
        }
        let found = literal.check(strict);
        if !found.errors.is_empty() {
            let file = std::path::absolute(conf).unwrap_or_else(|_| conf.to_path_buf());
            return Err(LifecycleError::BadConf { file, findings: found.errors });
        }
        for warning in found.warnings {
            self.report().notice(warning);
        }
        Ok(())
    }

    /// dkms's "is broken!": the version is in the tree, but its source (or the link to it) is
    /// not. Only `add` mends it.
    pub(super) fn check_not_broken(&self, mv: &ModuleVersion) -> Result<(), LifecycleError> {
        let dir = self.roots.module_dir(&mv.module, &mv.version);
        match dir.is_dir() && !dir.join("source").exists() {
            true => Err(LifecycleError::Broken { module: mv.module.clone(), version: mv.version.clone() }),
            false => Ok(()),
        }
    }

    /// A module source directory named to a verb (dkms 3.2: `build DIR`, `install
    /// DIR/dkms.conf`): copied into the source tree, as `add` does, but not yet added.
    pub fn import(&self, dir: &Path) -> Result<ModuleVersion, LifecycleError> {
        self.import_dir(dir, None)
    }

    /// Links the version's source into the tree; `true` when it was linked there already.
    pub(super) fn link_source(&self, mv: &ModuleVersion) -> Result<bool, LifecycleError> {
        let src = self.source_dir(mv);
        if !src.is_dir() {
            return Err(LifecycleError::NoSource(src));
        }
        if !src.join("dkms.conf").is_file() {
            return Err(LifecycleError::NoConf(src.join("dkms.conf")));
        }
        self.check_conf(&src.join("dkms.conf"), true, true)?;
        let dir = self.roots.module_dir(&mv.module, &mv.version);
        let link = dir.join("source");
        if link.is_dir() && !link.is_symlink() {
            // A binaries-only module (only its dkms.conf in the tree) gets its source.
            std::fs::remove_dir_all(&link).map_err(LifecycleError::io(&link))?;
        }
        if let Ok(existing) = std::fs::read_link(&link) {
            if existing == src {
                return Ok(true);
            }
            if !self.opts.force {
                return Err(LifecycleError::AlreadyAdded {
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    existing,
                });
            }
        }
        std::fs::create_dir_all(&dir).map_err(LifecycleError::io(&dir))?;
        tree::replace_symlink(&src, &link).map_err(LifecycleError::io(&link))?;
        self.say("added", serde_json::json!({ "link": link, "source": src }));
        Ok(false)
    }

    /// Copies `dir` to `<source_tree>/<m>-<v>` unless it is that directory already.
    pub(super) fn import_dir(
        &self,
        dir: &Path,
        names: Option<&ModuleVersion>,
    ) -> Result<ModuleVersion, LifecycleError> {
        let conf = dir.join("dkms.conf");
        let mv = match names {
            Some(mv) => mv.clone(),
            None => {
                let text = read_conf(&conf)?;
                self.check_conf(&conf, false, true)?;
                let get = |name| {
                    literal(&text, name).ok_or_else(|| LifecycleError::BadSource {
                        path: conf.clone(),
                        message: format!(
                            "{name} is not a plain value; ckms does not run a dkms.conf on the host: pass -m and -v"
                        ),
                    })
                };
                let mv = ModuleVersion { module: get("PACKAGE_NAME")?, version: get("PACKAGE_VERSION")? };
                // The names make the path the source is copied to: none may climb out.
                for (directive, value) in [("PACKAGE_NAME", &mv.module), ("PACKAGE_VERSION", &mv.version)] {
                    if !tree::valid_name(value) {
                        return Err(crate::conf::invalid(
                            &conf.display().to_string(),
                            directive,
                            format!("{value:?} is not a plain name"),
                            "use a name without '/', blanks, or a leading '.'",
                        )
                        .into());
                    }
                }
                mv
            }
        };
        let target = self.source_dir(&mv);
        let same = |a: &Path, b: &Path| std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok();
        if target.exists() {
            // The same directory, or a copy of it (a tarball loaded again after `remove`,
            // which keeps the source, as dkms's does): nothing to copy.
            if same(dir, &target) || same_contents(dir, &target) {
                return Ok(mv);
            }
            if !self.opts.force {
                return Err(LifecycleError::SourceDiffers {
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    existing: target,
                });
            }
        }
        copy_tree(dir, &target).map_err(LifecycleError::io(&target))?;
        Ok(mv)
    }
}

/// A package's source directory `<m>-<v>` split into module and version: at the literal
/// PACKAGE_NAME of its dkms.conf, else at its literal PACKAGE_VERSION.
fn names_of(dir: &Path, name: &str) -> Result<ModuleVersion, LifecycleError> {
    let conf = dir.join("dkms.conf");
    let text = read_conf(&conf)?;
    let split = literal(&text, "PACKAGE_NAME")
        .and_then(|m| Some((name.strip_prefix(&format!("{m}-"))?.to_string(), m)))
        .map(|(v, m)| (m, v))
        .or_else(|| {
            let v = literal(&text, "PACKAGE_VERSION")?;
            Some((name.strip_suffix(&format!("-{v}"))?.to_string(), v))
        });
    let (module, version) = split.ok_or_else(|| LifecycleError::BadSource {
        path: conf.clone(),
        message: format!("{name} is not <PACKAGE_NAME>-<PACKAGE_VERSION> as the conf writes them: pass -m and -v"),
    })?;
    super::check_names([module.as_str(), version.as_str()])?;
    Ok(ModuleVersion { module, version })
}

/// The value of `NAME=value` when it is a literal (quoted or not); None when bash would have
/// to compute it. The last assignment wins, as in bash.
fn literal(text: &str, name: &str) -> Option<String> {
    let mut value = None;
    for line in text.lines() {
        let line = line.trim().trim_end_matches('\r');
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('=')) else { continue };
        value = if let Some(single) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            Some(single)
        } else {
            let plain = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(rest);
            (!plain.contains(['$', '`', '\\', '"', '\'', ' ', ';'])).then_some(plain)
        }
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    }
    value
}

/// The directory holding dkms.conf in an unpacked tarball: the top, `dkms_source_tree/`
/// (mktarball's layout), or a single top-level directory.
pub(super) fn source_root(top: &Path) -> Option<PathBuf> {
    let candidates = [top.to_path_buf(), top.join("dkms_source_tree")];
    if let Some(found) = candidates.iter().find(|d| d.join("dkms.conf").is_file()) {
        return Some(found.clone());
    }
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(top).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    match dirs.as_slice() {
        [one] if one.join("dkms.conf").is_file() => Some(one.clone()),
        _ => None,
    }
}

/// Whether two directory trees hold the same names, file contents and modes, and link targets.
fn same_contents(a: &Path, b: &Path) -> bool {
    fn listing(dir: &Path) -> Option<Vec<std::fs::DirEntry>> {
        let mut v: Vec<_> = std::fs::read_dir(dir).ok()?.collect::<Result<_, _>>().ok()?;
        v.sort_by_key(|e| e.file_name());
        Some(v)
    }
    let (Some(la), Some(lb)) = (listing(a), listing(b)) else { return false };
    la.len() == lb.len()
        && la.iter().zip(&lb).all(|(ea, eb)| {
            use std::os::unix::fs::PermissionsExt;
            let (Ok(ma), Ok(mb)) = (std::fs::symlink_metadata(ea.path()), std::fs::symlink_metadata(eb.path())) else {
                return false;
            };
            ea.file_name() == eb.file_name()
                && if ma.is_dir() && mb.is_dir() {
                    same_contents(&ea.path(), &eb.path())
                } else if ma.is_symlink() && mb.is_symlink() {
                    std::fs::read_link(ea.path()).ok() == std::fs::read_link(eb.path()).ok()
                } else if ma.is_file() && mb.is_file() {
                    ma.len() == mb.len()
                        && ma.permissions().mode() & 0o111 == mb.permissions().mode() & 0o111
                        && std::fs::read(ea.path()).ok() == std::fs::read(eb.path()).ok()
                } else {
                    false
                }
        })
}

/// Copies a directory tree (files, dirs, symlinks as symlinks) into a fresh `to`, through a
/// temporary sibling renamed at the end so a half copy is never seen as a source.
pub(super) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".ckms-copy-").tempdir_in(parent)?;
    copy_into(from, tmp.path())?;
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, to)?;
    // tempdir creates 0700 directories; sources are world-readable like dkms's.
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755))
}

fn copy_into(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_into(&src, &dst)?;
        } else if meta.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// AUTOINSTALL as written: Some(true/false) when a literal (unset = false), None when bash
/// would compute it.
pub(super) fn autoinstall_setting(conf: &str) -> Option<bool> {
    let values: Vec<&str> =
        conf.lines().filter_map(|l| l.trim().trim_end_matches('\r').strip_prefix("AUTOINSTALL=")).collect();
    match values.last() {
        None => Some(false),
        // dkms: an empty AUTOINSTALL is off.
        Some(&("" | "\"\"" | "''")) => Some(false),
        Some(_) => literal(conf, "AUTOINSTALL").map(|v| v.starts_with(['y', 'Y'])),
    }
}

/// The BUILD_DEPENDS a dkms.conf's text assigns literally (`BUILD_DEPENDS="a"`,
/// `BUILD_DEPENDS[0]=a`, `BUILD_DEPENDS=(a "b")`): the order autoinstall takes modules in.
/// A conf that computes them is still built in a right order: its build asks for them.
pub(super) fn build_depends(conf: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in conf.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("BUILD_DEPENDS") else { continue };
        let rest = rest.strip_prefix('[').and_then(|r| r.split_once(']')).map_or(rest, |(_, after)| after);
        let Some(value) = rest.strip_prefix('=') else { continue };
        let value = value.trim();
        let items = value.strip_prefix('(').and_then(|v| v.split_once(')')).map_or(value, |(inside, _)| inside);
        for item in items.split_whitespace() {
            let item = item.trim_matches(['"', '\'']);
            if !item.is_empty() && !out.iter().any(|o| o == item) {
                out.push(item.to_string());
            }
        }
    }
    out
}

/// A dkms.conf's text: missing is [`LifecycleError::NoConf`], unreadable (permissions, not
/// text) an I/O error that names it.
fn read_conf(conf: &Path) -> Result<String, LifecycleError> {
    std::fs::read_to_string(conf).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LifecycleError::NoConf(conf.to_path_buf()),
        _ => LifecycleError::Io { path: conf.to_path_buf(), source: e },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_depends_as_written() {
        let conf = "BUILD_DEPENDS=\"a\"\nBUILD_DEPENDS[1]=b\nBUILD_DEPENDS_REBUILD=yes\nBUILD_DEPENDS=( 'c' \"a\" )\n";
        assert_eq!(build_depends(conf), ["a", "b", "c"]);
        assert!(build_depends("MAKE=make\n").is_empty());
    }

    #[test]
    fn literal_values_only() {
        let conf = "PACKAGE_NAME=\"v4l2loopback\"\nPACKAGE_VERSION=0.12.7\r\nMAKE=x\n";
        assert_eq!(literal(conf, "PACKAGE_NAME").as_deref(), Some("v4l2loopback"));
        assert_eq!(literal(conf, "PACKAGE_VERSION").as_deref(), Some("0.12.7"));
        assert_eq!(literal("PACKAGE_NAME='a'\n", "PACKAGE_NAME").as_deref(), Some("a"));
        assert_eq!(literal("PACKAGE_VERSION=\"$(cat VERSION)\"\n", "PACKAGE_VERSION"), None);
        assert_eq!(literal("PACKAGE_VERSION=`date`\n", "PACKAGE_VERSION"), None);
        assert_eq!(literal("X=1\n", "PACKAGE_NAME"), None);
    }

    #[test]
    fn autoinstall_as_written() {
        assert_eq!(autoinstall_setting("AUTOINSTALL=\"yes\"\n"), Some(true));
        assert_eq!(autoinstall_setting("MAKE=x\n"), Some(false));
        assert_eq!(autoinstall_setting("AUTOINSTALL=$(f)\n"), None);
        assert_eq!(autoinstall_setting("AUTOINSTALL=\"\"\n"), Some(false), "empty is off, as in dkms");
    }

    #[test]
    fn copies_count_as_the_same_source() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("dkms.conf"), "PACKAGE_NAME=x\n").unwrap();
        std::fs::write(a.join("sub/x.c"), "int x;\n").unwrap();
        std::os::unix::fs::symlink("sub/x.c", a.join("link")).unwrap();
        let b = d.path().join("b");
        copy_tree(&a, &b).unwrap();
        assert!(same_contents(&a, &b));
        std::fs::write(b.join("sub/x.c"), "int y;\n").unwrap();
        assert!(!same_contents(&a, &b));
        std::fs::write(b.join("sub/x.c"), "int x;\n").unwrap();
        std::fs::write(b.join("extra"), "").unwrap();
        assert!(!same_contents(&a, &b));
    }

    #[test]
    fn a_package_directory_split_into_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("dkms.conf"), "PACKAGE_NAME=\"west-chamber\"\nPACKAGE_VERSION=\"2010+svn\"\n")
            .unwrap();
        let mv = names_of(d.path(), "west-chamber-2010+svn").unwrap();
        assert_eq!((mv.module.as_str(), mv.version.as_str()), ("west-chamber", "2010+svn"));
        std::fs::write(d.path().join("dkms.conf"), "PACKAGE_NAME=$(x)\nPACKAGE_VERSION=1.2\n").unwrap();
        assert_eq!(names_of(d.path(), "a-b-1.2").unwrap().module, "a-b");
        std::fs::write(d.path().join("dkms.conf"), "PACKAGE_NAME=x\n").unwrap();
        assert!(names_of(d.path(), "y-1").is_err());
    }

    #[test]
    fn tarball_roots() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dkms_source_tree")).unwrap();
        std::fs::write(d.path().join("dkms_source_tree/dkms.conf"), "").unwrap();
        assert_eq!(source_root(d.path()), Some(d.path().join("dkms_source_tree")));
    }
}
