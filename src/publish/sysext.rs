//! `--format sysext`: systemd system extension images, one per (module set, kernel), for
//! immutable systems (`/var/lib/extensions/<name>.raw`, then `systemd-sysext merge`).
//!
//! ```text
//! <out>/<set>-<kver>.raw        erofs (default) or squashfs, holding:
//!   usr/lib/modules/<kver>/updates/dkms/<module>.ko[.xz]   as the store holds them (signed)
//!   usr/lib/extension-release.d/extension-release.<set>-<kver>   ID, VERSION_ID or SYSEXT_LEVEL, ARCHITECTURE
//!   usr/lib/ckms/sysext-depmod                        the index hook (below)
//!   usr/lib/systemd/system/ckms-sysext-depmod.service (+ its sysinit.target.wants link)
//! ```
//!
//! No extension ships `modules.dep*` or any other index: the topmost extension's index would
//! hide every other extension's modules and the base system's changes (flatcar#1576). The
//! merged `/usr` is read-only, so the hook lays a writable overlay (upper layer in /run) over
//! `/usr/lib/modules/<running kernel>` and runs depmod there: the index then names the base's
//! modules and every merged extension's. The hook is the same file in every ckms extension,
//! so whichever is on top, it is the same.
//!
//! systemd-sysext matches an extension against the host's os-release ID and VERSION_ID (or
//! SYSEXT_LEVEL), never the kernel. That is enough: an image only holds files under its own
//! kernel's `usr/lib/modules/<kver>/`, which another kernel never reads, so an extension for
//! another kernel exposes nothing to the running one.

use std::path::{Path, PathBuf};

use super::pairs::{BuiltPair, OsRelease};
use super::{set_mode, write_file, OsOverride, PublishError};
use crate::cache::sha256_hex;

/// The image's file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Filesystem {
    /// mkfs.erofs (erofs-utils): what systemd-repart makes by default; read-only by design.
    #[default]
    Erofs,
    /// mksquashfs (squashfs-tools): readable by older kernels.
    Squashfs,
}

impl std::str::FromStr for Filesystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Filesystem, String> {
        match s {
            "erofs" => Ok(Filesystem::Erofs),
            "squashfs" => Ok(Filesystem::Squashfs),
            _ => Err(format!("unknown file system {s:?}: erofs or squashfs")),
        }
    }
}

/// One extension image to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `<set>-<kver>`: the file is `<name>.raw`, its release file `extension-release.<name>`.
    pub name: String,
    pub kernel: String,
    /// The newest build time of its pairs.
    pub epoch: u64,
    /// The extension-release file's text.
    pub release: String,
    /// (path inside the image, file in the store), sorted.
    pub files: Vec<(String, PathBuf)>,
}

pub const HOOK: &str = "usr/lib/ckms/sysext-depmod";
pub const UNIT: &str = "usr/lib/systemd/system/ckms-sysext-depmod.service";
const WANTS: &str = "usr/lib/systemd/system/sysinit.target.wants/ckms-sysext-depmod.service";

/// The index hook: `sysext-depmod [ROOT [KVER]]` (ROOT: another root, as depmod -b; KVER:
/// default the running kernel). Run after every merge or refresh; harmless without extensions.
const HOOK_SCRIPT: &str = r#"#!/bin/sh
# ckms: after systemd-sysext merged /usr, index the modules of every merged extension
# (no extension ships modules.dep: the topmost one's would hide the others', flatcar#1576).
# /usr is read-only: the index goes into an overlay over /usr/lib/modules/KVER whose upper
# layer lives in ROOT/run/ckms-sysext/KVER.   Usage: sysext-depmod [ROOT [KVER]]
set -eu
root=${1:-}
kver=${2:-$(uname -r)}
dir=$root/usr/lib/modules/$kver
run=$root/run/ckms-sysext/$kver
[ -d "$dir" ] || exit 0
# An earlier run's overlay shows the extensions merged then: replace it.
if mountpoint -q "$dir"; then umount "$dir"; fi
rm -rf "$run"
mkdir -p "$run/upper" "$run/work"
mount -t overlay ckms-sysext-depmod -o "lowerdir=$dir,upperdir=$run/upper,workdir=$run/work" "$dir"
depmod -b "${root:-/}" "$kver"
"#;

const HOOK_UNIT: &str = "[Unit]
Description=ckms: index the kernel modules of merged system extensions
Documentation=man:systemd-sysext(8)
DefaultDependencies=no
After=systemd-sysext.service
Before=sysinit.target systemd-modules-load.service systemd-udev-trigger.service
ConditionPathExists=/usr/lib/ckms/sysext-depmod

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/ckms/sysext-depmod

[Install]
WantedBy=sysinit.target
";

/// The images for `pairs`: with `set`, one per kernel named `<set>-<kver>` holding every
/// pair; without, one per pair named `<module>-<kver>`.
pub fn plan(pairs: &[BuiltPair], set: Option<&str>, os: &OsOverride) -> Result<Vec<Image>, PublishError> {
    if let Some(given) = &os.architecture {
        // One name for the extensions of several architectures would be wrong for all but one.
        let mut archs: Vec<&str> = pairs.iter().map(|p| p.target.deb_arch.as_str()).collect();
        archs.sort();
        archs.dedup();
        if archs.len() > 1 {
            let architectures = archs.into_iter().map(str::to_string).collect();
            return Err(PublishError::OneArchitectureForMany { given: given.clone(), architectures });
        }
    }
    let mut groups: std::collections::BTreeMap<String, Vec<&BuiltPair>> = Default::default();
    for p in pairs {
        let name = format!("{}-{}", set.unwrap_or(&p.module), p.kernel);
        groups.entry(name).or_default().push(p);
    }
    groups
        .into_iter()
        .map(|(name, members)| {
            let first = members[0];
            let mut files: Vec<(String, PathBuf)> = members
                .iter()
                .flat_map(|p| p.files.iter())
                .map(|f| {
                    let dest = f.dest.trim_matches('/');
                    let dir = if dest.is_empty() { String::new() } else { format!("{dest}/") };
                    (format!("usr/lib/modules/{}/{dir}{}", first.kernel, f.file_name), f.path.clone())
                })
                .collect();
            files.sort();
            Ok(Image {
                release: release(&name, first, os)?,
                kernel: first.kernel.clone(),
                epoch: members.iter().map(|p| p.epoch).max().unwrap_or(0),
                files,
                name,
            })
        })
        .collect()
}

/// The extension-release text: the flags' values, else the kernel's profile's.
fn release(name: &str, pair: &BuiltPair, o: &OsOverride) -> Result<String, PublishError> {
    let profile = pair.target.os.as_ref();
    let missing = |what: &'static str| PublishError::NoOs {
        kernel: pair.kernel.clone(),
        profile: pair.profile.clone(),
        missing: what,
    };
    let id = o.id.clone().or(profile.map(|p| p.id.clone())).ok_or_else(|| missing("--os-id"))?;
    let arch = o
        .architecture
        .clone()
        .or(profile.map(|p| p.architecture.clone()))
        .ok_or_else(|| missing("--os-architecture"))?;
    let mut text = format!("# ckms: {name}\nID={id}\n");
    if let Some(level) = &o.sysext_level {
        text += &format!("SYSEXT_LEVEL={level}\n");
    } else if let Some(v) = o.version_id.clone().or(profile.and_then(|p: &OsRelease| p.version_id.clone())) {
        text += &format!("VERSION_ID={v}\n");
    }
    Ok(text + &format!("ARCHITECTURE={arch}\n"))
}

/// Makes a file system image of a directory: the seam between the layout and the tools.
pub trait MakeFs {
    fn make(&self, fs: Filesystem, tree: &Path, image: &Path, epoch: u64, uuid: &str) -> Result<(), PublishError>;
}

/// The real tools, with every setting that would vary fixed: time, owners, UUID, no xattrs.
pub struct Mkfs;

impl MakeFs for Mkfs {
    fn make(&self, fs: Filesystem, tree: &Path, image: &Path, epoch: u64, uuid: &str) -> Result<(), PublishError> {
        let (tool, mut cmd) = match fs {
            Filesystem::Erofs => {
                let mut c = std::process::Command::new("mkfs.erofs");
                c.arg(format!("-T{epoch}")).arg(format!("-U{uuid}")).args(["--all-root", "-x-1", "--quiet"]);
                c.arg(image).arg(tree);
                ("mkfs.erofs", c)
            }
            Filesystem::Squashfs => {
                let mut c = std::process::Command::new("mksquashfs");
                c.arg(tree).arg(image).args(["-noappend", "-all-root", "-no-xattrs", "-no-progress", "-quiet"]);
                c.args(["-processors", "1", "-mkfs-time", &epoch.to_string(), "-all-time", &epoch.to_string()]);
                ("mksquashfs", c)
            }
        };
        let out = cmd.output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PublishError::ToolMissing(tool),
            _ => PublishError::io(image)(e),
        })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(PublishError::Tool { tool, path: image.to_path_buf(), message });
        }
        Ok(())
    }
}

/// Writes every image into `out`; what a host does with them.
pub fn write(out: &Path, images: &[Image], fs: Filesystem, mkfs: &dyn MakeFs) -> Result<Vec<String>, PublishError> {
    for image in images {
        let tree = tempfile::Builder::new().prefix(".tree").tempdir_in(out).map_err(PublishError::io(out))?;
        stage(tree.path(), image)?;
        let path = out.join(format!("{}.raw", image.name));
        mkfs.make(fs, tree.path(), &path, image.epoch, &uuid(&image.name))?;
        set_mode(&path, 0o644)?;
    }
    Ok(vec!["on each host: the images for its kernels into /var/lib/extensions/, then `systemd-sysext refresh` \
         and `systemctl daemon-reload && systemctl restart ckms-sysext-depmod` (the index of the merged modules)"
        .into()])
}

/// The image's tree in `dir`, every mode set (the umask must not show in the image).
fn stage(dir: &Path, image: &Image) -> Result<(), PublishError> {
    for (rel, from) in &image.files {
        let bytes = std::fs::read(from).map_err(PublishError::io(from))?;
        write_file(dir, rel, &bytes)?;
    }
    let release = format!("usr/lib/extension-release.d/extension-release.{}", image.name);
    write_file(dir, &release, image.release.as_bytes())?;
    write_file(dir, HOOK, HOOK_SCRIPT.as_bytes())?;
    write_file(dir, UNIT, HOOK_UNIT.as_bytes())?;
    let wants = dir.join(WANTS);
    if let Some(parent) = wants.parent() {
        std::fs::create_dir_all(parent).map_err(PublishError::io(parent))?;
    }
    std::os::unix::fs::symlink("../ckms-sysext-depmod.service", &wants).map_err(PublishError::io(&wants))?;
    fix_modes(dir)
}

fn fix_modes(dir: &Path) -> Result<(), PublishError> {
    set_mode(dir, 0o755)?;
    for e in std::fs::read_dir(dir).map_err(PublishError::io(dir))? {
        let path = e.map_err(PublishError::io(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(PublishError::io(&path))?;
        if meta.is_dir() {
            fix_modes(&path)?;
        } else if meta.is_file() {
            set_mode(&path, if path.ends_with(HOOK) { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// A UUID from the image's name: fixed for reproducibility, different between images.
fn uuid(name: &str) -> String {
    let h = sha256_hex(name.as_bytes());
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::pairs::tests::{arm64, pair};

    /// Records the tree it was given (path, mode, contents) instead of making an image.
    struct Listing;

    impl MakeFs for Listing {
        fn make(&self, _: Filesystem, tree: &Path, image: &Path, epoch: u64, uuid: &str) -> Result<(), PublishError> {
            let mut lines = vec![format!("epoch {epoch} uuid {uuid}")];
            let mut stack = vec![tree.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    let meta = std::fs::symlink_metadata(&p).unwrap();
                    let rel = p.strip_prefix(tree).unwrap().display().to_string();
                    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                    if meta.is_dir() {
                        stack.push(p.clone());
                        lines.push(format!("{rel}/ {mode:o}"));
                    } else if meta.is_symlink() {
                        lines.push(format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display()));
                    } else {
                        lines.push(format!("{rel} {mode:o} {}", String::from_utf8_lossy(&std::fs::read(&p).unwrap())));
                    }
                }
            }
            lines.sort();
            std::fs::write(image, lines.join("\n")).unwrap();
            Ok(())
        }
    }

    #[test]
    fn one_image_per_module_and_kernel_with_files_only_under_that_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko", b"H"),
            pair(dir.path(), "hello", "6.1.0-55-amd64", "hello.ko", b"h55"),
            pair(dir.path(), "world", "6.1.0-56-amd64", "world.ko.xz", b"W"),
        ];
        let images = plan(&pairs, None, &OsOverride::default()).unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["hello-6.1.0-55-amd64", "hello-6.1.0-56-amd64", "world-6.1.0-56-amd64"]);
        for image in &images {
            for (path, _) in &image.files {
                assert!(path.starts_with(&format!("usr/lib/modules/{}/", image.kernel)), "{path}");
                assert!(!path.contains("modules.dep"), "no index in an extension");
            }
        }
        assert_eq!(images[1].release, "# ckms: hello-6.1.0-56-amd64\nID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n");

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        write(&out, &images, Filesystem::Erofs, &Listing).unwrap();
        let listing = std::fs::read_to_string(out.join("hello-6.1.0-56-amd64.raw")).unwrap();
        for line in [
            "usr/lib/modules/6.1.0-56-amd64/updates/dkms/hello.ko 644 H",
            "usr/lib/extension-release.d/extension-release.hello-6.1.0-56-amd64 644",
            "usr/lib/ckms/sysext-depmod 755",
            "usr/lib/systemd/system/sysinit.target.wants/ckms-sysext-depmod.service -> ../ckms-sysext-depmod.service",
            "usr/lib/ 755",
        ] {
            assert!(listing.contains(line), "{line:?} not in\n{listing}");
        }
        assert!(!listing.contains("6.1.0-55"), "nothing of another kernel:\n{listing}");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "staging trees are removed");
    }

    #[test]
    fn a_named_set_and_the_flags_override_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko", b"H"),
            pair(dir.path(), "world", "6.1.0-56-amd64", "world.ko", b"W"),
        ];
        let os = OsOverride { id: Some("flatcar".into()), sysext_level: Some("1.0".into()), ..Default::default() };
        let images = plan(&pairs, Some("fleet"), &os).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "fleet-6.1.0-56-amd64");
        assert_eq!(images[0].files.len(), 2);
        assert_eq!(
            images[0].release,
            "# ckms: fleet-6.1.0-56-amd64\nID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
        );

        let mut bare = pairs[0].clone();
        bare.target.os = None;
        let err = plan(&[bare], None, &OsOverride::default()).unwrap_err();
        assert!(err.to_string().contains("--os-id"), "{err}");
    }

    #[test]
    fn an_arm64_kernels_extension_names_its_architecture() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko", b"H"),
            arm64(pair(dir.path(), "hello", "6.1.0-56-arm64", "hello.ko", b"A")),
        ];
        let images = plan(&pairs, None, &OsOverride::default()).unwrap();
        let releases: Vec<&str> = images.iter().map(|i| i.release.as_str()).collect();
        assert_eq!(
            releases,
            [
                "# ckms: hello-6.1.0-56-amd64\nID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n",
                "# ckms: hello-6.1.0-56-arm64\nID=debian\nVERSION_ID=12\nARCHITECTURE=arm64\n",
            ]
        );
        // One --os-architecture for kernels of two architectures would mislabel one of them.
        let os = OsOverride { architecture: Some("arm64".into()), ..Default::default() };
        let err = plan(&pairs, None, &os).unwrap_err();
        assert!(
            matches!(&err, PublishError::OneArchitectureForMany { architectures, .. } if architectures == &["amd64", "arm64"]),
            "{err}"
        );
        let images = plan(&pairs[1..], None, &os).unwrap();
        assert!(images[0].release.ends_with("ARCHITECTURE=arm64\n"));
    }

    #[test]
    fn uuids_are_fixed_per_name() {
        assert_eq!(uuid("a"), uuid("a"));
        assert_ne!(uuid("a"), uuid("b"));
        assert_eq!(uuid("a").len(), 36);
    }
}
