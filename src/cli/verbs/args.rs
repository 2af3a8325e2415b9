//! The command line of each dkms verb: small option groups (module, kernels, trees, build
//! flags, depmod, dkms's ignored options) composed per verb, so that `ckms <verb> --help`
//! lists only what that verb uses.

use std::path::PathBuf;

/// `-m MODULE -v VERSION`; dkms also takes `-m MODULE/VERSION`.
#[derive(clap::Args, Debug, Default)]
pub struct Select {
    /// Module name (or MODULE/VERSION).
    #[arg(short = 'm', long = "module", value_name = "MODULE")]
    pub module: Option<String>,
    /// Module version.
    #[arg(short = 'v', value_name = "VERSION")]
    pub version: Option<String>,
}

/// `-k KVER[/ARCH]` (repeatable) and `-a ARCH`.
#[derive(clap::Args, Debug, Default)]
pub struct Kernels {
    /// Kernel release, optionally /ARCH (repeatable; default: the running kernel).
    #[arg(short = 'k', long = "kernelver", value_name = "KVER[/ARCH]")]
    pub kernels: Vec<String>,
    /// Architecture of kernels given without /ARCH (default: the profile's, x86_64 for amd64).
    #[arg(short = 'a', long = "arch", value_name = "ARCH")]
    pub arch: Option<String>,
}

/// Where the trees are; relative paths are taken from the current directory.
#[derive(clap::Args, Debug, Default)]
pub struct Trees {
    /// Put every tree under DIR (DIR/usr/src, DIR/var/lib/ckms, DIR/lib/modules).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Module sources, <DIR>/<module>-<version> (default: /usr/src).
    #[arg(long, value_name = "DIR")]
    pub sourcetree: Option<PathBuf>,
    /// ckms's tree of added and built modules (default: /var/lib/ckms).
    #[arg(long, value_name = "DIR")]
    pub dkmstree: Option<PathBuf>,
    /// Where modules are installed, <DIR>/<kernel>/ (default: /lib/modules).
    #[arg(long, value_name = "DIR")]
    pub installtree: Option<PathBuf>,
}

/// How a build runs (build, install and the verbs that build).
#[derive(clap::Args, Debug, Default)]
pub struct BuildFlags {
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(short = 'j', value_name = "N")]
    pub jobs: Option<u32>,
    /// Show make's output as it runs.
    #[arg(long)]
    pub verbose: bool,
    /// Look for kernels only in this profile (e.g. debian-bookworm).
    #[arg(short = 'p', long, value_name = "PROFILE")]
    pub profile: Option<String>,
}

/// `--no-depmod` (the verbs that change the install tree).
#[derive(clap::Args, Debug, Default)]
pub struct Depmod {
    /// Do not run depmod after changing the install tree.
    #[arg(long)]
    pub no_depmod: bool,
}

/// dkms's options that ckms accepts on every verb and ignores (hidden from --help; see
/// docs/dkms-compat.md). Those whose effect a dkms user would miss print a note.
#[derive(clap::Args, Debug, Default)]
pub struct DkmsCompat {
    /// dkms: another dkms.conf. ckms reads the one in the module's source.
    #[arg(short = 'c', value_name = "FILE", hide = true)]
    pub conf: Option<PathBuf>,
    /// dkms: the kernel's headers. ckms takes them from the kernel's builder image.
    #[arg(long, value_name = "DIR", hide = true)]
    pub kernelsourcedir: Option<PathBuf>,
    /// The kernel's .config to decide signing and BUILD_EXCLUSIVE_CONFIG by (default: the
    /// one in the kernel's headers package).
    #[arg(long = "config", value_name = "FILE", hide = true)]
    pub kernel_config: Option<PathBuf>,
    /// dkms: extra dkms.conf directives from the command line. Not supported.
    #[arg(long, value_name = "NAME=VALUE", hide = true)]
    pub directive: Vec<String>,
    /// dkms: load the modules after install. ckms does not.
    #[arg(long, hide = true)]
    pub modprobe_on_install: bool,
    /// dkms: install links to the built modules. ckms installs copies.
    #[arg(long, hide = true)]
    pub symlink_modules: bool,
    /// dkms: skip its module version check. ckms has none (it backs up what it replaces).
    #[arg(long, hide = true)]
    pub force_version_override: bool,
    /// dkms: RPM upgrade handling. Nothing to do.
    #[arg(long = "rpm_safe_upgrade", hide = true)]
    pub rpm_safe_upgrade: bool,
    /// dkms: shell tracing. ckms has --verbose.
    #[arg(long, hide = true)]
    pub debug: bool,
    /// Deprecated in dkms.
    #[arg(long, hide = true)]
    pub no_initrd: bool,
    /// Deprecated in dkms.
    #[arg(long, hide = true)]
    pub no_clean_kernel: bool,
    /// Deprecated in dkms.
    #[arg(long, hide = true)]
    pub no_prepare_kernel: bool,
}

impl DkmsCompat {
    /// One line per given option a dkms user would expect to do something; dkms's own
    /// "Deprecated feature" lines for its deprecated ones. Silent ones (no effect expected
    /// here, or none in dkms either) say nothing.
    pub fn notes(&self) -> Vec<String> {
        let note = |given: bool, option: &str, why: &str| given.then(|| format!("{option} is ignored: {why}"));
        let ignored = [
            note(self.conf.is_some(), "-c", "ckms reads the dkms.conf in the module's source"),
            note(
                self.kernelsourcedir.is_some(),
                "--kernelsourcedir",
                "the kernel's headers come from its builder image",
            ),
            note(!self.directive.is_empty(), "--directive", "put the directive in /etc/dkms/<module>.conf"),
            note(self.modprobe_on_install, "--modprobe-on-install", "ckms does not load modules; run modprobe"),
            note(self.symlink_modules, "--symlink-modules", "ckms installs copies of the built modules"),
        ];
        let deprecated = [
            ("--no-initrd", self.no_initrd),
            ("--no-clean-kernel", self.no_clean_kernel),
            ("--no-prepare-kernel", self.no_prepare_kernel),
        ];
        let deprecated = deprecated.into_iter().filter(|(_, given)| *given);
        ignored.into_iter().flatten().chain(deprecated.map(|(o, _)| format!("Deprecated feature: {o}"))).collect()
    }
}

/// What most verbs act on: a module version, kernels, trees.
#[derive(clap::Args, Debug, Default)]
pub struct Target {
    /// The module: MODULE/VERSION, or MODULE when the tree holds one version.
    #[arg(value_name = "MODULE/VERSION")]
    pub what: Option<String>,
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub kernels: Kernels,
    #[command(flatten)]
    pub trees: Trees,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
pub struct AddArgs {
    /// MODULE/VERSION whose source is in the source tree, a directory with a dkms.conf, a
    /// tarball, a `*-dkms` .deb, or deb:PACKAGE from the profile's signed repository.
    #[arg(value_name = "MODULE/VERSION|DIR|TARBALL|DEB|deb:PACKAGE")]
    pub what: Option<String>,
    #[command(flatten)]
    pub select: Select,
    /// The installed Debian package the source came from (common.postinst passes dpkg's
    /// DPKG_MAINTSCRIPT_PACKAGE); its Depends go into the builder image.
    #[arg(long, value_name = "PACKAGE")]
    pub package: Option<String>,
    /// deb:PACKAGE: take the package from this profile's repository (default: the host's).
    #[arg(long, short = 'p')]
    pub profile: Option<String>,
    #[command(flatten)]
    pub trees: Trees,
    /// Replace a different source of the same module version.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
pub struct BuildArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub flags: BuildFlags,
    /// Build again what is already built.
    #[arg(long)]
    pub force: bool,
    /// Then load the built modules into a VM running each kernel (see `ckms verify`).
    #[arg(long)]
    pub verify: bool,
}

#[derive(clap::Args, Debug, Default)]
pub struct InstallArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub flags: BuildFlags,
    #[command(flatten)]
    pub depmod: Depmod,
    /// Install again what is installed, replacing another installed version.
    #[arg(long)]
    pub force: bool,
    /// Then load the installed modules into a VM running each kernel (see `ckms verify`).
    #[arg(long)]
    pub verify: bool,
    /// Install from a farm's cache ([prebuilt] in config.toml) or fail; never build here.
    #[arg(long)]
    pub prebuilt_only: bool,
}

/// uninstall, unbuild, remove.
#[derive(clap::Args, Debug, Default)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub depmod: Depmod,
    /// Every kernel the module version is built for.
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args, Debug, Default)]
pub struct StatusArgs {
    /// Only this module: MODULE or MODULE/VERSION.
    #[arg(value_name = "MODULE[/VERSION]")]
    pub what: Option<String>,
    #[command(flatten)]
    pub select: Select,
    /// Only this kernel, KVER[/ARCH] (repeatable).
    #[arg(short = 'k', long = "kernelver", value_name = "KVER[/ARCH]")]
    pub kernels: Vec<String>,
    /// Only this architecture.
    #[arg(short = 'a', long = "arch", value_name = "ARCH")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub trees: Trees,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

/// autoinstall and kernel_postinst.
#[derive(clap::Args, Debug, Default)]
pub struct AutoinstallArgs {
    #[command(flatten)]
    pub kernels: Kernels,
    /// Refused, as by dkms (it takes one kernel).
    #[arg(long, hide = true)]
    pub all: bool,
    #[command(flatten)]
    pub trees: Trees,
    #[command(flatten)]
    pub flags: BuildFlags,
    #[command(flatten)]
    pub depmod: Depmod,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
pub struct MatchArgs {
    /// The kernel whose installed modules are installed for -k.
    #[arg(long, value_name = "KVER", required = true)]
    pub templatekernel: String,
    /// Only this module: MODULE or MODULE/VERSION.
    #[arg(value_name = "MODULE[/VERSION]")]
    pub what: Option<String>,
    #[command(flatten)]
    pub kernels: Kernels,
    #[command(flatten)]
    pub trees: Trees,
    #[command(flatten)]
    pub flags: BuildFlags,
    #[command(flatten)]
    pub depmod: Depmod,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
pub struct MktarballArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only the source, no built modules.
    #[arg(long, conflicts_with = "binaries_only")]
    pub source_only: bool,
    /// Only the built modules (with their build records and the dkms.conf): for hosts
    /// without a compiler or an engine (`ldtarball`, then `install`).
    #[arg(long)]
    pub binaries_only: bool,
    /// Write the tarball here (a bare name: in the module's tarball/ directory, as dkms).
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct LdtarballArgs {
    /// The tarball (as mktarball writes it, or a plain source tarball).
    #[arg(value_name = "TARBALL", required_unless_present = "archive", conflicts_with = "archive")]
    pub file: Option<PathBuf>,
    /// The tarball (dkms's --archive=FILE form).
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
    #[command(flatten)]
    pub trees: Trees,
    /// Replace builds that are already in the tree.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
#[command(group(clap::ArgGroup::new("consumer").args(["tree", "sysext"]).multiple(false)))]
pub struct VerifyArgs {
    /// MODULE/VERSION in the tree, or a module file (.ko, .ko.xz, ...).
    #[arg(value_name = "MODULE/VERSION|FILE")]
    pub what: Option<String>,
    /// More module files.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// A root holding lib/modules/<kernel> with depmod's index (as apt, KMM's worker or a
    /// merged system extension leaves it): load --modprobe's modules with `modprobe -d DIR`.
    #[arg(long, value_name = "DIR", requires = "modprobe")]
    pub tree: Option<PathBuf>,
    /// A system extension image (erofs or squashfs, repeatable): merged by systemd-sysext in
    /// the VM, then --modprobe's modules loaded from the merged /usr.
    #[arg(long, value_name = "IMAGE", requires = "modprobe")]
    pub sysext: Vec<PathBuf>,
    /// A module to load from --tree or --sysext with the distribution's modprobe (repeatable).
    #[arg(long, value_name = "MODULE", requires = "consumer")]
    pub modprobe: Vec<String>,
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub kernels: Kernels,
    #[command(flatten)]
    pub trees: Trees,
    /// Look for kernels only in this profile (e.g. debian-bookworm).
    #[arg(short = 'p', long, value_name = "PROFILE")]
    pub profile: Option<String>,
    #[command(flatten)]
    pub compat: DkmsCompat,
}

#[derive(clap::Args, Debug, Default)]
pub struct KernelPrermArgs {
    #[command(flatten)]
    pub kernels: Kernels,
    /// Refused, as by dkms (it takes one kernel).
    #[arg(long, hide = true)]
    pub all: bool,
    #[command(flatten)]
    pub trees: Trees,
    #[command(flatten)]
    pub depmod: Depmod,
    #[command(flatten)]
    pub compat: DkmsCompat,
}
