//! `mktarball` and `ldtarball`, in dkms's tarball layout: `dkms_source_tree/` (the source) or,
//! binaries only, `dkms_binaries_only/{PACKAGE_NAME,PACKAGE_VERSION,dkms.conf}`; and
//! `dkms_main_tree/<kver>/<arch>/{module,log}` (the builds; ckms's build record `ckms.json`
//! travels with them), so prebuilt modules move between machines. A binaries-only tarball
//! loads as dkms loads it: `<dkms_tree>/<m>/<v>/source/` is a directory holding only the
//! dkms.conf, and its builds install with no engine, compiler or headers on the host.

use std::path::{Path, PathBuf};

use super::{add, KernelTarget, Lifecycle, LifecycleError, Manifest, ModuleVersion};
use crate::artifact::{self, ArtifactError};

/// Which parts `mktarball` writes.
#[derive(Debug, Clone, Copy)]
pub struct TarballParts {
    pub source: bool,
    pub binaries: bool,
}

const MAIN_TREE: &str = "dkms_main_tree";
const SOURCE_TREE: &str = "dkms_source_tree";
const BINARIES_ONLY: &str = "dkms_binaries_only";
/// dkms names a tarball after its kernels unless the list grows longer than this.
const MAX_KERNEL_LIST: usize = 200;

impl Lifecycle<'_> {
    /// Writes `<dkms_tree>/<m>/<v>/tarball/<m>-<v>-kernel<k>-<arch>[-kernel<k2>-<arch2>...].dkms.tar.gz`
    /// (`...-manykernels...` for long lists, `...-source-only...` without builds), or `dest`
    /// (a bare file name: in that tarball directory, as dkms's --archive), and returns its path.
    pub fn mktarball(
        &self,
        mv: &ModuleVersion,
        kernels: &[KernelTarget],
        parts: TarballParts,
        dest: Option<&Path>,
    ) -> Result<PathBuf, LifecycleError> {
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        if !module_dir.exists() {
            return Err(LifecycleError::NotInTree { module: mv.module.clone(), version: Some(mv.version.clone()) });
        }
        let conf = module_dir.join("source/dkms.conf");
        if parts.source && self.is_binaries_only(mv) {
            return Err(self.binaries_only_error(mv));
        }
        if !conf.is_file() {
            return Err(LifecycleError::NoConf(conf));
        }
        let mut builds = Vec::new();
        if parts.binaries {
            for k in kernels {
                let arch = self.arch(k)?;
                let dir = self.roots.built_dir(&mv.module, &mv.version, &k.release, &arch);
                if !dir.join("module").is_dir() {
                    return Err(LifecycleError::NotBuilt {
                        module: mv.module.clone(),
                        version: mv.version.clone(),
                        kernel: k.release.clone(),
                        arch,
                    });
                }
                builds.push((k.release.clone(), arch, dir));
            }
        }
        let kernel_list: Vec<String> = builds.iter().map(|(k, a, _)| format!("kernel{k}-{a}")).collect();
        let kernel_list = match kernel_list.join("-") {
            _ if !parts.binaries => "source-only".to_string(),
            list if list.len() > MAX_KERNEL_LIST => "manykernels".to_string(),
            list => list,
        };
        let default_dir = module_dir.join("tarball");
        let file = match dest {
            Some(d) if d.parent().is_some_and(|p| !p.as_os_str().is_empty()) => d.to_path_buf(),
            Some(name) => default_dir.join(name),
            None => default_dir.join(format!("{}-{}-{kernel_list}.dkms.tar.gz", mv.module, mv.version)),
        };
        let dir = file.parent().unwrap_or(&default_dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(LifecycleError::io(&dir))?;
        let write = || -> std::io::Result<()> {
            let tmp = tempfile::NamedTempFile::new_in(&dir)?;
            let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            tar.follow_symlinks(false);
            tar.append_dir(MAIN_TREE, &module_dir)?;
            if parts.source {
                tar.append_dir_all(SOURCE_TREE, self.source_dir(mv))?;
            } else {
                // What dkms writes for a binaries-only tarball: the names and the dkms.conf.
                tar.append_dir(BINARIES_ONLY, &module_dir)?;
                for (name, value) in [("PACKAGE_NAME", &mv.module), ("PACKAGE_VERSION", &mv.version)] {
                    let text = format!("{value}\n");
                    tar.append_data(&mut file_header(text.len()), format!("{BINARIES_ONLY}/{name}"), text.as_bytes())?;
                }
                let text = std::fs::read(&conf)?;
                tar.append_data(&mut file_header(text.len()), format!("{BINARIES_ONLY}/dkms.conf"), &text[..])?;
            }
            for (k, a, built) in &builds {
                tar.append_dir_all(format!("{MAIN_TREE}/{k}/{a}"), built)?;
            }
            tar.into_inner()?.finish()?;
            tmp.persist(&file).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(LifecycleError::io(&file))?;
        Ok(file)
    }

    /// Loads a tarball: from `mktarball`, its source (or, binaries only, its dkms.conf) and
    /// every build in it; any other tarball with a dkms.conf as `add` loads a source.
    pub fn ldtarball(&self, file: &Path) -> Result<ModuleVersion, LifecycleError> {
        let tmp = self.unpack(file)?;
        self.load_unpacked(tmp.path(), file, None)
    }

    /// Unpacks `file` next to the source tree (so that its source is renamed into place, not
    /// copied), or in the temporary directory when that is not writable.
    pub(super) fn unpack(&self, file: &Path) -> Result<tempfile::TempDir, LifecycleError> {
        let tmp = self.scratch_dir(file)?;
        let bytes = std::fs::File::open(file).map_err(LifecycleError::io(file))?;
        artifact::unpack(flate2::read::MultiGzDecoder::new(bytes), tmp.path(), 0, 4 << 30).map_err(|e| match e {
            // The file's own fault, not an engine's: say so in its words.
            ArtifactError::Tar(e) => LifecycleError::BadTarball { path: file.to_path_buf(), detail: e.to_string() },
            ArtifactError::Refused { path, why } => {
                LifecycleError::BadTarball { path: file.to_path_buf(), detail: format!("refused {path:?}: {why}") }
            }
            ArtifactError::TooLarge { limit } => LifecycleError::BadTarball {
                path: file.to_path_buf(),
                detail: format!("unpacks to more than {limit} bytes"),
            },
            other => other.into(),
        })?;
        Ok(tmp)
    }

    /// [`Lifecycle::ldtarball`] of a tarball unpacked in `top`; `names` as given to `add`.
    pub(super) fn load_unpacked(
        &self,
        top: &Path,
        file: &Path,
        names: Option<&ModuleVersion>,
    ) -> Result<ModuleVersion, LifecycleError> {
        let main = top.join(MAIN_TREE);
        if !main.is_dir() {
            // Not from mktarball: a source tarball, wherever its dkms.conf is (as dkms).
            let dir = add::source_root(top).ok_or_else(|| LifecycleError::NoConf(file.join("dkms.conf")))?;
            let mv = self.import_dir(&dir, names)?;
            self.link_source(&mv)?;
            return Ok(mv);
        }
        // A build without ckms's record (dkms made it) cannot be installed by ckms: left out,
        // so that ckms builds it itself.
        let mut builds = Vec::new();
        for (k, a, dir) in built_dirs(&main) {
            match Manifest::read(&dir) {
                Ok(record) => builds.push((k, a, dir, record)),
                Err(e) => self.report().warn(format!("{MAIN_TREE}/{k}/{a} not loaded: {e}")),
            }
        }
        let from_build =
            builds.first().map(|(_, _, _, m)| ModuleVersion { module: m.module.clone(), version: m.version.clone() });
        let names = names.cloned().or(from_build);
        let (source, binaries) = (top.join(SOURCE_TREE), top.join(BINARIES_ONLY));
        let mv = if source.join("dkms.conf").is_file() {
            self.add(&add::AddSource::Dir(source), names.as_ref())?.mv
        } else if binaries.join("dkms.conf").is_file() {
            let mv = match package_names(&binaries) {
                Some(mv) => mv,
                None => names.ok_or_else(|| LifecycleError::NotDkmsTarball(file.to_path_buf()))?,
            };
            self.add_binaries_only(&mv, &binaries.join("dkms.conf"))?;
            mv
        } else {
            return Err(LifecycleError::NotDkmsTarball(file.to_path_buf()));
        };
        self.report().info(format!("Loading tarball for {mv}"));
        let _lock = self.lock()?;
        for (k, a, dir, record) in builds {
            if (&record.module, &record.version, &record.kernel, &record.arch) != (&mv.module, &mv.version, &k, &a) {
                self.report().warn(format!(
                    "{MAIN_TREE}/{k}/{a} not loaded: its build record is of {}/{} for {} ({})",
                    record.module, record.version, record.kernel, record.arch
                ));
                continue;
            }
            let dest = self.roots.built_dir(&mv.module, &mv.version, &k, &a);
            if dest.exists() && !self.opts.force {
                self.report().warn(format!("{} already exists. Skipping... (--force replaces it)", dest.display()));
                continue;
            }
            self.report().info(format!("Loading {}...", dest.display()));
            super::build::commit_dir(&dir, &dest).map_err(LifecycleError::io(&dest))?;
        }
        Ok(mv)
    }

    /// Puts a binaries-only module in the tree as dkms does: when its source is not on this
    /// system, `<dkms_tree>/<m>/<v>/source/` is a directory holding only its dkms.conf.
    fn add_binaries_only(&self, mv: &ModuleVersion, conf: &Path) -> Result<(), LifecycleError> {
        super::check_names([mv.module.as_str(), mv.version.as_str()])?;
        let stub = self.roots.module_dir(&mv.module, &mv.version).join("source");
        if self.source_dir(mv).is_dir() || stub.is_symlink() {
            return self.ensure_added(mv);
        }
        self.report().info(format!("Creating {} (binaries only)", stub.display()));
        std::fs::create_dir_all(&stub).map_err(LifecycleError::io(&stub))?;
        let dest = stub.join("dkms.conf");
        std::fs::copy(conf, &dest).map_err(LifecycleError::io(&dest))?;
        Ok(())
    }

    /// Whether `mv` was loaded from a binaries-only tarball: its `source` in the tree holds
    /// no more than its dkms.conf (dkms's own test), so it installs but cannot be built.
    pub fn is_binaries_only(&self, mv: &ModuleVersion) -> bool {
        let source = self.roots.module_dir(&mv.module, &mv.version).join("source");
        source.join("dkms.conf").is_file() && std::fs::read_dir(&source).is_ok_and(|entries| entries.count() < 2)
    }

    pub(super) fn binaries_only_error(&self, mv: &ModuleVersion) -> LifecycleError {
        let dir = self.roots.module_dir(&mv.module, &mv.version).join("source");
        LifecycleError::BinariesOnly { module: mv.module.clone(), version: mv.version.clone(), dir }
    }
}

/// `dkms_binaries_only/PACKAGE_NAME` and `PACKAGE_VERSION`, as dkms's mktarball writes them.
fn package_names(dir: &Path) -> Option<ModuleVersion> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string());
    Some(ModuleVersion { module: read("PACKAGE_NAME")?, version: read("PACKAGE_VERSION")? })
}

fn file_header(len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h
}

/// (kernel, arch, dir) of every `<main>/<k>/<a>/` holding a module/ directory.
fn built_dirs(main: &Path) -> Vec<(String, String, PathBuf)> {
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for k in names(main) {
        for a in names(&main.join(&k)) {
            let dir = main.join(&k).join(&a);
            if dir.join("module").is_dir() {
                out.push((k.clone(), a, dir));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, context};
    use super::super::{AddSource, InstallOutcome, Options};
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::testutil::tar_entries;
    use crate::tree::{self, Roots};

    const CONF: &str =
        "PACKAGE_NAME=m\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/updates/dkms\n";

    fn mv() -> ModuleVersion {
        ModuleVersion { module: "m".into(), version: "1".into() }
    }

    fn k() -> KernelTarget {
        KernelTarget { release: "k".into(), arch: Some("x86_64".into()) }
    }

    /// m/1 added from its source and built for k, in a tree under `root`.
    fn farm(root: &Path) -> Roots {
        let roots = built(root, b"\x7fELF", false);
        let src = roots.source_tree.join("m-1");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("dkms.conf"), CONF).unwrap();
        std::fs::write(src.join("m.c"), "int m;\n").unwrap();
        roots
    }

    fn lines(lc: &Lifecycle<'_>) -> Vec<String> {
        tree::status(&lc.roots, None).iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_binaries_only_tarball_installs_where_there_is_no_source() {
        let dir = tempfile::tempdir().unwrap();
        let (farm_root, host_root) = (dir.path().join("farm"), dir.path().join("host"));
        let farm_ctx = context(&farm_root);
        let farm = Lifecycle::new(&farm_ctx, farm(&farm_root), Options::default());
        farm.add(&AddSource::Tree(mv()), None).unwrap();
        let parts = TarballParts { source: false, binaries: true };
        let file = farm.mktarball(&mv(), &[k()], parts, None).unwrap();
        assert!(file.ends_with("var/lib/ckms/m/1/tarball/m-1-kernelk-x86_64.dkms.tar.gz"), "{}", file.display());

        // dkms's layout: the names and the dkms.conf, the build with its record; no source.
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap());
        let entries = tar_entries(gz);
        let get = |name: &str| entries.iter().find(|(n, _)| n.trim_end_matches('/') == name).map(|(_, c)| c.clone());
        assert_eq!(get("dkms_binaries_only/PACKAGE_NAME").as_deref(), Some(&b"m\n"[..]));
        assert_eq!(get("dkms_binaries_only/PACKAGE_VERSION").as_deref(), Some(&b"1\n"[..]));
        assert_eq!(get("dkms_binaries_only/dkms.conf").as_deref(), Some(CONF.as_bytes()));
        assert_eq!(get("dkms_main_tree/k/x86_64/module/m.ko").as_deref(), Some(&b"\x7fELF"[..]));
        assert!(get("dkms_main_tree/k/x86_64/ckms.json").is_some());
        assert!(!entries.iter().any(|(n, _)| n.starts_with("dkms_source_tree")), "{entries:?}");

        // Another machine: the dkms.conf alone stands for the source, as with dkms.
        let host_ctx = context(&host_root);
        let roots = Roots::under(&host_root, "/var/lib/ckms");
        let host = Lifecycle::new(&host_ctx, roots, Options { depmod: false, ..Options::default() });
        assert_eq!(host.ldtarball(&file).unwrap(), mv());
        assert!(host.is_binaries_only(&mv()));
        let stub = host.roots.module_dir("m", "1").join("source");
        assert!(stub.is_dir() && !stub.is_symlink());
        assert!(!host.source_dir(&mv()).exists(), "no source was made up");
        assert_eq!(lines(&host), ["m/1, k, x86_64: built"]);
        let installed = host.install(&mv(), &k()).await.unwrap();
        assert!(matches!(installed, InstallOutcome::Installed { .. }), "{installed:?}");
        assert!(host_root.join("lib/modules/k/updates/dkms/m.ko").is_file());
        assert_eq!(lines(&host), ["m/1, k, x86_64: installed"]);

        // It cannot be built (dkms's message and code), for another kernel or again; nor can
        // a tarball with its source be made from it. Nothing of it is lost.
        let other = KernelTarget { release: "k2".into(), arch: Some("x86_64".into()) };
        let err = host.build(&mv(), &other).await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_CONF, "{err}");
        assert!(err.to_string().contains("does not appear to have module source located within it"), "{err}");
        let forced = Lifecycle::new(&host_ctx, host.roots.clone(), Options { force: true, ..Options::default() });
        assert_eq!(forced.build(&mv(), &k()).await.unwrap_err().exit_code(), code::BAD_CONF);
        let both = TarballParts { source: true, binaries: true };
        assert_eq!(host.mktarball(&mv(), &[k()], both, None).unwrap_err().exit_code(), code::BAD_CONF);
        assert_eq!(lines(&host), ["m/1, k, x86_64: installed"]);

        // Its source arriving later replaces the stub.
        let src = host.source_dir(&mv());
        add::copy_tree(&farm.source_dir(&mv()), &src).unwrap();
        host.add(&AddSource::Tree(mv()), None).unwrap();
        assert_eq!(std::fs::read_link(&stub).unwrap(), src);
        assert!(!host.is_binaries_only(&mv()));
    }

    #[tokio::test]
    async fn a_binaries_only_tarball_on_a_host_with_the_source_links_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let lc = Lifecycle::new(&ctx, farm(dir.path()), Options::default());
        lc.add(&AddSource::Tree(mv()), None).unwrap();
        let parts = TarballParts { source: false, binaries: true };
        let dest = dir.path().join("out/m.tar.gz");
        assert_eq!(lc.mktarball(&mv(), &[k()], parts, Some(&dest)).unwrap(), dest);
        lc.remove(&mv(), &[], true).await.unwrap();
        assert_eq!(lc.ldtarball(&dest).unwrap(), mv());
        assert_eq!(std::fs::read_link(lc.roots.module_dir("m", "1").join("source")).unwrap(), lc.source_dir(&mv()));
        assert_eq!(lines(&lc), ["m/1, k, x86_64: built"]);
    }

    #[test]
    fn a_tarball_without_source_or_dkms_conf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&file).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_data(&mut file_header(1), "dkms_main_tree/k/x86_64/module/m.ko", &b"x"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let ctx = context(dir.path());
        let lc = Lifecycle::new(&ctx, Roots::under(dir.path(), "/var/lib/ckms"), Options::default());
        let err = lc.ldtarball(&file).unwrap_err();
        assert!(err.to_string().contains("is not a valid DKMS tarball"), "{err}");
        assert_eq!(lines(&lc), Vec::<String>::new());
    }
}
