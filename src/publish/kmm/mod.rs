//! `--format kmm`: one OCI image per (module set, kernel) in the layout Kubernetes Kernel
//! Module Management loads from, and the KMM `Module` that maps each kernel to its image.
//!
//! An image has two layers, both written by ckms's layer writer (GNU tar, mtime 0, sorted):
//! - userland: busybox (from the kernel's profile's signed index, `busybox-static`) as
//!   `/bin/busybox` with `cp` and `sh` linked to it: KMM's worker copies the modules out of
//!   the image with the image's own `cp`;
//! - modules: `/opt/lib/modules/<kver>/updates/dkms/<file>` as the store holds them (signed,
//!   compressed as the kernel's own) and depmod's index of them, made on the host with
//!   `depmod -b` over a staging tree (KMM's worker runs `modprobe -d /opt`, which reads it).
//!
//! The image is tagged `<repository>:<kver>`, the tag `${KERNEL_FULL_VERSION}` expands to on
//! a node running that kernel, and written as one archive that is both an OCI image layout
//! and a docker-archive (`image::archive`), so either engine loads it. The config's times are
//! the newest build time of the image's pairs: publishing twice gives the same image ID.

pub mod manifest;
mod run;

pub use run::publish;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::image::archive::{self, ArchiveLayer, ImageMeta};
use crate::image::label;
use crate::k8s;
use crate::oci::layer::layer;
use crate::oci::tag_of;
use crate::verify::modinfo;

use super::pairs::BuiltPair;
use super::PublishError;

/// The package giving the image its `cp`, and where its binary is in it (the verifier's
/// initramfs takes busybox from the same package).
pub const USERLAND_PACKAGE: &str = "busybox-static";
pub const USERLAND_BINARY: &str = "bin/busybox";
/// What the image links to busybox: `cp` for KMM's worker, `sh` for a shell when debugging.
const APPLETS: [&str; 4] = ["cp", "ls", "sh", "modprobe"];
/// Where KMM's `modprobe.dirName` defaults to.
pub const DIR_NAME: &str = "opt";
/// The link in `/opt/lib/modules/<kver>` to the node's own `/lib/modules/<kver>`, which KMM
/// mounts into its worker: modules.dep names in-tree dependencies through it, so modprobe
/// loads them from the node (KMM's documented way for in-tree dependencies).
pub const IN_TREE_LINK: &str = "host";

/// One image to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub kernel: String,
    pub profile: String,
    /// `<repository>:<kver>`.
    pub tag: String,
    /// The OCI architecture name of its kernel's (profiles/architectures.toml `oci`): the
    /// image config's `architecture`, which `podman pull --arch` and KMM's nodes match.
    pub arch: String,
    /// The newest build time of its pairs.
    pub epoch: u64,
    /// (path under /opt/lib/modules/<kver>, file in the store), sorted.
    pub files: Vec<(String, PathBuf)>,
    /// The kernel's own modules that `files` depend on: (path under lib/modules/<kver> in
    /// the kernel's package, its file). Indexed through [`IN_TREE_LINK`], not shipped.
    pub in_tree: Vec<(String, PathBuf)>,
    /// The archive's file name under `--out`.
    pub archive: String,
}

/// What a `kmm` run makes: one image per kernel and the names of the `Module` mapping
/// kernels to them.
#[derive(Debug, Clone)]
pub struct KmmImages {
    pub name: String,
    pub repository: String,
    /// What modprobe loads (the first module's own name).
    pub module_name: String,
    pub images: Vec<Image>,
    /// The images are pushed to a plain-HTTP registry: the Module tells KMM so.
    pub insecure_registry: bool,
}

/// One image per kernel holding every selected pair of that kernel. `name` defaults to the
/// module when there is one, `ckms-modules` otherwise; `repository` to `localhost/ckms/<name>`.
pub fn plan(pairs: &[BuiltPair], name: Option<&str>, repository: Option<&str>) -> Result<KmmImages, PublishError> {
    let mut modules: Vec<&str> = pairs.iter().map(|p| p.module.as_str()).collect();
    modules.sort();
    modules.dedup();
    let name = match (name, modules.as_slice()) {
        (Some(n), _) => n.to_string(),
        (None, [one]) => one.to_string(),
        (None, _) => "ckms-modules".into(),
    };
    let repository =
        repository.map(str::to_string).unwrap_or_else(|| format!("localhost/ckms/{}", name.to_ascii_lowercase()));
    let mut groups: BTreeMap<&str, Vec<&BuiltPair>> = BTreeMap::new();
    for p in pairs {
        groups.entry(p.kernel.as_str()).or_default().push(p);
    }
    let mut images = Vec::new();
    for (kernel, members) in groups {
        let mut files: Vec<(String, PathBuf)> = members
            .iter()
            .flat_map(|p| p.files.iter())
            .map(|f| {
                let dest = f.dest.trim_matches('/');
                let dir = if dest.is_empty() { String::new() } else { format!("{dest}/") };
                (format!("{dir}{}", f.file_name), f.path.clone())
            })
            .collect();
        files.sort();
        let tag = format!("{repository}:{}", tag_of(kernel));
        check_tag(&tag)?;
        images.push(Image {
            kernel: kernel.to_string(),
            profile: members[0].profile.clone(),
            arch: members[0].target.oci_arch.clone(),
            epoch: members.iter().map(|p| p.epoch).max().unwrap_or(0),
            archive: format!("{}_{kernel}.oci.tar", k8s::name(&name)),
            files,
            in_tree: Vec::new(),
            tag,
        });
    }
    let module_name = module_name(pairs, modules.first().copied().unwrap_or_default());
    Ok(KmmImages { name, repository, module_name, images, insecure_registry: false })
}

/// The kernel's name of the module `module` ships: the file named like the dkms package
/// (`tp_smapi` ships thinkpad_ec.ko, hdaps.ko and tp_smapi.ko), else its first file.
fn module_name(pairs: &[BuiltPair], module: &str) -> String {
    let wanted = modinfo::canonical(module);
    let names: Vec<String> = pairs
        .iter()
        .filter(|p| p.module == module)
        .flat_map(|p| p.files.iter())
        .filter_map(|f| modinfo::name_of_file(&f.file_name))
        .collect();
    if names.contains(&wanted) {
        wanted
    } else {
        names.into_iter().next().unwrap_or(wanted)
    }
}

fn check_tag(tag: &str) -> Result<(), PublishError> {
    let (repo, t) = tag.rsplit_once(':').unwrap_or((tag, ""));
    let repo_ok =
        !repo.is_empty() && repo.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    let tag_ok = !t.is_empty()
        && t.len() <= 128
        && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !t.starts_with(['.', '-']);
    if repo_ok && tag_ok {
        Ok(())
    } else {
        Err(PublishError::BadImageName(tag.to_string()))
    }
}

/// Runs depmod over a tree (`-b`), as the image's modprobe will find it.
pub trait Depmod {
    fn index(&self, base: &Path, kernel: &str) -> Result<(), PublishError>;
}

/// The host's depmod.
pub struct HostDepmod;

impl Depmod for HostDepmod {
    fn index(&self, base: &Path, kernel: &str) -> Result<(), PublishError> {
        let out =
            std::process::Command::new("depmod").arg("-b").arg(base).arg(kernel).env("LC_ALL", "C").output().map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::NotFound => PublishError::ToolMissing("depmod"),
                    _ => PublishError::Io { path: base.to_path_buf(), source: e },
                },
            )?;
        if !out.status.success() {
            return Err(PublishError::Tool {
                tool: "depmod",
                path: base.to_path_buf(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// What was written for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub tag: String,
    /// The image ID engines report (the config's digest).
    pub id: String,
    pub archive: String,
}

/// Writes every image's archive and `module.yaml` into `dir`. `busybox` is the userland
/// binary per profile.
pub fn write(
    dir: &Path,
    plan: &KmmImages,
    busybox: &BTreeMap<String, Vec<u8>>,
    depmod: &dyn Depmod,
) -> Result<Vec<Written>, PublishError> {
    let work = tempfile::tempdir().map_err(PublishError::io(dir))?;
    let mut written = Vec::new();
    for image in &plan.images {
        let binary = busybox.get(&image.profile).ok_or_else(|| PublishError::Userland {
            kernel: image.kernel.clone(),
            package: USERLAND_PACKAGE.into(),
            message: format!("no userland for the profile {}", image.profile),
        })?;
        let scratch = work.path().join(&image.kernel);
        let layers = vec![userland_layer(&scratch, binary)?, modules_layer(&scratch, image, depmod)?];
        let meta = ImageMeta {
            user: String::new(),
            env: vec!["PATH=/bin".into()],
            workdir: String::new(),
            cmd: vec!["/bin/sh".into()],
            labels: BTreeMap::from([
                (label::KERNEL.to_string(), image.kernel.clone()),
                (label::PROFILE.to_string(), image.profile.clone()),
            ]),
            created: rfc3339(image.epoch),
        };
        let config = archive::image_config_for_arch(&layers, &meta, &image.arch).map_err(archive_err(image))?;
        let id = archive::image_id(&config).map_err(archive_err(image))?;
        let path = dir.join(&image.archive);
        let file = File::create(&path).map_err(PublishError::io(&path))?;
        let mut out = BufWriter::new(file);
        archive::write_archive(&mut out, &layers, &config, std::slice::from_ref(&image.tag))
            .map_err(archive_err(image))?;
        std::io::Write::flush(&mut out).map_err(PublishError::io(&path))?;
        written.push(Written { tag: image.tag.clone(), id, archive: image.archive.clone() });
    }
    let module = manifest::module(plan);
    super::write_file(dir, "module.yaml", k8s::to_yaml(&module).as_bytes())?;
    Ok(written)
}

fn archive_err(image: &Image) -> impl Fn(archive::ArchiveError) -> PublishError + '_ {
    move |e| PublishError::Image { tag: image.tag.clone(), message: e.to_string() }
}

fn rfc3339(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn userland_layer(scratch: &Path, busybox: &[u8]) -> Result<ArchiveLayer, PublishError> {
    Ok(layer(scratch.join("userland.tar"), |w| {
        w.add_dir("bin", 0o755, 0, 0)?;
        w.add_file("bin/busybox", busybox, 0o755, 0, 0)?;
        for applet in APPLETS {
            w.add_symlink(&format!("bin/{applet}"), "busybox")?;
        }
        // KMM's worker copies into /tmp; an empty image has none.
        w.add_dir("tmp", 0o1777, 0, 0)
    })?)
}

/// The modules and their index, staged under `scratch/root` for depmod, with the in-tree
/// dependencies staged behind [`IN_TREE_LINK`] so that depmod names them there; the layer
/// holds the link instead of them.
fn modules_layer(scratch: &Path, image: &Image, depmod: &dyn Depmod) -> Result<ArchiveLayer, PublishError> {
    let root = scratch.join("root");
    let kdir = format!("lib/modules/{}", image.kernel);
    let link = format!("{kdir}/{IN_TREE_LINK}");
    let staged = image.files.iter().map(|(rel, src)| (format!("{kdir}/{rel}"), src));
    for (rel, src) in staged.chain(image.in_tree.iter().map(|(rel, src)| (format!("{link}/{rel}"), src))) {
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(PublishError::io(parent))?;
        }
        std::fs::copy(src, &dest).map_err(PublishError::io(src))?;
    }
    depmod.index(&root, &image.kernel)?;
    let mut entries = Vec::new();
    collect(&root, &root, &mut entries)?;
    entries.retain(|(rel, _)| rel != &link && !rel.starts_with(&format!("{link}/")));
    entries.sort();
    let mut contents = Vec::new();
    for (rel, is_dir) in &entries {
        let bytes = if *is_dir {
            None
        } else {
            Some(std::fs::read(root.join(rel)).map_err(PublishError::io(&root.join(rel)))?)
        };
        contents.push((format!("{DIR_NAME}/{rel}"), bytes));
    }
    Ok(layer(scratch.join("modules.tar"), |w| {
        for d in [DIR_NAME.to_string(), format!("{DIR_NAME}/lib")] {
            w.add_dir(&d, 0o755, 0, 0)?;
        }
        for (path, bytes) in &contents {
            match bytes {
                None => w.add_dir(path, 0o755, 0, 0)?,
                Some(b) => w.add_file(path, b, 0o644, 0, 0)?,
            }
        }
        if !image.in_tree.is_empty() {
            w.add_symlink(&format!("{DIR_NAME}/{link}"), &format!("/lib/modules/{}", image.kernel))?;
        }
        Ok(())
    })?)
}

/// Every entry under `dir`, relative to `root`, with whether it is a directory.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> Result<(), PublishError> {
    for e in std::fs::read_dir(dir).map_err(PublishError::io(dir))? {
        let path = e.map_err(PublishError::io(dir))?.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
        if path.is_dir() {
            out.push((rel, true));
            collect(root, &path, out)?;
        } else {
            out.push((rel, false));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
