//! `ckms farm kube render`: the pairs of a farm plan that the store lacks, as Indexed Jobs.
//!
//! Per builder image (one kernel, maybe an extra layer) the image is assembled from the cache
//! as for a local build, two layers are put on top: ckms itself (the binary and the libraries
//! it links beyond glibc) and the Job's inputs (its plan and the module sources), and the
//! result is pushed by digest. The pods then need no network and no volume to start from:
//! the kubelet pulls what they build from. The manifests are typed Kubernetes objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::manifest::{self, BuildJob};
use super::plan::{self, JobPlan, KubePlan, PodPair, CKMS_DIR, IN_IMAGE};
use super::KubeError;
use crate::artifact::pack_dir;
use crate::build::{CONTAINER_SOURCES, CONTAINER_TREE};
use crate::context::Context;
use crate::farm::plan::{FarmPlan, Work};
use crate::image::archive::{self, ArchiveLayer, ImageMeta};
use crate::image::{assemble, DEFAULT_PIDS};
use crate::oci::layer::layer;
use crate::oci::registry::{push, Registry};
use crate::oci::{tag_of, OciError};
use crate::pair::inputs;

/// Where the dynamic loader is in every image ckms assembles (x86-64, merged /usr).
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// Where the results volume is mounted in a pod.
pub const RESULTS: &str = "/results";
/// Where ckms's cache goes in a pod (the root file system is read-only).
const POD_CACHE: &str = "/tmp/ckms-cache";

/// How to render.
pub struct Request {
    pub registry: Registry,
    /// The repository in the registry (`ckms/build`).
    pub repository: String,
    pub out: PathBuf,
    /// The ckms binary the pods run (default: this one).
    pub binary: PathBuf,
    pub parallelism: i32,
    pub backoff_limit_per_index: i32,
    /// CPU per pod (millicores): also make's -j.
    pub cpu_millis: i64,
    pub claim: String,
    pub claim_bytes: i64,
    /// What `collect` evaluates again.
    pub sources: Vec<String>,
    pub kernels: Vec<String>,
    pub profile: Option<String>,
}

/// What was rendered.
#[derive(Debug, serde::Serialize)]
pub struct Rendered {
    pub plan: KubePlan,
    pub files: Vec<PathBuf>,
    /// Pairs left to `farm build` (BUILD_DEPENDS), with why.
    pub left_out: Vec<String>,
    /// The Jobs, as written (a follow pod creates them through the API server).
    #[serde(skip)]
    pub jobs: Vec<k8s_openapi::api::batch::v1::Job>,
}

/// Renders the pairs `todo` of `plan` into `req.out`.
pub async fn render(
    ctx: &Context,
    plan: &FarmPlan,
    work: &Work,
    todo: &[usize],
    req: &Request,
) -> Result<Rendered, KubeError> {
    let out = &req.out;
    clear_previous(out)?;
    let scratch = tempfile::tempdir_in(ctx.cache.dir("tmp")?).map_err(KubeError::io(out))?;
    let ckms_layer = ckms_layer(scratch.path(), &req.binary)?;
    let limits = &ctx.config.build;
    let make_jobs = u32::try_from((req.cpu_millis / 1000).max(1)).unwrap_or(1);

    let mut left_out = Vec::new();
    let mut by_image: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in todo {
        let p = &plan.pairs[i];
        if !p.after.is_empty() || !plan.sources[p.source].build_depends.is_empty() {
            left_out.push(format!("{}: BUILD_DEPENDS (build it with `ckms farm build`)", plan.label(i)));
            continue;
        }
        by_image.entry(p.image).or_default().push(i);
    }

    let mut jobs = Vec::new();
    let mut typed_jobs = Vec::new();
    let mut objects = vec![
        ("00-results-claim.yaml".to_string(), manifest::value(&manifest::results_claim(&req.claim, req.claim_bytes))?),
        ("01-network-policy.yaml".to_string(), manifest::value(&manifest::network_policy())?),
    ];
    for (&image, pairs) in &by_image {
        let spec = &plan.images[image];
        let kernel = &plan.kernels[spec.kernel];
        let profile = ctx.catalog.profile(&spec.profile)?;
        let recipe = ctx.catalog.recipe("builder")?;
        let assembled = assemble(&ctx.cache, profile, recipe, &spec.plan, ctx.reporter()).await?;
        let index = ctx.index(profile).await?;
        let kernel_config = crate::kernel::config(&ctx.cache, &index, kernel, ctx.reporter()).await?;
        let keys: Vec<&str> = pairs.iter().map(|&i| plan.pairs[i].key.as_str()).collect();
        let name = plan::job_name(&kernel.release, &keys);
        let conf_dir = ctx.config.conf_dir();
        let pod_pairs: Vec<PodPair> = pairs
            .iter()
            .map(|&i| {
                let p = &plan.pairs[i];
                let mv = &plan.sources[p.source].mv;
                PodPair {
                    key: p.key.clone(),
                    module: mv.module.clone(),
                    version: mv.version.clone(),
                    arch: p.arch.clone(),
                    visible: p.visible.iter().map(|v| (v.module.clone(), v.version.clone())).collect(),
                    overrides: inputs::overrides(&conf_dir, mv, &kernel.release, &p.arch)
                        .into_iter()
                        .map(|(n, b)| (n, String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                }
            })
            .collect();
        let mut job = JobPlan {
            name: name.clone(),
            kernel: kernel.release.clone(),
            profile: kernel.profile.clone(),
            builder: assembled.tags[1].clone(),
            builder_id: assembled.id.clone(),
            image: String::new(),
            make_jobs,
            timeout_secs: ctx.config.build_timeout().as_secs(),
            space_bytes: limits.space_mib.unwrap_or(4096) << 20,
            memory_bytes: limits.memory_mib.unwrap_or(4096) << 20,
            pids: limits.pids.unwrap_or(DEFAULT_PIDS),
            kernel_config,
            module_location: profile.install.module_location.clone(),
            image_sources: profile.relocated(CONTAINER_SOURCES).map(str::to_string),
            pairs: pod_pairs,
        };
        let sources = work.sources(&kernel.profile).source_tree;
        let inputs = inputs_layer(&scratch.path().join(&name), &job, &sources)?;
        let mut layers = assembled.layers.clone();
        layers.push(ckms_layer.clone());
        layers.push(inputs);
        let mut meta = assembled.meta.clone();
        meta.labels.insert("io.ckms.kube.job".into(), name.clone());
        job.image = push_image(&req.registry, &req.repository, &name, &layers, &meta, scratch.path()).await?;
        ctx.reporter().info(format!("pushed {} ({} pair(s))", job.image, job.pairs.len()));

        let build = BuildJob {
            name: name.clone(),
            labels: BTreeMap::from([("ckms.io/kernel".to_string(), tag_of(&kernel.release))]),
            image: job.image.clone(),
            node_arch: ctx.catalog.native().map_or(std::env::consts::ARCH, |a| a.oci.as_str()).to_string(),
            command: pod_command(),
            env: vec![],
            completions: job.pairs.len() as i32,
            parallelism: req.parallelism.min(job.pairs.len() as i32).max(1),
            backoff_limit_per_index: req.backoff_limit_per_index,
            // The build's own timeout, and time to start and write the result.
            deadline_seconds: job.timeout_secs as i64 + 300,
            uid: i64::from(recipe.user.uid),
            gid: i64::from(recipe.user.gid),
            cpu_millis: req.cpu_millis,
            memory_bytes: job.memory_bytes,
            storage_bytes: job.space_bytes,
            tmp_bytes: 256 << 20,
            scratch: vec![CONTAINER_TREE.to_string(), CONTAINER_SOURCES.to_string()],
            results_mount: RESULTS.to_string(),
        };
        let typed = manifest::job(&build, &req.claim);
        objects.push((format!("job-{name}.yaml"), manifest::value(&typed)?));
        typed_jobs.push(typed);
        jobs.push(job);
    }
    let kube_plan = KubePlan {
        format: plan::FORMAT,
        sources: req.sources.clone(),
        kernels: req.kernels.clone(),
        profile: req.profile.clone(),
        jobs,
    };
    let mut files = manifest::write(out, &objects)?;
    // Beside the manifests, not among them: `kubectl apply -f DIR` reads no subdirectory.
    let plan_path = out.join("ckms").join(plan::FILE);
    std::fs::create_dir_all(out.join("ckms")).map_err(KubeError::io(out))?;
    std::fs::write(&plan_path, kube_plan.to_json()).map_err(KubeError::io(&plan_path))?;
    files.push(plan_path);
    Ok(Rendered { plan: kube_plan, files, left_out, jobs: typed_jobs })
}

/// The image the follow pod runs: the builder image of `kernel` (a Debian userland with
/// what publishing calls: bash, dpkg-deb, depmod) with [`ckms_layer`] on top, pushed to
/// `repository`. The reference by digest, and the build user's uid and gid.
pub async fn follow_image(
    ctx: &Context,
    kernel: &crate::kernel::Kernel,
    binary: &Path,
    registry: &Registry,
    repository: &str,
) -> Result<(String, i64, i64), KubeError> {
    let scratch = tempfile::tempdir_in(ctx.cache.dir("tmp")?).map_err(KubeError::io(binary))?;
    let profile = ctx.catalog.profile(&kernel.profile)?;
    let recipe = ctx.catalog.recipe("builder")?;
    let index = ctx.index(profile).await?;
    let image_plan = ctx.plan_image(profile, &index, kernel, &[]).await?;
    let assembled = assemble(&ctx.cache, profile, recipe, &image_plan, ctx.reporter()).await?;
    let mut layers = assembled.layers.clone();
    layers.push(ckms_layer(scratch.path(), binary)?);
    let mut meta = assembled.meta.clone();
    meta.labels.insert("io.ckms.kube.follow".into(), kernel.release.clone());
    let tag = format!("follow-{}", tag_of(&kernel.release));
    let image = push_image(registry, repository, &tag, &layers, &meta, scratch.path()).await?;
    Ok((image, i64::from(recipe.user.uid), i64::from(recipe.user.gid)))
}

/// Writes `layers` as an image archive in `scratch`, pushes it as `repository:tag` and
/// names it by digest (`HOST/PATH@sha256:...`): the same layers give the same reference.
pub async fn push_image(
    registry: &Registry,
    repository: &str,
    tag: &str,
    layers: &[ArchiveLayer],
    meta: &ImageMeta,
    scratch: &Path,
) -> Result<String, KubeError> {
    let config = archive::image_config(layers, meta).map_err(image_err(tag))?;
    let archive_path = scratch.join(format!("{tag}.tar"));
    {
        let file = std::fs::File::create(&archive_path).map_err(KubeError::io(&archive_path))?;
        let mut w = std::io::BufWriter::new(file);
        archive::write_archive(&mut w, layers, &config, &[]).map_err(image_err(tag))?;
        std::io::Write::flush(&mut w).map_err(KubeError::io(&archive_path))?;
    }
    let path = registry.path_of(repository).to_string();
    let digest = push(registry, &archive_path, &path, tag).await?;
    let _ = std::fs::remove_file(&archive_path);
    Ok(format!("{}/{path}@{digest}", registry.host))
}

/// Makes `out` ready: new, empty, or a previous render's, whose objects are removed
/// (`kubectl apply -f DIR` would apply a stale Job again). Anything else there is refused.
fn clear_previous(out: &Path) -> Result<(), KubeError> {
    std::fs::create_dir_all(out).map_err(KubeError::io(out))?;
    let ours = |name: &str| name.ends_with(".yaml") && (name.starts_with("job-") || name.starts_with("0"));
    let entries: Vec<PathBuf> =
        std::fs::read_dir(out).map_err(KubeError::io(out))?.flatten().map(|e| e.path()).collect();
    let previous = out.join("ckms").join(plan::FILE).is_file();
    for path in &entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(previous && (ours(&name) || name == "ckms")) {
            return Err(KubeError::Result {
                dir: out.to_path_buf(),
                message: format!(
                    "{} is in the way: name an empty or new directory, or a previous render's",
                    path.display()
                ),
            });
        }
    }
    for path in entries {
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        gone.map_err(KubeError::io(&path))?;
    }
    Ok(())
}

/// What a build pod runs: this ckms, with the libraries it brought.
pub fn pod_command() -> Vec<String> {
    ckms_command(POD_CACHE, &["farm", "kube", "pod", "--results", RESULTS])
}

/// The ckms of an image with [`ckms_layer`] on top, started through the image's own loader
/// with the libraries it brought, with its cache in `cache` and `args`.
pub fn ckms_command(cache: &str, args: &[&str]) -> Vec<String> {
    let (lib, bin) = (format!("{CKMS_DIR}/lib"), format!("{CKMS_DIR}/bin/ckms"));
    [LOADER, "--library-path", &lib, &bin, "--cache-dir", cache].iter().chain(args).map(|s| s.to_string()).collect()
}

fn image_err(name: &str) -> impl Fn(archive::ArchiveError) -> OciError + '_ {
    move |e| OciError::Image { tag: name.to_string(), message: e.to_string() }
}

/// The ckms binary and the shared libraries it uses beyond glibc's (the image has those), as
/// this process has them mapped: a layer that is a function of the binary and its libraries.
pub fn ckms_layer(dir: &Path, binary: &Path) -> Result<ArchiveLayer, KubeError> {
    let bin = std::fs::read(binary).map_err(KubeError::io(binary))?;
    let mut libs: Vec<PathBuf> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".so") && !is_glibc(n)))
        .collect();
    libs.sort();
    libs.dedup();
    let mut contents = Vec::new();
    for lib in &libs {
        let name = lib.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        contents.push((name, std::fs::read(lib).map_err(KubeError::io(lib))?));
    }
    let top = CKMS_DIR.trim_start_matches('/');
    Ok(layer(dir.join("ckms.tar"), |w| {
        for d in ["usr", "usr/lib", top, &format!("{top}/bin"), &format!("{top}/lib")] {
            w.add_dir(d, 0o755, 0, 0)?;
        }
        w.add_file(&format!("{top}/bin/ckms"), &bin, 0o755, 0, 0)?;
        for (name, bytes) in &contents {
            w.add_file(&format!("{top}/lib/{name}"), bytes, 0o644, 0, 0)?;
        }
        Ok(())
    })?)
}

fn is_glibc(name: &str) -> bool {
    ["libc.so", "libm.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so", "libresolv.so", "libnss_"]
        .iter()
        .any(|g| name.starts_with(g))
}

/// The Job's plan and every module source its pairs build or see, read-only for the pods.
fn inputs_layer(dir: &Path, job: &JobPlan, sources: &Path) -> Result<ArchiveLayer, KubeError> {
    let mut trees: Vec<(String, String)> = Vec::new();
    for p in &job.pairs {
        trees.push((p.module.clone(), p.version.clone()));
        trees.extend(p.visible.iter().cloned());
    }
    trees.sort();
    trees.dedup();
    let top = IN_IMAGE.trim_start_matches('/');
    let mut tars = Vec::new();
    for (m, v) in &trees {
        let name = format!("{m}-{v}");
        let root = sources.join(&name);
        // The source tree holds links to the sources as added: the layer holds their content.
        let root = std::fs::canonicalize(&root).map_err(KubeError::io(&root))?;
        tars.push((pack_dir(&root, &format!("{top}/src/{name}"))?, name));
    }
    let job_json = serde_json::to_vec_pretty(job).unwrap_or_default();
    Ok(layer(dir.join("inputs.tar"), |w| {
        for d in ["usr", "usr/lib", "usr/lib/ckms", top, &format!("{top}/src")] {
            w.add_dir(d, 0o755, 0, 0)?;
        }
        w.add_file(&format!("{top}/job.json"), &job_json, 0o644, 0, 0)?;
        for (tar, name) in &tars {
            w.add_data_tar(&tar[..], name)?;
        }
        Ok(())
    })?)
}
