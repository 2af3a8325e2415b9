//! `ckms gate preinst|postinst|status` (the kernel hooks' gate) and `ckms ready`.

use super::error::Error;
use super::verbs::{parallel_jobs, roots, targets, Kernels, Trees};
use super::Output;
use ckms::config::OnFailure;
use ckms::context::Context;
use ckms::farm::ready::{self, KernelReadiness};
use ckms::gate::grub::{Grub, Pointed};
use ckms::gate::{Decision, Gate};
use ckms::lifecycle::{Lifecycle, LifecycleError, Options};
use ckms::prebuilt::Cache;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Before a kernel is installed (/etc/kernel/preinst.d): build or fetch every AUTOINSTALL
    /// module for it, installing nothing; [gate] on_failure = "refuse" fails when one is not ready.
    Preinst(Target),
    /// After a kernel is installed (/etc/kernel/postinst.d): autoinstall for it, then the
    /// policy: refuse fails, keep-default keeps GRUB's default on the newest ready kernel.
    Postinst(Target),
    /// The installed kernels, newest first, each ready or which modules are not and why.
    Status(TreesArg),
}

#[derive(clap::Args)]
pub struct Target {
    #[command(flatten)]
    kernels: Kernels,
    #[command(flatten)]
    trees: Trees,
}

#[derive(clap::Args)]
pub struct TreesArg {
    #[command(flatten)]
    trees: Trees,
}

/// `ckms ready -k KVER`: exit 0 when the configured caches hold every module, 1 when not.
#[derive(clap::Args)]
pub struct ReadyArgs {
    #[command(flatten)]
    target: Target,
}

fn lifecycle<'a>(ctx: &'a Context, trees: &Trees) -> Result<Lifecycle<'a>, Error> {
    let jobs = parallel_jobs(ctx).unwrap_or_else(|| Options::default().jobs);
    let cache = Cache::new(ctx, ctx.config.gate.prebuilt_only());
    Ok(Lifecycle::new(ctx, roots(ctx, trees)?, Options { jobs, ..Options::default() }).substituting(Box::new(cache)))
}

pub async fn run(ctx: &Context, out: &Output, cmd: Command) -> Result<i32, Error> {
    let cfg = &ctx.config.gate;
    match cmd {
        Command::Status(a) => {
            let lc = lifecycle(ctx, &a.trees)?;
            show(out, &Gate::new(&lc, cfg).status());
            Ok(0)
        }
        Command::Preinst(_) | Command::Postinst(_) if ctx.config.conf_dir().join("no-autoinstall").exists() => {
            ctx.reporter().info("ckms: autoinstall for dkms modules has been disabled");
            Ok(0)
        }
        Command::Preinst(a) => {
            let lc = lifecycle(ctx, &a.trees)?;
            let gate = Gate::new(&lc, cfg);
            let mut all = Vec::new();
            for k in &targets(&a.kernels)? {
                let r = gate.prepare(k).await?;
                warn(ctx, gate.decide(&r)?);
                all.push(r);
            }
            show(out, &all);
            Ok(0)
        }
        Command::Postinst(a) => {
            let lc = lifecycle(ctx, &a.trees)?;
            let gate = Gate::new(&lc, cfg);
            let (mut all, mut failed) = (Vec::new(), None);
            for k in &targets(&a.kernels)? {
                let done = lc.autoinstall(k).await?;
                ctx.reporter().detail(done.summary());
                if done.ok() && !(done.installed.is_empty() && done.already.is_empty()) {
                    lc.post_transaction(&k.release)?;
                }
                let r = gate.installed(k, &done).await?;
                let decision = gate.decide(&r)?;
                if cfg.on_failure() == OnFailure::KeepDefault {
                    keep_default(ctx, &gate, a.trees.root.as_deref().unwrap_or(std::path::Path::new("/")));
                }
                if !done.ok() && cfg.on_failure() == OnFailure::Warn {
                    // As dkms: the kernel's hook fails with autoinstall.
                    let names: Vec<String> = r.blocking().map(|m| format!("{}/{}", m.module, m.version)).collect();
                    let total = r.modules.len();
                    failed = Some(LifecycleError::Autoinstall {
                        kernel: k.release.clone(),
                        failed: names.len(),
                        total,
                        names,
                    });
                }
                warn(ctx, decision);
                all.push(r);
            }
            show(out, &all);
            failed.map_or(Ok(0), |e| Err(e.into()))
        }
    }
}

/// `ckms ready -k KVER`.
pub async fn ready(ctx: &Context, out: &Output, a: ReadyArgs) -> Result<i32, Error> {
    let lc = lifecycle(ctx, &a.target.trees)?;
    let gate = Gate::new(&lc, &ctx.config.gate);
    let mut all = Vec::new();
    for k in &targets(&a.target.kernels)? {
        all.push(gate.from_caches(k).await);
    }
    show(out, &all);
    Ok(if all.iter().all(|k| k.ready) { 0 } else { 1 })
}

fn show(out: &Output, kernels: &[KernelReadiness]) {
    if out.json {
        for k in kernels {
            ckms::report::outln(serde_json::to_string(k).unwrap_or_default());
        }
    } else {
        ckms::report::out(ready::text(kernels));
    }
}

fn warn(ctx: &Context, decision: Decision) {
    if let Decision::Warn(lines) = decision {
        ctx.reporter().warn(lines.join("\n"));
    }
}

/// keep-default: GRUB's saved default (of the system at `root`) on the newest ready kernel;
/// said when it cannot be.
fn keep_default(ctx: &Context, gate: &Gate, root: &std::path::Path) {
    let Some(kernel) = gate.newest_ready() else {
        ctx.reporter().warn("no installed kernel is ready: GRUB's default is left as it is");
        return;
    };
    match Grub::new(root).point_at(&kernel) {
        Pointed::Set(entry) => ctx.reporter().info(format!("GRUB's default: {entry} (the newest ready kernel)")),
        Pointed::NotSaved(d) => ctx.reporter().warn(format!(
            "[gate] keep-default: GRUB_DEFAULT is {d}, not saved, so GRUB boots the newest kernel whatever ckms \
             saves; set GRUB_DEFAULT=saved in /etc/default/grub and run update-grub"
        )),
        Pointed::NoGrub => ctx.reporter().warn("[gate] keep-default: no grub-editenv on this host"),
        Pointed::Failed(m) => ctx.reporter().warn(format!("[gate] keep-default: grub-editenv failed: {m}")),
    }
}
