//! What a `--tree` or `--sysext` verification adds to the VM: the consumer's files, the
//! distribution's tools to load them with, and (for extensions) the merge to run first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::boot::BootKernel;
use super::initramfs::{Extra, Node};
use super::{package_err, parse_module, sysext, tree, userland, Subject, VerifyError};
use crate::context::Context;
use crate::profile::Recipe;
use crate::repo::{self, Index};

/// Where the tools' binaries are in the VM (their wrappers are in [`userland::BIN`]).
const LIB: &str = "/ckms/lib";

/// The additions for `subject`; records the vermagic of the modules it names in `built_for`.
pub(super) async fn extra(
    ctx: &Context,
    index: &Index,
    recipe: &Recipe,
    release: &str,
    subject: Subject<'_>,
    kernel: &BootKernel,
    built_for: &mut BTreeMap<String, Option<String>>,
) -> Result<Extra, VerifyError> {
    let mut extra = Extra::default();
    let mut named = |extra: &mut Extra, name: String, vermagic: Option<String>| {
        built_for.insert(name.clone(), vermagic);
        extra.modprobe.push(name);
    };
    let with_sysext = match subject {
        Subject::Files(_) => return Ok(extra),
        Subject::Tree { root, modules } => {
            let probe = tree::collect(root, release, modules, kernel).map_err(|message| VerifyError::Tree {
                root: root.to_path_buf(),
                kernel: release.to_string(),
                message,
            })?;
            for (name, file, bytes) in probe.modules {
                let vermagic = parse_module(&root.join(file), &bytes)?.built_for;
                named(&mut extra, name, vermagic);
            }
            extra.nodes = probe.nodes;
            extra.modprobe_args = format!("-d {}", tree::ROOT);
            false
        }
        Subject::Sysext { images, modules } => {
            let prepared = sysext::prepare(images, release, modules, kernel)?;
            for (name, vermagic) in prepared.modules {
                named(&mut extra, name, vermagic);
            }
            extra.nodes = prepared.nodes;
            extra.prepare = Some(prepared.script);
            true
        }
    };
    extra.nodes.extend(tools(ctx, index, recipe, release, with_sysext).await?);
    extra.nodes = userland::merged_usr(std::mem::take(&mut extra.nodes));
    Ok(extra)
}

/// kmod (as modprobe and depmod) and, for extensions, systemd-sysext and the target's
/// os-release, with their libraries, from the profile's packages (the recipe's
/// `[initramfs]` names them).
async fn tools(
    ctx: &Context,
    index: &Index,
    recipe: &Recipe,
    release: &str,
    with_sysext: bool,
) -> Result<BTreeMap<String, Node>, VerifyError> {
    let spec = recipe.initramfs.as_ref();
    let missing = |what: &str| VerifyError::Package {
        kernel: release.to_string(),
        package: what.to_string(),
        message: format!("the image recipe '{}' names no [initramfs] {what}", recipe.name),
    };
    let kmod = spec.and_then(|i| i.modprobe.clone()).ok_or_else(|| missing("modprobe"))?;
    let mut tools = vec![(kmod, format!("{LIB}/kmod"), 0o755)];
    if with_sysext {
        let sysext = spec.and_then(|i| i.sysext.clone()).ok_or_else(|| missing("sysext"))?;
        let os_release = spec.and_then(|i| i.os_release.clone()).ok_or_else(|| missing("os_release"))?;
        let shell = spec.and_then(|i| i.shell.clone()).ok_or_else(|| missing("shell"))?;
        tools.push((sysext, format!("{LIB}/systemd-sysext"), 0o755));
        tools.push((shell, format!("{LIB}/sh"), 0o755));
        tools.push((os_release, "/usr/lib/os-release".to_string(), 0o644));
    }
    let roots: Vec<String> = tools.iter().map(|(t, ..)| t.package.clone()).collect();
    let packages = index.resolve(&roots, &[]).map_err(|e| package_err(release, &roots.join(", "), e.to_string()))?;
    repo::fetch_packages(&ctx.cache, &packages, ctx.reporter()).await?;
    let debs: Vec<(String, PathBuf)> =
        packages.iter().map(|pkg| (pkg.name.clone(), ctx.cache.blob_path(&pkg.sha256))).collect();
    let release_owned = release.to_string();
    tokio::task::spawn_blocking(move || {
        let wants: Vec<userland::Want> = tools
            .iter()
            .map(|(t, at, mode)| userland::Want { package: &t.package, binary: &t.binary, at: at.clone(), mode: *mode })
            .collect();
        let failed = |m: String| package_err(&release_owned, &roots.join(", "), m);
        let mut nodes = userland::nodes(&wants, &debs).map_err(failed)?;
        let mut wrappers = vec![("modprobe", "kmod"), ("depmod", "kmod")];
        if with_sysext {
            wrappers.extend([("systemd-sysext", "systemd-sysext"), ("sh", "sh")]);
        }
        for (name, binary) in wrappers {
            let node = userland::wrapper(&nodes, &format!("{LIB}/{binary}"), name).map_err(failed)?;
            nodes.insert(format!("{}/{name}", userland::BIN), node);
        }
        Ok(nodes)
    })
    .await
    .map_err(|e| package_err(release, "tools", e.to_string()))?
}
