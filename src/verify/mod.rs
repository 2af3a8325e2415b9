//! Proof of load: boot the target kernel (its own linux-image package) in a throwaway VM and
//! load the built modules into it, with the in-tree modules they depend on.
//!
//! Everything the VM needs is prepared on the host from cached, signature-checked packages:
//! [`boot`] extracts vmlinuz and the in-tree modules, [`modinfo`] finds each module's
//! dependencies, [`initramfs`] writes busybox, the init script and the modules into a cpio.
//! qemu runs in a sandboxed container of the "verifier" image (images/verifier.toml), so the
//! host needs no qemu; [`console`] reads what the VM's init printed.

pub mod boot;
pub mod console;
pub mod initramfs;
pub mod modinfo;
mod subject;
pub mod sysext;
pub mod tree;
pub mod userland;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::build;
use crate::context::{Context, ContextError};
use crate::diagnose::{code, Diagnose};
use crate::engine::{Engine, EngineError};
use crate::image::{self, run_spec, ImageError};
use crate::install::compress::Compression;
use crate::profile::{Profile, Qemu};
use crate::repo::{self, Index, Package, RepoError};
use console::Loaded;

/// Memory of the VM; Debian's kernels boot in much less, modules get the rest.
const VM_MEMORY_MIB: u32 = 512;
/// A TCG boot takes seconds; this bounds a VM that hangs (a module that never returns).
const VM_TIMEOUT: Duration = Duration::from_secs(180);
/// Where the VM's files go in the verifier container's volume.
const BOOT_DIR: &str = "boot";

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("{path}: {message}")]
    Module { path: PathBuf, message: String },
    #[error("the tree {root}: {message}")]
    Tree { root: PathBuf, kernel: String, message: String },
    #[error("kernel {kernel}: the profile {profile} offers no package {package}")]
    NoPackage { kernel: String, profile: String, package: String },
    #[error("kernel {kernel}: {package}: {message}")]
    Package { kernel: String, package: String, message: String },
    #[error("kernel {kernel}: the VM {}: {tail}", if *timed_out { "did not finish in time" } else { "stopped before every module was tried" })]
    Vm { kernel: String, timed_out: bool, tail: String },
    #[error("kernel {kernel}: {} of {total} module(s) failed verification: {}", failed.len(), failed.join("; "))]
    NotLoaded { kernel: String, total: usize, failed: Vec<String> },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl Diagnose for VerifyError {
    fn exit_code(&self) -> i32 {
        match self {
            VerifyError::Module { .. } | VerifyError::Tree { .. } => code::USAGE,
            VerifyError::NoPackage { .. } => code::UNKNOWN_KERNEL,
            VerifyError::Package { .. } => code::IO,
            VerifyError::Vm { timed_out: true, .. } => code::TIMEOUT,
            VerifyError::Vm { .. } | VerifyError::NotLoaded { .. } => code::NOT_LOADED,
            VerifyError::Context(e) => e.exit_code(),
            VerifyError::Image(e) => e.exit_code(),
            VerifyError::Engine(e) => e.exit_code(),
            VerifyError::Repo(e) => e.exit_code(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            VerifyError::Module { .. } => Some("name built module files (.ko, .ko.xz, .ko.zst, .ko.gz)".into()),
            VerifyError::Tree { root, kernel, .. } => Some(format!(
                "--tree names a root holding lib/modules/{kernel} with depmod's index, as `depmod -b {} {kernel}` makes it",
                root.display()
            )),
            VerifyError::NoPackage { .. } => {
                Some("check the profile's [kernel].image pattern, or `ckms kernels --refresh`".into())
            }
            VerifyError::Package { .. } => Some("`ckms --refresh` fetches the package again".into()),
            VerifyError::Vm { .. } => Some("the console's last lines are above; a module that hangs or panics the kernel ends the VM".into()),
            VerifyError::NotLoaded { .. } => Some(
                "the kernel's messages above say why: a vermagic or symbol version mismatch means the module was built for another kernel (rebuild it with -k for this one); an init error is the module's own".into(),
            ),
            VerifyError::Context(e) => e.hint(),
            VerifyError::Image(e) => e.hint(),
            VerifyError::Engine(e) => e.hint(),
            VerifyError::Repo(e) => e.hint(),
        }
    }
}

/// The outcome of one VM run.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub kernel: String,
    /// The modules asked for, in load order.
    pub modules: Vec<Loaded>,
    /// In-tree modules loaded first because the modules need them.
    pub dependencies: Vec<Loaded>,
    /// Modules named by a `depends=` that the kernel's package does not ship.
    pub missing: Vec<String>,
    /// What the VM ran before loading (`--sysext`: systemd-sysext's merge and status, the
    /// extensions' index hook).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prepare: Vec<String>,
    /// qemu's accelerator.
    pub accel: String,
    /// The container's run: VM boot, loads, power-off (and the engine's start and cleanup).
    pub vm_seconds: f64,
    /// All of it, from reading the modules to the VM's end.
    pub seconds: f64,
}

impl Verification {
    pub fn failed(&self) -> Vec<&Loaded> {
        self.modules.iter().filter(|m| !m.ok()).collect()
    }

    /// An error when a module did not load, naming each with its reason.
    pub fn check(&self) -> Result<(), VerifyError> {
        let failed: Vec<String> =
            self.failed().iter().map(|m| format!("{}: {}", m.name, m.reason().unwrap_or_default())).collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(VerifyError::NotLoaded { kernel: self.kernel.clone(), total: self.modules.len(), failed })
    }
}

/// A module file to load, read and decompressed on the host.
pub(crate) struct Candidate {
    name: String,
    bytes: Vec<u8>,
    depends: Vec<String>,
    /// Its `softdep=` pre names (modules or aliases), which modprobe loads first when the
    /// kernel has them.
    soft: Vec<String>,
    /// The release its vermagic names.
    built_for: Option<String>,
}

fn read_module(path: &Path) -> Result<Candidate, VerifyError> {
    let raw =
        std::fs::read(path).map_err(|e| VerifyError::Module { path: path.to_path_buf(), message: e.to_string() })?;
    parse_module(path, &raw)
}

fn parse_module(path: &Path, raw: &[u8]) -> Result<Candidate, VerifyError> {
    let (bytes, info) = decompressed(path, raw)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = match info.get("name") {
        Some(n) => modinfo::canonical(n),
        None => modinfo::name_of_file(file_name).unwrap_or_default(),
    };
    let built_for = info.get("vermagic").and_then(|v| v.split_whitespace().next()).map(str::to_string);
    Ok(Candidate { name, depends: info.depends(), soft: info.soft_pre(), built_for, bytes })
}

/// A module file's ELF (decompressed as its name says) and its `.modinfo`.
fn decompressed(path: &Path, raw: &[u8]) -> Result<(Vec<u8>, modinfo::ModInfo), VerifyError> {
    let err = |message: String| VerifyError::Module { path: path.to_path_buf(), message };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (_, compression) = Compression::split_file_name(file_name)
        .ok_or_else(|| err("not a kernel module file name (.ko, .ko.xz, .ko.zst, .ko.gz)".into()))?;
    let bytes = compression.decompress(raw).map_err(|e| err(format!("cannot decompress: {e}")))?;
    let info = modinfo::parse(&bytes).map_err(err)?;
    Ok((bytes, info))
}

/// What to load in the VM.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Module files, each loaded with insmod after the in-tree modules it depends on.
    Files(&'a [PathBuf]),
    /// A module tree as its consumer leaves it (a root holding `lib/modules/<release>` with
    /// depmod's index): the distribution's own `modprobe -d` loads each module named.
    Tree { root: &'a Path, modules: &'a [String] },
    /// System extension images: merged by systemd-sysext in the VM, then each module named
    /// loaded by modprobe from the merged /usr.
    Sysext { images: &'a [PathBuf], modules: &'a [String] },
}

/// Boots kernel `release` in a VM and loads `subject` into it.
pub async fn verify(
    ctx: &Context,
    engine: &dyn Engine,
    release: &str,
    profile: Option<&str>,
    subject: Subject<'_>,
) -> Result<Verification, VerifyError> {
    let started = Instant::now();
    let files = match subject {
        Subject::Files(files) => files,
        Subject::Tree { .. } | Subject::Sysext { .. } => &[],
    };
    let candidates = files.iter().map(|f| read_module(f)).collect::<Result<Vec<_>, _>>()?;
    let (p, index, kernel) = ctx.find_kernel(release, profile).await?;
    let recipe = ctx.catalog.recipe("verifier").map_err(ContextError::from)?;
    let report = ctx.reporter();
    report.info(match subject {
        Subject::Files(_) => format!("Verifying {} module(s) in a VM running {release}", candidates.len()),
        Subject::Tree { root, modules } => format!(
            "Verifying {} from {} with modprobe -d in a VM running {release}",
            modules.join(", "),
            root.display()
        ),
        Subject::Sysext { images, modules } => format!(
            "Verifying {} from {} system extension(s) merged by systemd-sysext in a VM running {release}",
            modules.join(", "),
            images.len()
        ),
    });

    // The VM runs on this machine: qemu for the kernel's architecture, from this machine's.
    let arch = ctx.catalog.architecture(p).map_err(ContextError::from)?;
    let mut recipe = recipe.clone();
    recipe.packages = recipe.packages.iter().map(|name| name.replace("{qemu}", &arch.qemu.package)).collect();
    let recipe = &recipe;
    let build = ctx.build_machine(p).await?;
    let image = async {
        let sources = image::Sources { profile: p, index: &index, cross: build.as_ref().map(|b| b.cross()) };
        let plan = image::plan(sources, recipe, &kernel, &[])?;
        Ok::<_, VerifyError>(image::build(&ctx.cache, engine, p, recipe, &plan, false, report).await?)
    };
    let kernel_files = kernel_package(ctx, &index, p, release);
    let busybox = async {
        let spec = recipe.initramfs.as_ref().ok_or_else(|| VerifyError::Package {
            kernel: release.to_string(),
            package: "busybox".into(),
            message: format!("the image recipe '{}' has no [initramfs] section", recipe.name),
        })?;
        let deb = fetch(ctx, &candidate(&index, release, p, &spec.package)?).await?;
        let (package, binary) = (spec.package.clone(), spec.busybox.clone());
        tokio::task::spawn_blocking(move || boot::read_file(&deb, &package, &binary))
            .await
            .map_err(|e| package_err(release, &spec.package, e.to_string()))?
            .map_err(|m| package_err(release, &spec.package, m))
    };
    let (image, kernel_files, busybox) = tokio::try_join!(image, kernel_files, busybox)?;

    let mut built_for: BTreeMap<String, Option<String>> =
        candidates.iter().map(|c| (c.name.clone(), c.built_for.clone())).collect();
    let (loads, missing) = load_plan(candidates, &kernel_files, release)?;
    let extra = subject::extra(ctx, &index, recipe, release, subject, &kernel_files, &mut built_for).await?;
    let initrd = initramfs::build(&busybox, &loads, &extra);
    let vmlinuz = std::fs::read(kernel_files.vmlinuz())
        .map_err(|e| package_err(release, "vmlinuz", format!("{}: {e}", kernel_files.vmlinuz().display())))?;
    let input = input_tar(&[("vmlinuz".into(), &vmlinuz), ("initrd".into(), &initrd)])
        .map_err(|e| package_err(release, "initramfs", e.to_string()))?;
    let dir = format!("{}/{BOOT_DIR}", recipe.config.workdir);
    let argv = qemu_argv(&arch.qemu, &format!("{dir}/vmlinuz"), &format!("{dir}/initrd"), VM_MEMORY_MIB);
    let mut spec = run_spec(recipe, &image.reference, argv, Some(input.into()), VM_TIMEOUT);
    spec.outputs.clear();
    let vm_started = Instant::now();
    let outcome = engine.run(&spec).await?;
    let vm_seconds = vm_started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&outcome.log);
    let console = console::parse(&log);
    if !console.completed || outcome.timed_out {
        let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(VerifyError::Vm {
            kernel: release.to_string(),
            timed_out: outcome.timed_out,
            tail: tail.join("\n"),
        });
    }
    let prepare = console.prepare;
    let (mut modules, dependencies): (Vec<Loaded>, _) = console.modules.into_iter().partition(|m| m.role == "module");
    for m in &mut modules {
        m.mismatch = match built_for.get(&m.name).cloned().flatten() {
            Some(b) if b != release => Some(format!(
                "built for {b} (its vermagic), not {release}{}; rebuild it for {release}",
                if m.loaded {
                    ": the kernel took it only because their symbol versions match (CONFIG_MODVERSIONS)"
                } else {
                    ""
                }
            )),
            _ => None,
        };
    }
    Ok(Verification {
        kernel: release.to_string(),
        modules,
        dependencies,
        missing,
        prepare,
        accel: "tcg".into(),
        vm_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The kernel's own modules that `files` (module files of the kernel `release`) need,
/// transitively: each one's path under `lib/modules/<release>/` in the package and its file.
pub fn in_tree_dependencies(
    kernel: &boot::BootKernel,
    release: &str,
    files: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, VerifyError> {
    let mut ours = files.iter().map(|f| read_module(f)).collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = ours.iter().map(|c| c.name.clone()).collect();
    for c in &mut ours {
        kernel.add_softdeps(release, c)?;
    }
    let found = kernel.dependencies(release, ours.into_iter().flat_map(|c| c.depends), &names)?;
    let files = kernel.modules().map_err(|e| package_err(release, "modules", e.to_string()))?;
    let paths = kernel.module_paths().map_err(|e| package_err(release, "modules", e.to_string()))?;
    Ok(found
        .keys()
        .filter_map(|name| {
            let file = files.get(name)?;
            let rel = paths.get(file.file_name()?.to_str()?)?;
            Some((rel.clone(), file.clone()))
        })
        .collect())
}

/// The kernel's own package (`[kernel].image`) extracted into the cache: vmlinuz and its
/// in-tree modules.
pub async fn kernel_package(
    ctx: &Context,
    index: &Index,
    p: &Profile,
    release: &str,
) -> Result<boot::BootKernel, VerifyError> {
    let package = p.kernel.image.replace("{kver}", release);
    let pkg = candidate(index, release, p, &package)?;
    let dir = ctx.cache.dir("boot").map_err(|e| package_err(release, &package, e.to_string()))?.join(&pkg.sha256);
    // Extracted once: later runs need neither the package nor its checksum again.
    if let Some(extracted) = boot::BootKernel::existing(&dir) {
        return Ok(extracted);
    }
    let deb = fetch(ctx, &pkg).await?;
    tokio::task::spawn_blocking({
        let release = release.to_string();
        move || boot::extract(&deb, &package, &release, &dir).map_err(|m| package_err(&release, &package, m))
    })
    .await
    .map_err(|e| package_err(release, "extraction", e.to_string()))?
}

fn package_err(kernel: &str, package: &str, message: String) -> VerifyError {
    VerifyError::Package { kernel: kernel.to_string(), package: package.to_string(), message }
}

/// The index's package named `package`.
fn candidate(index: &Index, release: &str, profile: &Profile, package: &str) -> Result<Package, VerifyError> {
    index.candidate(package).map(Package::from).ok_or_else(|| VerifyError::NoPackage {
        kernel: release.to_string(),
        profile: profile.name.clone(),
        package: package.to_string(),
    })
}

/// A package's cached file, fetched if missing.
async fn fetch(ctx: &Context, pkg: &Package) -> Result<PathBuf, VerifyError> {
    repo::fetch_packages(&ctx.cache, std::slice::from_ref(pkg), ctx.reporter()).await?;
    Ok(ctx.cache.blob_path(&pkg.sha256))
}

/// What the VM loads, in order: each candidate after the modules it depends on; in-tree
/// modules come from the kernel's package. Also the names no one provides.
fn load_plan(
    mut candidates: Vec<Candidate>,
    kernel: &boot::BootKernel,
    release: &str,
) -> Result<(Vec<initramfs::Load>, Vec<String>), VerifyError> {
    for c in &mut candidates {
        kernel.add_softdeps(release, c)?;
    }
    let roots: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
    let mut depends: BTreeMap<String, Vec<String>> =
        candidates.iter().map(|c| (c.name.clone(), c.depends.clone())).collect();
    let found = kernel.dependencies(release, candidates.iter().flat_map(|c| c.depends.clone()), &roots)?;
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, m) in found {
        depends.insert(name.clone(), m.depends);
        bytes.insert(name, m.bytes);
    }
    let (order, missing) = modinfo::load_order(&roots, &depends);
    let ours: BTreeSet<&str> = roots.iter().map(String::as_str).collect();
    let mut by_name: BTreeMap<String, Vec<u8>> = candidates.into_iter().map(|c| (c.name, c.bytes)).collect();
    let loads = order
        .into_iter()
        .filter_map(|name| {
            let (role, bytes) = if ours.contains(name.as_str()) {
                ("module", by_name.remove(&name)?)
            } else {
                ("dep", bytes.remove(&name)?)
            };
            Some(initramfs::Load { role, name, bytes })
        })
        .collect();
    Ok((loads, missing))
}

fn input_tar(files: &[(String, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    build::append_files(&mut b, BOOT_DIR, &[], files)?;
    b.into_inner()
}

/// The qemu command line: no devices but a serial console, the kernel and initramfs given
/// directly (no firmware boot loader, no disk), power-off or panic ends qemu.
pub fn qemu_argv(qemu: &Qemu, vmlinuz: &str, initrd: &str, memory_mib: u32) -> Vec<String> {
    let cmdline = format!("console={} quiet loglevel=1 panic=-1 rdinit=/init", qemu.console);
    let machine = qemu.args.iter().map(String::as_str);
    std::iter::once(qemu.binary.as_str())
        .chain(machine)
        .chain([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-accel",
            "tcg",
            "-m",
            &memory_mib.to_string(),
            "-kernel",
            vmlinuz,
            "-initrd",
            initrd,
            "-append",
            &cmdline,
        ])
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_boots_the_kernel_directly_with_a_serial_console_only() {
        let catalog = crate::profile::Catalog::load(&[]).unwrap();
        let a = qemu_argv(&catalog.architectures["amd64"].qemu, "/vm/boot/vmlinuz", "/vm/boot/initrd", 512);
        assert_eq!(a[0], "qemu-system-x86_64");
        let after = |flag: &str| a.iter().position(|x| x == flag).map(|i| a[i + 1].as_str());
        assert_eq!(after("-kernel"), Some("/vm/boot/vmlinuz"));
        assert_eq!(after("-initrd"), Some("/vm/boot/initrd"));
        assert_eq!(after("-serial"), Some("stdio"));
        assert!(after("-append").unwrap().contains("console=ttyS0"));
        assert!(after("-append").unwrap().contains("panic=-1"));
        assert!(a.contains(&"-nodefaults".to_string()) && a.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn softdeps_load_first_by_name_or_alias_and_missing_ones_are_left_out() {
        use modinfo::tests::tiny_module;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("paths"), "").unwrap();
        let module =
            |file: &str, info: &[u8]| std::fs::write(dir.join("modules").join(file), tiny_module(info)).unwrap();
        module("libcrc32c.ko", b"name=libcrc32c\0softdep=pre: crc32c\0depends=\0");
        module("crc32c_generic.ko", b"name=crc32c_generic\0alias=crypto-crc32c\0alias=crc32c\0");
        module("crc32c-intel.ko", b"name=crc32c_intel\0alias=crc32c\0alias=cpu:type:x86*\0");
        module("unrelated.ko", b"name=unrelated\0");
        let kernel = boot::BootKernel::existing(dir).unwrap();
        let ours = parse_module(
            Path::new("dm-writeboost.ko"),
            &tiny_module(b"name=dm_writeboost\0depends=libcrc32c\0softdep=pre: ghost\0"),
        )
        .unwrap();
        let (loads, missing) = load_plan(vec![ours], &kernel, "6.1.0-56-amd64").unwrap();
        let order: Vec<_> = loads.iter().map(|l| (l.role, l.name.as_str())).collect();
        assert_eq!(
            order,
            [("dep", "crc32c_generic"), ("dep", "crc32c_intel"), ("dep", "libcrc32c"), ("module", "dm_writeboost")]
        );
        assert!(missing.is_empty(), "{missing:?}");
        // The alias index is kept for the next run.
        let kept = std::fs::read_to_string(dir.join("aliases")).unwrap();
        assert!(kept.contains("crc32c crc32c_intel\n") && !kept.contains("cpu:"), "{kept}");
    }
}
