//! dkms's on-disk model, which ckms keeps so that distro scripts and admins find what they
//! expect: sources in `<source_tree>/<m>-<v>/`, and per module in the tree
//! `<dkms_tree>/<m>/<v>/source -> <source_tree>/<m>-<v>` (added),
//! `<dkms_tree>/<m>/<v>/<kver>/<arch>/module/*.ko*` (built), and the symlink
//! `<dkms_tree>/<m>/kernel-<kver>-<arch> -> <v>/<kver>/<arch>` (installed), with replaced
//! in-tree modules kept in `<dkms_tree>/<m>/original_module/<kver>/<arch>/`.
//! `status` reads only that, and prints dkms's own line formats.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::repo::version;

/// Where ckms keeps built modules and state by default.
pub const DEFAULT_TREE: &str = "/var/lib/ckms";

/// The three roots every path derives from (`--sourcetree --dkmstree --installtree`, or all
/// under one `--root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub source_tree: PathBuf,
    pub dkms_tree: PathBuf,
    pub install_tree: PathBuf,
}

impl Roots {
    /// The system's trees. ckms keeps its own tree (see docs/dkms-compat.md for why) with
    /// dkms's layout inside; sources and installs are where dkms puts them.
    pub fn system() -> Roots {
        Roots {
            source_tree: PathBuf::from("/usr/src"),
            dkms_tree: PathBuf::from(DEFAULT_TREE),
            install_tree: PathBuf::from("/lib/modules"),
        }
    }

    /// The same layout under `root` (an image being built, an offline tree, a test).
    pub fn under(root: &Path, dkms_tree: &str) -> Roots {
        Roots {
            source_tree: root.join("usr/src"),
            dkms_tree: root.join(dkms_tree.trim_start_matches('/')),
            install_tree: root.join("lib/modules"),
        }
    }

    /// The same roots with relative paths taken from the current directory, as dkms's users
    /// expect (`--sourcetree src` is `$PWD/src`): the `source` link and the install record
    /// made from them then hold where the user meant, wherever ckms runs next.
    pub fn absolute(self) -> std::io::Result<Roots> {
        Ok(Roots {
            source_tree: std::path::absolute(&self.source_tree)?,
            dkms_tree: std::path::absolute(&self.dkms_tree)?,
            install_tree: std::path::absolute(&self.install_tree)?,
        })
    }

    pub fn module_dir(&self, module: &str, version: &str) -> PathBuf {
        self.dkms_tree.join(module).join(version)
    }

    pub fn built_dir(&self, module: &str, version: &str, kernel: &str, arch: &str) -> PathBuf {
        self.module_dir(module, version).join(kernel).join(arch)
    }

    pub fn installed_link(&self, module: &str, kernel: &str, arch: &str) -> PathBuf {
        self.dkms_tree.join(module).join(format!("kernel-{kernel}-{arch}"))
    }

    pub fn original_dir(&self, module: &str, kernel: &str, arch: &str) -> PathBuf {
        self.dkms_tree.join(module).join("original_module").join(kernel).join(arch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Added,
    Built,
    Installed,
    /// The tree entry exists but its source is gone.
    Broken,
}

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub module: String,
    pub version: String,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub state: State,
    /// Installed over in-tree modules of the same name (kept for restoring on uninstall).
    pub original_modules: bool,
}

impl fmt::Display for Status {
    /// dkms 3.x's formats, e.g. `v4l2loopback/0.12.7, 6.1.0-56-amd64, x86_64: installed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.module, self.version)?;
        if let (Some(k), Some(a)) = (&self.kernel, &self.arch) {
            write!(f, ", {k}, {a}")?;
        }
        let state = match self.state {
            State::Added => "added",
            State::Built => "built",
            State::Installed => "installed",
            State::Broken => "broken",
        };
        write!(f, ": {state}")?;
        if self.original_modules {
            write!(f, " (Original modules exist)")?;
        }
        Ok(())
    }
}

/// Every module/version (optionally only `module`) in the tree, sorted like dkms's output.
pub fn status(roots: &Roots, module: Option<&str>) -> Vec<Status> {
    let mut out = Vec::new();
    for m in dir_names(&roots.dkms_tree) {
        if module.is_some_and(|want| want != m) {
            continue;
        }
        for v in dir_names(&roots.dkms_tree.join(&m)) {
            if v.starts_with("kernel-") || v == "original_module" {
                continue;
            }
            let vdir = roots.module_dir(&m, &v);
            let line = |kernel: Option<String>, arch: Option<String>, state, original_modules| Status {
                module: m.clone(),
                version: v.clone(),
                kernel,
                arch,
                state,
                original_modules,
            };
            if !vdir.join("source").join("dkms.conf").exists() && !vdir.join("source").is_dir() {
                out.push(line(None, None, State::Broken, false));
                continue;
            }
            let mut built_any = false;
            for k in dir_names(&vdir).into_iter().filter(|k| k != "source" && k != "build" && k != "log") {
                for a in dir_names(&vdir.join(&k)) {
                    if !vdir.join(&k).join(&a).join("module").is_dir() {
                        continue;
                    }
                    built_any = true;
                    let link = roots.installed_link(&m, &k, &a);
                    let installed = std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&v).join(&k).join(&a));
                    let original = installed && roots.original_dir(&m, &k, &a).is_dir();
                    let state = if installed { State::Installed } else { State::Built };
                    out.push(line(Some(k.clone()), Some(a.clone()), state, original));
                }
            }
            if !built_any {
                out.push(line(None, None, State::Added, false));
            }
        }
    }
    out
}

/// Whether `given` reads as `MODULE/VERSION` (two valid names), not as a path such as
/// `./mymodul` or `/usr/src/x`.
pub fn module_version_like(given: &str) -> bool {
    given.split_once('/').is_some_and(|(m, v)| valid_name(m) && valid_name(v))
}

/// Whether `name` may be a module name, version or module file name: it becomes one path
/// component under the trees (`<source_tree>/<m>-<v>`, `<dkms_tree>/<m>/<v>`), so no `/`,
/// not `.` or `..`, no leading dot (status skips those), no blanks or control characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Points `link` at `target`, atomically: a new link is renamed over the old one, so the
/// link is never missing (state readers see the old or the new value).
pub fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.ckms-tmp-{}",
        link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Names of the subdirectories (or symlinks to them) of `dir`, sorted; none if unreadable.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                // ckms's work directories (.ckms-build-*) are not state.
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by(|a, b| version::compare(a, b).then_with(|| a.cmp(b)));
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path(), "/var/lib/dkms");
        (dir, roots)
    }

    fn add(r: &Roots, m: &str, v: &str) {
        let src = r.source_tree.join(format!("{m}-{v}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("dkms.conf"), "").unwrap();
        fs::create_dir_all(r.module_dir(m, v)).unwrap();
        symlink(&src, r.module_dir(m, v).join("source")).unwrap();
    }

    fn build(r: &Roots, m: &str, v: &str, k: &str) {
        let d = r.built_dir(m, v, k, "x86_64").join("module");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{m}.ko")), b"").unwrap();
    }

    fn lines(r: &Roots) -> Vec<String> {
        status(r, None).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_lines_dkms_prints() {
        let (_d, r) = tree();
        add(&r, "v4l2loopback", "0.12.7");
        assert_eq!(lines(&r), ["v4l2loopback/0.12.7: added"]);
        build(&r, "v4l2loopback", "0.12.7", "6.1.0-56-amd64");
        build(&r, "v4l2loopback", "0.12.7", "6.12.117+deb13-amd64");
        assert_eq!(
            lines(&r),
            [
                "v4l2loopback/0.12.7, 6.1.0-56-amd64, x86_64: built",
                "v4l2loopback/0.12.7, 6.12.117+deb13-amd64, x86_64: built"
            ]
        );
        symlink("0.12.7/6.1.0-56-amd64/x86_64", r.installed_link("v4l2loopback", "6.1.0-56-amd64", "x86_64")).unwrap();
        assert_eq!(lines(&r)[0], "v4l2loopback/0.12.7, 6.1.0-56-amd64, x86_64: installed");
        fs::create_dir_all(r.original_dir("v4l2loopback", "6.1.0-56-amd64", "x86_64")).unwrap();
        assert_eq!(lines(&r)[0], "v4l2loopback/0.12.7, 6.1.0-56-amd64, x86_64: installed (Original modules exist)");
    }

    #[test]
    fn relative_roots_are_taken_from_the_current_directory() {
        let r = Roots {
            source_tree: "src".into(),
            dkms_tree: "/var/lib/ckms".into(),
            install_tree: "./lib/modules".into(),
        };
        let cwd = std::env::current_dir().unwrap();
        let a = r.absolute().unwrap();
        assert_eq!(a.source_tree, cwd.join("src"));
        assert_eq!(a.dkms_tree, Path::new("/var/lib/ckms"));
        assert_eq!(a.install_tree, cwd.join("lib/modules"));
    }

    #[test]
    fn a_tree_entry_without_source_is_broken() {
        let (_d, r) = tree();
        add(&r, "jool-dkms", "4.1.9");
        fs::remove_dir_all(r.source_tree.join("jool-dkms-4.1.9")).unwrap();
        assert_eq!(lines(&r), ["jool-dkms/4.1.9: broken"]);
    }

    #[test]
    fn names_are_one_path_component() {
        for ok in ["v4l2loopback", "0.12.7", "nvidia-current", "1.0+git20240101", "r8168_8.053"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../../etc", "a/b", ".hidden", "a b", "a\nb"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_the_asked_module() {
        let (_d, r) = tree();
        add(&r, "a", "1");
        add(&r, "b", "2");
        assert_eq!(status(&r, Some("b")).len(), 1);
    }
}
