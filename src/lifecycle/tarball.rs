//! `mktarball` and `ldtarball`, in dkms's tarball layout: `dkms_source_tree/` (the source) and
//! `dkms_main_tree/<kver>/<arch>/{module,log}` (the builds; ckms's build record travels with
//! them), so prebuilt modules can move between machines.

use std::path::{Path, PathBuf};

use super::{add, KernelTarget, Lifecycle, LifecycleError, Manifest, ModuleVersion};
use crate::error::Error;

/// Which parts `mktarball` writes.
#[derive(Debug, Clone, Copy)]
pub struct TarballParts {
    pub source: bool,
    pub binaries: bool,
}

impl Lifecycle<'_> {
    /// Writes `<dkms_tree>/<m>/<v>/tarball/<m>-<v>-kernel<k>-<arch>.dkms.tar.gz` (or
    /// `<m>-<v>-source-only...`) and returns its path.
    pub fn mktarball(
        &self,
        mv: &ModuleVersion,
        kernels: &[KernelTarget],
        parts: TarballParts,
    ) -> Result<PathBuf, Error> {
        let module_dir = self.roots.module_dir(&mv.module, &mv.version);
        if !module_dir.exists() {
            return Err(
                LifecycleError::NotInTree { module: mv.module.clone(), version: Some(mv.version.clone()) }.into()
            );
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
                    }
                    .into());
                }
                builds.push((k.release.clone(), arch, dir));
            }
        }
        let name = match builds.as_slice() {
            _ if !parts.binaries => format!("{}-{}-source-only.dkms.tar.gz", mv.module, mv.version),
            [(k, a, _)] => format!("{}-{}-kernel{k}-{a}.dkms.tar.gz", mv.module, mv.version),
            _ => format!("{}-{}-manykernels.dkms.tar.gz", mv.module, mv.version),
        };
        let dir = module_dir.join("tarball");
        std::fs::create_dir_all(&dir).map_err(LifecycleError::io(&dir))?;
        let file = dir.join(name);
        let io = LifecycleError::io(&file);
        let write = || -> std::io::Result<()> {
            let tmp = tempfile::NamedTempFile::new_in(&dir)?;
            let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            tar.follow_symlinks(false);
            if parts.source {
                tar.append_dir_all("dkms_source_tree", self.source_dir(mv))?;
            } else {
                tar.append_data(&mut empty_file(), "dkms_binaries_only", std::io::empty())?;
            }
            for (k, a, built) in &builds {
                tar.append_dir_all(format!("dkms_main_tree/{k}/{a}"), built)?;
            }
            tar.into_inner()?.finish()?;
            tmp.persist(&file).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(io)?;
        Ok(file)
    }

    /// Loads a tarball from `mktarball`: the source (unless binaries only: then the version
    /// must be in the tree already) and every build in it.
    pub fn ldtarball(&self, file: &Path) -> Result<ModuleVersion, Error> {
        let tmp = tempfile::tempdir().map_err(LifecycleError::io(file))?;
        let bytes = std::fs::File::open(file).map_err(LifecycleError::io(file))?;
        crate::artifact::unpack(flate2::read::MultiGzDecoder::new(bytes), tmp.path(), 0, 4 << 30)?;
        let main = tmp.path().join("dkms_main_tree");
        let builds = built_dirs(&main);
        let from_build = builds.first().map(|(_, _, d)| Manifest::read(d)).transpose()?;
        let names = from_build.map(|m| ModuleVersion { module: m.module, version: m.version });
        let source = tmp.path().join("dkms_source_tree");
        let mv = if source.join("dkms.conf").is_file() {
            self.add(&add::AddSource::Dir(source), names.as_ref())?
        } else {
            let mv = names.ok_or_else(|| LifecycleError::NoConf(file.join("dkms_source_tree/dkms.conf")))?;
            self.ensure_added(&mv)?;
            mv
        };
        let _lock = self.lock()?;
        for (k, a, dir) in builds {
            let dest = self.roots.built_dir(&mv.module, &mv.version, &k, &a);
            if dest.exists() && !self.opts.force {
                self.report().info(format!("{mv} is already built for {k} ({a}); kept (use --force to replace)"));
                continue;
            }
            super::build::commit_dir(&dir, &dest).map_err(LifecycleError::io(&dest))?;
        }
        Ok(mv)
    }
}

fn empty_file() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
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
