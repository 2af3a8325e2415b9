//! dkms's verbs: `ckms add|build|install|...` and, through [`dkms_argv`], `dkms ...`.

use std::path::PathBuf;

use ckms::context::Context;
use ckms::diagnose::code;
use ckms::error::Error;
use ckms::lifecycle::{AddSource, KernelTarget, Lifecycle, ModuleVersion, Options};
use ckms::tree::Roots;

use super::Output;

/// The verbs dkms knows, as ckms names its subcommands.
pub const VERBS: &[&str] = &[
    "add",
    "build",
    "install",
    "uninstall",
    "unbuild",
    "remove",
    "status",
    "autoinstall",
    "match",
    "mktarball",
    "ldtarball",
    "kernel_postinst",
    "kernel_prerm",
    "verify",
    "generate_mok",
];

/// What every verb takes: dkms's selection flags and tree roots.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// module/version (or, for `add`, a source directory, a tarball, a `*-dkms` .deb or
    /// deb:PACKAGE from the profile's repository; for `verify`, module files).
    what: Option<String>,
    /// verify: more module files.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// build, install: then load the modules into a VM running the kernel (see `verify`).
    #[arg(long)]
    verify: bool,
    /// Module name.
    #[arg(short = 'm', value_name = "MODULE")]
    module: Option<String>,
    /// Module version.
    #[arg(short = 'v', value_name = "VERSION")]
    version: Option<String>,
    /// Kernel release, optionally /arch (repeatable; default: the running kernel).
    #[arg(short = 'k', long = "kernelver", value_name = "KVER[/ARCH]")]
    kernels: Vec<String>,
    /// Architecture (default: the profile's, x86_64 for amd64).
    #[arg(short = 'a', long = "arch")]
    arch: Option<String>,
    /// Every kernel the module is built for (remove, unbuild, uninstall).
    #[arg(long)]
    all: bool,
    /// Redo a step that is already done.
    #[arg(long)]
    force: bool,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(short = 'j', value_name = "N")]
    jobs: Option<u32>,
    /// Show make's output.
    #[arg(long)]
    verbose: bool,
    /// Do not run depmod after install and uninstall.
    #[arg(long)]
    no_depmod: bool,
    /// Look for kernels only in this profile (add deb:PACKAGE: take the package from its repository).
    #[arg(long, short = 'p')]
    profile: Option<String>,
    /// add: the installed Debian package the source came from (common.postinst passes dpkg's
    /// DPKG_MAINTSCRIPT_PACKAGE); its Depends go into the builder image.
    #[arg(long, value_name = "PACKAGE")]
    package: Option<String>,
    /// Put every tree under DIR (DIR/usr/src, DIR/var/lib/ckms, DIR/lib/modules).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    sourcetree: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    dkmstree: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    installtree: Option<PathBuf>,
    /// Accepted for dkms compatibility; the headers always come from the builder image.
    #[arg(long, value_name = "DIR", hide = true)]
    kernelsourcedir: Option<PathBuf>,
    /// match: the kernel whose installed modules are copied.
    #[arg(long, value_name = "KVER")]
    templatekernel: Option<String>,
    /// ldtarball: the tarball (dkms's older `--archive=FILE` form; a plain path works too).
    #[arg(long, value_name = "FILE")]
    archive: Option<String>,
    /// mktarball: only the source / only the built modules.
    #[arg(long)]
    source_only: bool,
    #[arg(long)]
    binaries_only: bool,
}

#[derive(clap::Subcommand)]
pub enum Verb {
    /// Add a module source to the tree (-m M -v V, a directory with a dkms.conf, a tarball, a .deb, deb:PACKAGE).
    Add(Args),
    /// Build a module for kernels, in a rootless sandboxed container (implies add).
    Build(Args),
    /// Install built modules into /lib/modules/<kver> (implies build).
    Install(Args),
    /// Remove installed modules, restoring what they replaced.
    Uninstall(Args),
    /// Uninstall and delete the build for kernels.
    Unbuild(Args),
    /// Unbuild for kernels (--all: every kernel) and drop the version from the tree.
    Remove(Args),
    /// Show what is added, built and installed, in dkms's format.
    Status(Args),
    /// Build and install every AUTOINSTALL module for a kernel; one failure does not stop the others.
    Autoinstall(Args),
    /// Install, for -k, the modules installed for --templatekernel.
    Match(Args),
    /// Write a tarball of a module's source and builds.
    Mktarball(Args),
    /// Load a tarball written by mktarball (source and builds) into the tree.
    Ldtarball(Args),
    /// Load built modules (-m M -v V, or FILE...) into a VM running the kernel; report each.
    Verify(Args),
    /// What the kernel's postinst hook runs (= autoinstall).
    #[command(name = "kernel_postinst", hide = true)]
    KernelPostinst(Args),
    /// What the kernel's prerm hook runs: unbuild every module for the kernel.
    #[command(name = "kernel_prerm", hide = true)]
    KernelPrerm(Args),
}

/// dkms accepts options before the verb (`dkms -m x -v 1 build`); clap wants the verb first.
/// Moves the first word that is a verb (and not an option's value) to the front.
pub fn dkms_argv(args: Vec<String>) -> Vec<String> {
    const WITH_VALUE: &[&str] = &[
        "-m",
        "-v",
        "-k",
        "-a",
        "-j",
        "-c",
        "-p",
        "--kernelver",
        "--arch",
        "--root",
        "--sourcetree",
        "--dkmstree",
        "--installtree",
        "--kernelsourcedir",
        "--templatekernel",
        "--profile",
        "--package",
        "--engine",
        "--cache-dir",
    ];
    let mut rest: Vec<String> = args.into_iter().skip(1).collect();
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].as_str();
        if VERBS.contains(&a) {
            let verb = rest.remove(i);
            rest.insert(0, verb);
            break;
        }
        i += if WITH_VALUE.contains(&a) { 2 } else { 1 };
    }
    std::iter::once("dkms".to_string()).chain(rest).collect()
}

pub async fn run(ctx: &Context, out: &Output, verb: Verb) -> Result<i32, Error> {
    let (name, args) = match verb {
        Verb::Add(a) => ("add", a),
        Verb::Build(a) => ("build", a),
        Verb::Install(a) => ("install", a),
        Verb::Uninstall(a) => ("uninstall", a),
        Verb::Unbuild(a) => ("unbuild", a),
        Verb::Remove(a) => ("remove", a),
        Verb::Status(a) => ("status", a),
        Verb::Autoinstall(a) | Verb::KernelPostinst(a) => ("autoinstall", a),
        Verb::Match(a) => ("match", a),
        Verb::Mktarball(a) => ("mktarball", a),
        Verb::Ldtarball(a) => ("ldtarball", a),
        Verb::KernelPrerm(a) => ("kernel_prerm", a),
        Verb::Verify(a) => ("verify", a),
    };
    let lc = Lifecycle::new(ctx, roots(ctx, &args), options(&args));
    let kernels = targets(&args)?;
    match name {
        "add" => {
            let names = args.module.as_ref().zip(args.version.as_ref());
            let names = names.map(|(m, v)| ModuleVersion { module: m.clone(), version: v.clone() });
            let mv = match args.what.as_deref().and_then(|w| w.strip_prefix("deb:")) {
                Some(package) => lc.add_package(package, names.as_ref()).await?,
                None => lc.add(&add_source(&lc, &args)?, names.as_ref())?,
            };
            if let Some(package) = &args.package {
                lc.record_installed(&mv, package)?;
            }
            out.result(&mv, || format!("Module {mv} added\n"));
            Ok(0)
        }
        "build" => {
            let mv = selected(&lc, &args)?;
            let mut results = Vec::new();
            for k in &kernels {
                results.push(lc.build(&mv, k).await?);
            }
            out.result(&results, String::new);
            verify_after(&lc, &args, &mv, &kernels, out).await
        }
        "install" => {
            let mv = selected(&lc, &args)?;
            let mut results = Vec::new();
            for k in &kernels {
                results.push(lc.install(&mv, k).await?);
            }
            out.result(&results, String::new);
            verify_after(&lc, &args, &mv, &kernels, out).await
        }
        "uninstall" | "unbuild" => {
            let mv = selected(&lc, &args)?;
            let kernels = if args.all { lc.built_kernels(&mv) } else { kernels };
            for k in &kernels {
                if name == "uninstall" {
                    lc.uninstall(&mv, k).await?;
                } else {
                    lc.unbuild(&mv, k).await?;
                }
            }
            out.result(&kernels, String::new);
            Ok(0)
        }
        "remove" => {
            let mv = selected(&lc, &args)?;
            lc.remove(&mv, &kernels, args.all).await?;
            out.result(&mv, String::new);
            Ok(0)
        }
        "status" => {
            let mut lines = ckms::tree::status(&lc.roots, args.module.as_deref().or(args.what.as_deref()));
            if let Some(v) = &args.version {
                lines.retain(|s| &s.version == v);
            }
            if !args.kernels.is_empty() {
                lines.retain(|s| s.kernel.is_none() || kernels.iter().any(|k| Some(&k.release) == s.kernel.as_ref()));
            }
            for broken in lines.iter().filter(|s| s.state == ckms::tree::State::Broken) {
                eprintln!(
                    "Error! The source of {}/{} is missing: `ckms remove -m {} -v {} --all` drops it from the tree",
                    broken.module, broken.version, broken.module, broken.version
                );
            }
            out.result(&lines, || lines.iter().map(|l| format!("{l}\n")).collect());
            Ok(0)
        }
        "autoinstall" => {
            let mut failed = 0;
            let mut all = Vec::new();
            for k in &kernels {
                let results = lc.autoinstall(k).await?;
                for r in &results {
                    if !r.ok {
                        failed += 1;
                        eprintln!("Error! {}: {}", r.module, r.message);
                    }
                }
                let summary: Vec<String> = results.iter().map(|r| format!("{}: {}", r.module, r.message)).collect();
                ctx.reporter().info(format!(
                    "Autoinstall on {}: {} module(s), {} failed{}{}",
                    k.release,
                    results.len(),
                    results.iter().filter(|r| !r.ok).count(),
                    if summary.is_empty() { "" } else { "\n  " },
                    summary.join("\n  ")
                ));
                all.extend(results);
            }
            out.result(&all, String::new);
            Ok(if failed > 0 { code::AUTOINSTALL_FAILED } else { 0 })
        }
        "kernel_prerm" => {
            for k in &kernels {
                for mv in lc.all() {
                    if lc.built_kernels(&mv).iter().any(|b| b.release == k.release) {
                        lc.unbuild(&mv, k).await?;
                    }
                }
            }
            Ok(0)
        }
        "match" => {
            let template = args.templatekernel.clone().ok_or_else(|| usage("match needs --templatekernel KVER"))?;
            let template = KernelTarget { release: template, arch: args.arch.clone() };
            for mv in lc.all() {
                let arch = lc.built_kernels(&mv).into_iter().find(|b| b.release == template.release);
                let Some(t) = arch else { continue };
                let arch = t.arch.clone().unwrap_or_default();
                if lc.installed_version(&mv.module, &template.release, &arch).as_deref() == Some(&mv.version) {
                    for k in &kernels {
                        lc.install(&mv, k).await?;
                    }
                }
            }
            Ok(0)
        }
        "mktarball" => {
            let mv = selected(&lc, &args)?;
            let what = ckms::lifecycle::TarballParts { source: !args.binaries_only, binaries: !args.source_only };
            let file = lc.mktarball(&mv, &kernels, what)?;
            out.result(&file, || format!("Tarball location: {}\n", file.display()));
            Ok(0)
        }
        "ldtarball" => {
            let file = args
                .archive
                .clone()
                .or(args.what.clone())
                .ok_or_else(|| usage("ldtarball needs the tarball's path"))?;
            let mv = lc.ldtarball(std::path::Path::new(&file))?;
            out.result(&mv, || format!("Loaded {mv}\n"));
            Ok(0)
        }
        "verify" => {
            let files: Vec<PathBuf> = args.what.iter().map(PathBuf::from).chain(args.files.iter().cloned()).collect();
            let mut results = Vec::new();
            for k in &kernels {
                results.push(if args.module.is_none() && !files.is_empty() && files.iter().all(|f| f.is_file()) {
                    lc.verify_files(&k.release, &files).await?
                } else {
                    lc.verify(&selected(&lc, &args)?, k).await?
                });
            }
            show_verifications(&results, out)
        }
        _ => Err(usage(&format!("unknown verb {name}"))),
    }
}

/// `--verify` on build and install: the same as `verify` afterwards.
async fn verify_after(
    lc: &Lifecycle<'_>,
    args: &Args,
    mv: &ModuleVersion,
    kernels: &[KernelTarget],
    out: &Output,
) -> Result<i32, Error> {
    if !args.verify {
        return Ok(0);
    }
    let mut results = Vec::new();
    for k in kernels {
        results.push(lc.verify(mv, k).await?);
    }
    show_verifications(&results, out)
}

/// Prints the verifications; exit code 12 (with the kernel's reasons) when a module did not load.
fn show_verifications(results: &[ckms::verify::Verification], out: &Output) -> Result<i32, Error> {
    out.result(&results, || {
        results
            .iter()
            .map(|v| {
                let passed = v.modules.len() - v.failed().len();
                format!(
                    "Verified on {}: {passed} of {} module(s) passed ({:.1} s, of which the VM {:.1} s)\n",
                    v.kernel,
                    v.modules.len(),
                    v.seconds,
                    v.vm_seconds
                )
            })
            .collect()
    });
    for v in results {
        for m in v.failed() {
            eprintln!("Error! {} failed verification on {}: {}", m.name, v.kernel, m.reason().unwrap_or_default());
            for line in m.insmod.iter().chain(&m.kernel) {
                eprintln!("  {line}");
            }
        }
        if !v.missing.is_empty() {
            eprintln!("Warning: needed, but not shipped with {}: {}", v.kernel, v.missing.join(", "));
        }
    }
    Ok(if results.iter().any(|v| !v.failed().is_empty()) { code::NOT_LOADED } else { 0 })
}

fn usage(message: &str) -> Error {
    Error::usage(message, Some("`ckms help <verb>` shows its options".into()))
}

fn roots(ctx: &Context, a: &Args) -> Roots {
    let tree = ctx.config.dkms_tree();
    let mut r = match &a.root {
        Some(root) => Roots::under(root, &tree.to_string_lossy()),
        None => Roots { dkms_tree: tree, ..Roots::system() },
    };
    if let Some(d) = &a.sourcetree {
        r.source_tree = d.clone();
    }
    if let Some(d) = &a.dkmstree {
        r.dkms_tree = d.clone();
    }
    if let Some(d) = &a.installtree {
        r.install_tree = d.clone();
    }
    r
}

fn options(a: &Args) -> Options {
    let mut o = Options { force: a.force, verbose: a.verbose, depmod: !a.no_depmod, ..Options::default() };
    if let Some(j) = a.jobs {
        o.jobs = j.max(1);
    }
    o.profile = a.profile.clone();
    o
}

/// `-k kver[/arch]` (repeatable), default the running kernel; `-a` applies to all.
fn targets(a: &Args) -> Result<Vec<KernelTarget>, Error> {
    let given = if a.kernels.is_empty() { vec![running_kernel()?] } else { a.kernels.clone() };
    Ok(given
        .into_iter()
        .map(|k| match k.split_once('/') {
            Some((release, arch)) => KernelTarget { release: release.into(), arch: Some(arch.into()) },
            None => KernelTarget { release: k, arch: a.arch.clone() },
        })
        .collect())
}

fn running_kernel() -> Result<String, Error> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| usage(&format!("cannot read the running kernel's release: {e}; pass -k")))
}

/// The module version named by `-m/-v` or `M/V` (or `M` with one version).
fn selected(lc: &Lifecycle<'_>, a: &Args) -> Result<ModuleVersion, Error> {
    let (module, version) = match (&a.module, &a.what) {
        (Some(m), _) => (m.clone(), a.version.clone()),
        (None, Some(w)) => match w.split_once('/') {
            Some((m, v)) => (m.to_string(), Some(v.to_string())),
            None => (w.clone(), a.version.clone()),
        },
        (None, None) => return Err(usage("name the module: -m MODULE -v VERSION, or MODULE/VERSION")),
    };
    lc.complete(&module, version.as_deref())
}

fn add_source(lc: &Lifecycle<'_>, a: &Args) -> Result<AddSource, Error> {
    if let Some(w) = &a.what {
        let path = PathBuf::from(w);
        if path.is_dir() {
            return Ok(AddSource::Dir(path));
        }
        if path.is_file() && path.extension().is_some_and(|e| e == "deb") {
            return Ok(AddSource::Deb { file: path, learned_from: None });
        }
        if path.is_file() {
            return Ok(AddSource::Tarball(path));
        }
        if a.module.is_none() && !w.contains('/') {
            return Err(usage(&format!("{w} is neither a directory nor a tarball")));
        }
    }
    Ok(AddSource::Tree(selected(lc, a)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn dkms_options_may_come_before_the_verb() {
        assert_eq!(dkms_argv(argv("dkms -m x -v 1 build -k k")), argv("dkms build -m x -v 1 -k k"));
        assert_eq!(dkms_argv(argv("/usr/sbin/dkms status")), argv("dkms status"));
        // A module called like a verb is an option's value, not the verb.
        assert_eq!(dkms_argv(argv("dkms -m install -v 1 remove --all")), argv("dkms remove -m install -v 1 --all"));
    }

    #[test]
    fn kernels_with_and_without_arch() {
        let a = Args { kernels: vec!["6.1.0-56-amd64/x86_64".into(), "7.2.13+deb14-amd64".into()], ..Args::default() };
        let t = targets(&a).unwrap();
        assert_eq!(t[0], KernelTarget { release: "6.1.0-56-amd64".into(), arch: Some("x86_64".into()) });
        assert_eq!(t[1], KernelTarget { release: "7.2.13+deb14-amd64".into(), arch: None });
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        use clap::CommandFactory;
        super::super::Cli::command().debug_assert();
    }
}
