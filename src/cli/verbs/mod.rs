//! dkms's verbs: `ckms add|build|install|...` and, through [`dkms_argv`], `dkms ...`. Each verb
//! has its own options ([`args`]); this module turns them into calls of the library's lifecycle.

mod args;
mod dkms;

use std::path::PathBuf;

use crate::cli::error::Error;
use ckms::context::Context;
use ckms::diagnose::{code, Said};
use ckms::error::Refused;
use ckms::lifecycle::{
    AddSource, Added, KernelTarget, Lifecycle, LifecycleError, ModuleVersion, Options, TarballParts,
};
use ckms::tree::{self, Roots};
use ckms::verify::Subject;

use super::Output;
use args::*;
pub(super) use args::{Kernels, Trees};
pub use dkms::{dkms_argv, dkms_command};

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

#[derive(clap::Subcommand)]
pub enum Verb {
    /// Add a module source to the tree (-m M -v V, a directory with a dkms.conf, or a tarball).
    Add(AddArgs),
    /// Build a module for kernels, in a rootless sandboxed container (implies add).
    Build(BuildArgs),
    /// Install built modules into /lib/modules/<kver> (implies build).
    Install(InstallArgs),
    /// Remove installed modules, restoring what they replaced.
    Uninstall(RemoveArgs),
    /// Uninstall and delete the build for kernels.
    Unbuild(RemoveArgs),
    /// Unbuild for kernels (--all: every kernel) and drop the version from the tree.
    Remove(RemoveArgs),
    /// Show what is added, built and installed, in dkms's format.
    Status(StatusArgs),
    /// Build and install every AUTOINSTALL module for a kernel; one failure does not stop the others.
    Autoinstall(AutoinstallArgs),
    /// Install, for -k, the modules installed for --templatekernel.
    Match(MatchArgs),
    /// Write a tarball of a module's source and builds (or only one of them).
    Mktarball(MktarballArgs),
    /// Load a tarball written by mktarball (source and builds, or builds only) into the tree.
    Ldtarball(LdtarballArgs),
    /// Load built modules (-m M -v V, or FILE...) into a VM running the kernel; report each.
    Verify(VerifyArgs),
    /// What the kernel's postinst hook runs (= autoinstall).
    #[command(name = "kernel_postinst", hide = true)]
    KernelPostinst(AutoinstallArgs),
    /// What the kernel's prerm hook runs: unbuild every module for the kernel.
    #[command(name = "kernel_prerm", hide = true)]
    KernelPrerm(KernelPrermArgs),
    /// What a kernel's preinst runs before an upgrade: unbuild its AUTOINSTALL modules.
    #[command(name = "kernel_preinst", hide = true)]
    KernelPreinst(KernelPrermArgs),
}

pub async fn run(ctx: &Context, out: &Output, verb: Verb) -> Result<i32, Error> {
    if ctx.as_dkms {
        Refused::without_os_release(ctx.dialect().os_release_required, ckms::context::os_release().as_deref())?;
    }
    match verb {
        Verb::Add(a) => add(ctx, out, a).await,
        Verb::Build(a) => {
            let lc = lifecycle(ctx, &a.target.trees, &a.target.compat, options(a.force, Some(&a.flags), None))?;
            let (mv, kernels) = (selected(&lc, &a.target)?, targets(&a.target.kernels)?);
            let mut results = Vec::new();
            for k in &kernels {
                results.push(lc.build(&mv, k).await?);
            }
            out.result(&results, String::new);
            verify_after(&lc, a.verify, &mv, &kernels, out).await
        }
        Verb::Install(a) => {
            let opts = options(a.force, Some(&a.flags), Some(&a.depmod));
            let lc = lifecycle(ctx, &a.target.trees, &a.target.compat, opts)?.substituting(Box::new(
                ckms::prebuilt::Cache::new(ctx, prebuilt_only(&ctx.config.gate, a.prebuilt_only)),
            ));
            let (mv, kernels) = (selected(&lc, &a.target)?, targets(&a.target.kernels)?);
            let mut results = Vec::new();
            for k in &kernels {
                results.push(lc.install(&mv, k).await?);
            }
            lc.post_transaction(&first_kernel(&kernels))?;
            out.result(&results, String::new);
            verify_after(&lc, a.verify, &mv, &kernels, out).await
        }
        Verb::Uninstall(a) => remove(ctx, out, Removal::Uninstall, a).await,
        Verb::Unbuild(a) => remove(ctx, out, Removal::Unbuild, a).await,
        Verb::Remove(a) => remove(ctx, out, Removal::Remove, a).await,
        Verb::Status(a) => status(ctx, out, a),
        Verb::Autoinstall(a) => autoinstall(ctx, out, "autoinstall", a).await,
        Verb::KernelPostinst(a) => autoinstall(ctx, out, "kernel_postinst", a).await,
        Verb::Match(a) => run_match(ctx, a).await,
        Verb::Mktarball(a) => {
            let lc = lifecycle(ctx, &a.target.trees, &a.target.compat, Options::default())?;
            let mv = selected(&lc, &a.target)?;
            let parts = TarballParts { source: !a.binaries_only, binaries: !a.source_only };
            let kernels = if parts.binaries { targets(&a.target.kernels)? } else { Vec::new() };
            let file = lc.mktarball(&mv, &kernels, parts, a.archive.as_deref())?;
            out.result(&file, || format!("Tarball location: {}\n", file.display()));
            Ok(0)
        }
        Verb::Ldtarball(a) => {
            let lc = lifecycle(ctx, &a.trees, &a.compat, options(a.force, None, None))?;
            let file = a.file.or(a.archive).ok_or_else(|| usage("ldtarball needs the tarball's path"))?;
            let mv = lc.ldtarball(&file)?;
            out.result(&mv, || format!("Loaded {mv}\n"));
            Ok(0)
        }
        Verb::Verify(a) => verify(ctx, out, a).await,
        Verb::KernelPrerm(a) => kernel_prerm(ctx, a, false).await,
        Verb::KernelPreinst(a) => kernel_prerm(ctx, a, true).await,
    }
}

/// kernel_prerm, or kernel_preinst (its AUTOINSTALL modules only).
async fn kernel_prerm(ctx: &Context, a: KernelPrermArgs, preinst: bool) -> Result<i32, Error> {
    let hook = if preinst { "kernel_preinst" } else { "kernel_prerm" };
    // dkms 3.2 checks kernel_preinst's kernels under kernel_prerm's name.
    Refused::one_kernel("kernel_prerm", a.kernels.kernels.len(), a.all)?;
    let opts = options(false, None, Some(&a.depmod));
    let lc = lifecycle(ctx, &a.trees, &a.compat, opts)?;
    for k in &targets(&a.kernels)? {
        let failed = lc.kernel_prerm(k, preinst).await?;
        if !failed.is_empty() {
            let modules = failed.iter().map(|f| format!("{}({})", f.module, f.code)).collect();
            return Err(LifecycleError::KernelPrerm { hook, kernel: k.release.clone(), modules }.into());
        }
    }
    Ok(0)
}

async fn add(ctx: &Context, out: &Output, a: AddArgs) -> Result<i32, Error> {
    let mut opts = options(a.force, None, None);
    opts.profile = a.profile.clone();
    let lc = lifecycle(ctx, &a.trees, &a.compat, opts)?;
    let named = a.select.module.as_deref().map(|m| split(m, a.select.version.as_deref()));
    let names = match named {
        Some((module, Some(version))) => Some(ModuleVersion { module, version }),
        _ => None,
    };
    if let Some(package) = a.what.as_deref().and_then(|w| w.strip_prefix("deb:")) {
        let done = lc.add_package(package, names.as_ref()).await?;
        return added(&lc, out, done, a.package.as_deref());
    }
    let source = match a.what.as_deref().map(PathBuf::from) {
        // dkms takes a directory without a dkms.conf for no module at all.
        Some(path) if out.dkms && path.is_dir() && !path.join("dkms.conf").exists() && a.select.module.is_none() => {
            return Err(Refused::module_args("add").into())
        }
        Some(path) if path.is_dir() => AddSource::Dir(path),
        // dkms 3.2 adds by a dkms.conf's path: the module is the directory holding it.
        Some(path) if path.is_file() && path.file_name().is_some_and(|n| n == "dkms.conf") => {
            AddSource::Dir(source_dir(&path.to_string_lossy()).unwrap_or(path))
        }
        Some(path) if path.is_file() && path.extension().is_some_and(|e| e == "deb") => {
            AddSource::Deb { file: path, learned_from: None }
        }
        Some(path) if path.is_file() => AddSource::Tarball(path),
        Some(_) | None => {
            let what = a.what.as_deref();
            if a.select.module.is_none() && what.is_some_and(|w| !tree::module_version_like(w)) {
                return Err(usage(&format!(
                    "{}: no such directory or file (and not MODULE/VERSION)",
                    what.unwrap_or_default()
                )));
            }
            AddSource::Tree(select(&lc, what, &a.select)?)
        }
    };
    let done = lc.add(&source, names.as_ref())?;
    added(&lc, out, done, a.package.as_deref())
}

/// The end of `add`: as dkms, refused when it was added already (exit 3); then the package
/// the source came from, when common.postinst says it.
fn added(lc: &Lifecycle<'_>, out: &Output, done: Added, package: Option<&str>) -> Result<i32, Error> {
    let mv = &done.mv;
    match (done.already, out.dkms) {
        // As dkms: adding what is added is refused (exit 3); as ckms it is a no-op, so that
        // scripts and fleets may add again (e.g. the .deb a source came from).
        (true, true) => {
            return Err(LifecycleError::InTree { module: mv.module.clone(), version: mv.version.clone() }.into())
        }
        (true, false) => lc.ctx.reporter().detail(format!("Module {mv} is already added")),
        (false, _) => {}
    }
    if let Some(package) = package {
        lc.record_installed(mv, package)?;
    }
    lc.ctx.reporter().detail(format!("Module {mv} added"));
    out.result(mv, String::new);
    Ok(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Removal {
    Uninstall,
    Unbuild,
    Remove,
}

async fn remove(ctx: &Context, out: &Output, which: Removal, a: RemoveArgs) -> Result<i32, Error> {
    let lc = lifecycle(ctx, &a.target.trees, &a.target.compat, options(false, None, Some(&a.depmod)))?;
    let mv = selected(&lc, &a.target)?;
    let kernels = if a.all { lc.built_kernels(&mv) } else { targets(&a.target.kernels)? };
    match which {
        Removal::Remove => {
            lc.remove(&mv, &kernels, a.all).await?;
            lc.post_transaction(&first_kernel(&kernels))?;
            out.result(&mv, String::new);
            return Ok(0);
        }
        Removal::Uninstall => {
            for k in &kernels {
                lc.uninstall(&mv, k).await?;
            }
        }
        Removal::Unbuild => {
            for k in &kernels {
                lc.unbuild(&mv, k).await?;
            }
        }
    }
    lc.post_transaction(&first_kernel(&kernels))?;
    out.result(&kernels, String::new);
    Ok(0)
}

/// `install --prebuilt-only`, or a host whose `[gate] prebuilt_only` says it never builds: the
/// `*-dkms` packages' postinst installs through here, and such a host has no engine to build in.
fn prebuilt_only(gate: &ckms::config::GateConfig, flag: bool) -> bool {
    flag || gate.prebuilt_only()
}

/// What dkms's `$kernelver` is when framework.conf is read: the first kernel named.
fn first_kernel(kernels: &[KernelTarget]) -> String {
    kernels.first().map(|k| k.release.clone()).unwrap_or_default()
}

fn status(ctx: &Context, out: &Output, a: StatusArgs) -> Result<i32, Error> {
    let lc = lifecycle(ctx, &a.trees, &a.compat, Options::default())?;
    let (module, version) = match a.select.module.as_deref().or(a.what.as_deref()) {
        Some(name) => {
            let (m, v) = split(name, a.select.version.as_deref());
            (Some(m), v)
        }
        None => (None, a.select.version.clone()),
    };
    let mut lines = ckms::tree::status(&lc.roots, module.as_deref());
    if let Some(v) = &version {
        lines.retain(|s| &s.version == v);
    }
    if !a.kernels.is_empty() {
        let kernels = targets(&Kernels { kernels: a.kernels.clone(), arch: None })?;
        lines.retain(|s| s.kernel.is_none() || kernels.iter().any(|k| Some(&k.release) == s.kernel.as_ref()));
    }
    if let Some(arch) = &a.arch {
        lines.retain(|s| s.arch.as_ref().is_none_or(|x| x == arch));
    }
    if out.json {
        out.result(&lines, String::new);
        return Ok(0);
    }
    // dkms says what is wrong with a broken entry right after its line, on stderr.
    for line in &lines {
        ckms::report::outln(line);
        if line.state == ckms::tree::State::Broken {
            let said = Said {
                key: "status_broken",
                values: serde_json::json!({ "module": line.module, "version": line.version }),
            };
            let text = ctx.dialect().error(Some(&said), "", None);
            if !text.trim().is_empty() {
                eprintln!("{text}");
            }
        }
    }
    Ok(0)
}

async fn autoinstall(ctx: &Context, out: &Output, action: &str, a: AutoinstallArgs) -> Result<i32, Error> {
    Refused::one_kernel(action, a.kernels.kernels.len(), a.all)?;
    // As `install`: a farm's cache first, and never a build here under `[gate] prebuilt_only`.
    let lc = lifecycle(ctx, &a.trees, &a.compat, options(false, Some(&a.flags), Some(&a.depmod)))?
        .substituting(Box::new(ckms::prebuilt::Cache::new(ctx, prebuilt_only(&ctx.config.gate, false))));
    let mut all = Vec::new();
    for k in &targets(&a.kernels)? {
        let done = lc.autoinstall(k).await?;
        ctx.reporter().detail(done.summary());
        if done.ok() && !(done.installed.is_empty() && done.already.is_empty()) {
            lc.post_transaction(&k.release)?;
        }
        all.push(done);
    }
    out.result(&all, String::new);
    let (failed, total) = all.iter().fold((Vec::new(), 0), |(mut failed, total), done| {
        failed.extend(done.failed.iter().map(|f| f.module.to_string()));
        failed.extend(done.waiting.iter().map(|w| w.module.to_string()));
        let tried = done.installed.len() + done.skipped.len() + done.failed.len() + done.waiting.len();
        (failed, total + done.already.len() + tried)
    });
    if failed.is_empty() {
        return Ok(0);
    }
    let kernel = all.iter().map(|d| d.kernel.clone()).collect::<Vec<_>>().join(", ");
    Err(LifecycleError::Autoinstall { kernel, failed: failed.len(), total, names: failed }.into())
}

/// `match --templatekernel K1 -k K2 [MODULE[/VERSION]]`: install for K2 what is installed for K1.
async fn run_match(ctx: &Context, a: MatchArgs) -> Result<i32, Error> {
    let lc = lifecycle(ctx, &a.trees, &a.compat, options(false, Some(&a.flags), Some(&a.depmod)))?;
    let kernels = targets(&a.kernels)?;
    if kernels.iter().any(|k| k.release == a.templatekernel) {
        return Err(usage("The templatekernel and the specified kernel version are the same."));
    }
    let only = a.what.as_deref().map(|w| split(w, None));
    let template = KernelTarget { release: a.templatekernel.clone(), arch: a.kernels.arch.clone() };
    for mv in lc.all() {
        if only.as_ref().is_some_and(|(m, v)| *m != mv.module || v.as_ref().is_some_and(|v| *v != mv.version)) {
            continue;
        }
        let built = lc.built_kernels(&mv).into_iter().find(|b| b.release == template.release);
        let Some(t) = built else { continue };
        let arch = t.arch.clone().unwrap_or_default();
        if lc.installed_version(&mv.module, &template.release, &arch).as_deref() == Some(&mv.version) {
            for k in &kernels {
                lc.install(&mv, k).await?;
            }
        }
    }
    Ok(0)
}

async fn verify(ctx: &Context, out: &Output, a: VerifyArgs) -> Result<i32, Error> {
    let opts = Options { profile: a.profile.clone(), ..Options::default() };
    let lc = lifecycle(ctx, &a.trees, &a.compat, opts)?;
    let files: Vec<PathBuf> = a.what.iter().map(PathBuf::from).chain(a.files.iter().cloned()).collect();
    let mut results = Vec::new();
    for k in &targets(&a.kernels)? {
        results.push(if let Some(root) = &a.tree {
            lc.verify_subject(&k.release, Subject::Tree { root, modules: &a.modprobe }).await?
        } else if !a.sysext.is_empty() {
            lc.verify_subject(&k.release, Subject::Sysext { images: &a.sysext, modules: &a.modprobe }).await?
        } else if a.select.module.is_none() && !files.is_empty() && files.iter().all(|f| f.is_file()) {
            lc.verify_subject(&k.release, Subject::Files(&files)).await?
        } else {
            lc.verify(&select(&lc, a.what.as_deref(), &a.select)?, k).await?
        });
    }
    show_verifications(&results, out)
}

/// `--verify` on build and install: the same as `verify` afterwards.
async fn verify_after(
    lc: &Lifecycle<'_>,
    verify: bool,
    mv: &ModuleVersion,
    kernels: &[KernelTarget],
    out: &Output,
) -> Result<i32, Error> {
    if !verify {
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

/// The lifecycle over the trees the options name, after the notes on dkms options ckms ignores;
/// `install` looks in the configured binary caches first.
fn lifecycle<'a>(ctx: &'a Context, trees: &Trees, compat: &DkmsCompat, opts: Options) -> Result<Lifecycle<'a>, Error> {
    for note in compat.notes() {
        ctx.reporter().warn(note);
    }
    let mut opts = Options { kernel_config: compat.kernel_config.clone(), ..opts };
    if opts.jobs == 0 {
        opts.jobs = parallel_jobs(ctx).unwrap_or_else(|| Options::default().jobs);
    }
    // A farm's binary cache, when one is configured, before any build `install` would make.
    let cache = ckms::prebuilt::Cache::new(ctx, false);
    Ok(Lifecycle::new(ctx, roots(ctx, trees)?, opts).substituting(Box::new(cache)))
}

/// The trees: --root, then --sourcetree/--dkmstree/--installtree; relative ones from the
/// current directory, so that the links ckms makes point where the user meant.
pub(super) fn roots(ctx: &Context, t: &Trees) -> Result<Roots, Error> {
    let tree = ctx.config.dkms_tree();
    let mut r = match &t.root {
        Some(root) => Roots::under(root, &tree.to_string_lossy()),
        None => Roots { dkms_tree: tree, ..Roots::system() },
    };
    if let Some(d) = &t.sourcetree {
        r.source_tree = d.clone();
    }
    if let Some(d) = &t.dkmstree {
        r.dkms_tree = d.clone();
    }
    if let Some(d) = &t.installtree {
        r.install_tree = d.clone();
    }
    r.absolute().map_err(|e| usage(&format!("cannot make the tree paths absolute: {e}")))
}

/// The verbs' options; `jobs` 0 when `-j` is not given ([`lifecycle`] then asks the host).
fn options(force: bool, flags: Option<&BuildFlags>, depmod: Option<&Depmod>) -> Options {
    let mut o = Options { force, depmod: !depmod.is_some_and(|d| d.no_depmod), jobs: 0, ..Options::default() };
    if let Some(f) = flags {
        o.verbose = f.verbose;
        o.profile = f.profile.clone();
        if let Some(j) = f.jobs {
            o.jobs = j.max(1);
        }
    }
    o
}

/// dkms's `parallel_jobs` when `-j` is not given: the environment's, else framework.conf's
/// (dkms's default, the CPU count, is [`Options::default`]'s).
pub(super) fn parallel_jobs(ctx: &Context) -> Option<u32> {
    let framework =
        || ckms::framework::Framework::read(&ctx.config.conf_dir()).get("parallel_jobs").map(str::to_string);
    let jobs = std::env::var("parallel_jobs").ok().filter(|j| !j.is_empty()).or_else(framework)?;
    jobs.trim().parse::<u32>().ok().filter(|j| *j > 0)
}

/// `-k kver[/arch]` (repeatable), default the running kernel; `-a` applies to all.
pub(super) fn targets(k: &Kernels) -> Result<Vec<KernelTarget>, Error> {
    let given = if k.kernels.is_empty() { vec![running_kernel()?] } else { k.kernels.clone() };
    Ok(given
        .into_iter()
        .map(|given| match given.split_once('/') {
            Some((release, arch)) => KernelTarget { release: release.into(), arch: Some(arch.into()) },
            None => KernelTarget { release: given, arch: k.arch.clone() },
        })
        .collect())
}

fn running_kernel() -> Result<String, Error> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| usage(&format!("cannot read the running kernel's release: {e}; pass -k")))
}

/// `MODULE/VERSION` as (module, version); `MODULE` alone keeps `version`.
fn split(name: &str, version: Option<&str>) -> (String, Option<String>) {
    match name.split_once('/') {
        Some((m, v)) => (m.to_string(), Some(v.to_string())),
        None => (name.to_string(), version.map(str::to_string)),
    }
}

/// The module version a [`Target`] names; a module source directory (or its dkms.conf), as
/// dkms 3.2 takes one, is copied into the source tree first.
fn selected(lc: &Lifecycle<'_>, t: &Target) -> Result<ModuleVersion, Error> {
    if let (None, Some(dir)) = (&t.select.module, t.what.as_deref().and_then(source_dir)) {
        return Ok(lc.import(&dir)?);
    }
    select(lc, t.what.as_deref(), &t.select)
}

/// `what` as a module source directory: one holding a dkms.conf, or a dkms.conf's directory.
fn source_dir(what: &str) -> Option<PathBuf> {
    let path = PathBuf::from(what);
    if path.is_dir() && path.join("dkms.conf").is_file() {
        return Some(path);
    }
    if path.is_file() && path.file_name().is_some_and(|n| n == "dkms.conf") {
        return Some(
            path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf(),
        );
    }
    None
}

/// The module version named by `-m M -v V`, `-m M/V` or `M/V` (or `M` with one version).
fn select(lc: &Lifecycle<'_>, what: Option<&str>, s: &Select) -> Result<ModuleVersion, Error> {
    let name = s.module.as_deref().or(what);
    let name = name.ok_or_else(|| usage("name the module: -m MODULE -v VERSION, or MODULE/VERSION"))?;
    let (module, version) = split(name, s.version.as_deref());
    Ok(lc.complete(&module, version.as_deref())?)
}

#[cfg(test)]
mod tests;
