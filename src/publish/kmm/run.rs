//! The side of `--format kmm` that needs more than the store: the userland from each
//! profile's signed index (fetched into ckms's download cache), and the engine for `--load`.

use std::collections::BTreeMap;

use super::manifest;
use super::{plan, write, HostDepmod, USERLAND_BINARY, USERLAND_PACKAGE};
use crate::context::Context;
use crate::deb::read_data_file;
use crate::engine::Images;
use crate::oci::registry::push;
use crate::publish::{
    list_files, open, write_file, write_readiness, Format, Opened, PublishError, Published, Request, Staging,
};
use crate::repo::{self, Package};
use crate::verify;

/// Publishes the store's pairs as KMM images under `--out`, loading them into `engine` when
/// one is given.
pub async fn publish(req: &Request, ctx: &Context, engine: Option<&dyn Images>) -> Result<Published, PublishError> {
    let Opened { pairs, out, left_out, kernels } = open(req, &ctx.catalog)?;
    // Pushed images are named after their registry unless --repository says otherwise.
    let default_repository = req.registry.as_ref().map(|r| {
        let name = req.name.clone().unwrap_or_else(|| pairs.first().map(|p| p.module.clone()).unwrap_or_default());
        format!("{}/ckms/{}", r.host, name.to_ascii_lowercase())
    });
    let repository = req.repository.clone().or(default_repository);
    let mut plan = plan(&pairs, req.name.as_deref(), repository.as_deref())?;
    plan.insecure_registry = req.registry.as_ref().is_some_and(|r| r.insecure);
    let mut busybox = BTreeMap::new();
    for image in &mut plan.images {
        if !busybox.contains_key(&image.profile) {
            busybox.insert(image.profile.clone(), userland(ctx, &image.kernel, &image.profile).await?);
        }
        image.in_tree = in_tree(ctx, image).await?;
    }
    let staging = Staging::new(&out)?;
    let written = write(staging.path(), &plan, &busybox, &HostDepmod)?;
    write_readiness(staging.path(), &kernels)?;
    // What a cluster upgrade waits on: a PreflightValidation per ready kernel only.
    let mut notes = Vec::new();
    for k in &kernels {
        if k.ready {
            let file = format!("preflight-{}.yaml", crate::k8s::name(&k.kernel));
            write_file(staging.path(), &file, crate::k8s::to_yaml(&manifest::preflight(&k.kernel)).as_bytes())?;
        } else {
            let blocking: Vec<String> =
                k.blocking().map(|m| format!("{}/{} {}", m.module, m.version, m.state)).collect();
            notes.push(format!("no PreflightValidation for {}: not ready ({})", k.kernel, blocking.join(", ")));
        }
    }
    let files = list_files(staging.path())?;
    staging.commit()?;
    notes.extend(written.iter().map(|w| format!("image {} ({})", w.tag, w.id)));
    notes.extend(left_out);
    if let Some(engine) = engine {
        for w in &written {
            let failed = |message: String| PublishError::Image { tag: w.tag.clone(), message };
            engine.load_image(&out.join(&w.archive)).await.map_err(|e| failed(e.to_string()))?;
            match engine.image_id(&w.tag).await.map_err(|e| failed(e.to_string()))? {
                Some(id) if id == w.id => notes.push(format!("loaded {}", w.tag)),
                other => return Err(failed(format!("the engine reports {other:?} after loading, expected {}", w.id))),
            }
        }
    }
    if let Some(registry) = &req.registry {
        let path = registry.path_of(&plan.repository);
        for w in &written {
            let tag = w.tag.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            let digest = push(registry, &out.join(&w.archive), path, tag).await?;
            notes.push(format!("pushed {}/{path}:{tag} ({digest})", registry.host));
        }
    }
    let mut modules: Vec<&str> = pairs.iter().map(|p| p.module.as_str()).collect();
    modules.sort();
    modules.dedup();
    if modules.len() > 1 {
        // A KMM Module loads one module (and what its modules.dep line needs).
        notes.push(format!(
            "module.yaml loads {} only, of {}: publish with -m MODULE for one Module per module",
            plan.module_name,
            modules.join(", ")
        ));
    }
    notes.push(format!("kubectl apply -f {}", out.join("module.yaml").display()));
    Ok(Published { format: Format::Kmm.name().into(), out, files, notes })
}

/// The kernel's own modules the image's modules depend on, from its linux-image package.
async fn in_tree(ctx: &Context, image: &super::Image) -> Result<Vec<(String, std::path::PathBuf)>, PublishError> {
    let failed = |message: String| PublishError::Image { tag: image.tag.clone(), message };
    let (p, index, _) =
        ctx.find_kernel(&image.kernel, Some(&image.profile)).await.map_err(|e| failed(e.to_string()))?;
    let kernel = verify::kernel_package(ctx, &index, p, &image.kernel).await.map_err(|e| failed(e.to_string()))?;
    let files: Vec<_> = image.files.iter().map(|(_, f)| f.clone()).collect();
    verify::in_tree_dependencies(&kernel, &image.kernel, &files).map_err(|e| failed(e.to_string()))
}

/// The userland binary from the profile's index.
async fn userland(ctx: &Context, kernel: &str, profile: &str) -> Result<Vec<u8>, PublishError> {
    let failed = |message: String| PublishError::Userland {
        kernel: kernel.to_string(),
        package: USERLAND_PACKAGE.into(),
        message,
    };
    let p = ctx
        .catalog
        .profile(profile)
        .map_err(|_| PublishError::Profile { kernel: kernel.to_string(), profile: profile.to_string() })?;
    let index = ctx.index(p).await.map_err(|e| failed(e.to_string()))?;
    let pkg = index
        .candidate(USERLAND_PACKAGE)
        .map(Package::from)
        .ok_or_else(|| failed(format!("the profile {profile}'s index has no such package")))?;
    repo::fetch_packages(&ctx.cache, std::slice::from_ref(&pkg), ctx.reporter())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let deb = ctx.cache.blob_path(&pkg.sha256);
    let file = std::fs::File::open(&deb).map_err(PublishError::io(&deb))?;
    read_data_file(file, USERLAND_PACKAGE, USERLAND_BINARY)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed(format!("it holds no {USERLAND_BINARY}")))
}
