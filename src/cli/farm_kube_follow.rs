//! `ckms farm kube follow-render --config FOLLOW.toml -o DIR`: `farm follow` as a Deployment
//! (docs/kubernetes.md, "Following the archive in a cluster").

use std::path::{Path, PathBuf};

use super::error::Error;
use super::registry::RegistryArgs;
use super::Output;
use ckms::context::Context;
use ckms::farm::follow::FollowConfig;
use ckms::farm::select::Selector;
use ckms::kube::follow::{self, FollowDeployment, CONFIG_DIR, CONFIG_FILE, DATA};
use ckms::kube::manifest;
use ckms::kube::render::{ckms_command, follow_image};

#[derive(clap::Args)]
pub struct FollowRenderArgs {
    /// The follow configuration the pod runs with (its paths are the pod's: the store under
    /// /var/lib/ckms, keys under a --secret directory); it needs a [kube] table.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The directory the manifests are written to.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    out: PathBuf,
    /// The namespace of every object (created, with PodSecurity "restricted" enforced).
    #[arg(long, value_name = "NAME", default_value = "ckms-farm")]
    namespace: String,
    /// Where to push the follow pod's image: HOST[:PORT][/REPOSITORY] (repository default:
    /// ckms/follow). Not needed with --image.
    #[arg(long, value_name = "REF", required_unless_present = "image")]
    registry: Option<String>,
    #[command(flatten)]
    access: RegistryArgs,
    /// Run this image instead (it must hold ckms as render's images do, /usr/lib/ckms).
    #[arg(long, value_name = "REF", requires = "uid")]
    image: Option<String>,
    /// The user (and group) --image runs ckms as.
    #[arg(long, value_name = "UID")]
    uid: Option<i64>,
    /// A Secret mounted read-only in the follow pod: NAME=DIR; repeatable.
    #[arg(long = "secret", value_name = "NAME=DIR")]
    secrets: Vec<String>,
    /// CPUs of the follow pod (requested and limited): polling, collecting, signing, publishing.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Memory of the follow pod, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    memory_mib: i64,
    /// The size of the store claim (store, cache, outputs), in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 50)]
    store_gib: i64,
    /// The size of the results claim, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 10)]
    results_gib: i64,
    /// The port the pod serves its metrics on.
    #[arg(long, value_name = "PORT", default_value_t = 9464)]
    metrics_port: i32,
    /// The ckms binary the image holds (default: this one).
    #[arg(long, value_name = "FILE")]
    ckms_binary: Option<PathBuf>,
}

pub async fn run(ctx: &Context, out: &Output, args: FollowRenderArgs) -> Result<i32, Error> {
    let cfg = FollowConfig::load(&args.config)?;
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| Error::usage(format!("{}: {e}", args.config.display()), None))?;
    let bad = |m: String, hint: &str| Error::usage(format!("{}: {m}", args.config.display()), Some(hint.into()));
    let Some(kube) = &cfg.kube else {
        return Err(bad(
            "no [kube] table: in a cluster, the follow pod builds through Jobs".into(),
            "add [kube] with registry = \"HOST/ckms/build\" (the options of `farm kube render`) and results = \"/results\"",
        ));
    };
    if cfg.build.get("verify").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad(
            "[build] verify = true: proving a module loads needs a VM (KVM), which a restricted pod has not".into(),
            "leave verify out in the cluster; prove on a machine with KVM (`ckms farm build --verify` on the store)",
        ));
    }
    let results = kube.get("results").and_then(|v| v.as_str()).unwrap_or("/results").to_string();
    let results_claim = kube.get("results_claim").and_then(|v| v.as_str()).unwrap_or("ckms-results").to_string();
    let mut secrets = Vec::new();
    for s in &args.secrets {
        let Some((name, dir)) = s.split_once('=').filter(|(n, d)| !n.is_empty() && d.starts_with('/')) else {
            return Err(Error::usage(format!("--secret {s:?}: NAME=DIR, DIR absolute"), None));
        };
        secrets.push((name.to_string(), dir.to_string()));
    }
    let mut mounted = vec![DATA.to_string(), results.clone()];
    mounted.extend(secrets.iter().map(|(_, d)| d.clone()));
    let outside: Vec<String> = cfg
        .paths()
        .into_iter()
        .filter(|(_, p)| !mounted.iter().any(|m| Path::new(p).starts_with(m)))
        .map(|(w, p)| format!("{w} = {p:?}"))
        .collect();
    if !outside.is_empty() {
        return Err(bad(
            format!("not in the follow pod: {}", outside.join(", ")),
            "the pod has the store claim at /var/lib/ckms, the results claim at [kube] results and each --secret \
             NAME=DIR: put the store and outputs under the first, keys and passwords in a Secret",
        ));
    }
    let binary = match &args.ckms_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| Error::usage(format!("the running ckms: {e}"), None))?,
    };
    let (image, uid, gid) = match (&args.image, args.uid) {
        (Some(image), Some(uid)) => (image.clone(), uid, uid),
        _ => {
            let registry = args.registry.clone().unwrap_or_default();
            let (host, repository) = match registry.split_once('/') {
                Some((h, r)) => (h.to_string(), r.to_string()),
                None => (registry.clone(), "ckms/follow".to_string()),
            };
            let kernel = first_kernel(ctx, &cfg).await?;
            let registry = args.access.registry(host)?;
            follow_image(ctx, &kernel, &binary, &registry, &repository).await?
        }
    };
    let metrics = format!("0.0.0.0:{}", args.metrics_port);
    let config = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let f = FollowDeployment {
        namespace: args.namespace.clone(),
        image,
        command: ckms_command(
            &format!("{DATA}/cache"),
            &["farm", "follow", "--config", &config, "--metrics", &metrics],
        ),
        config: text,
        uid,
        gid,
        cpu_millis: i64::from(args.cpus.max(1)) * 1000,
        memory_bytes: args.memory_mib << 20,
        store_bytes: args.store_gib << 30,
        results_claim,
        results_mount: results,
        secrets,
        metrics_port: args.metrics_port,
    };
    let objects = follow::objects(&f, args.results_gib << 30)?;
    clear_previous(&args.out, &objects)?;
    let files = manifest::write(&args.out, &objects)?;
    out.result(&files, || {
        let mut text: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
        text += &format!("apply with: kubectl apply -f {}\n", args.out.display());
        text
    });
    Ok(0)
}

/// The kernel whose builder image the follow image is made of: the first the `[build]`
/// selectors reach (its userland is the profile's; the kernel headers in it go unused).
async fn first_kernel(ctx: &Context, cfg: &FollowConfig) -> Result<ckms::kernel::Kernel, Error> {
    let selectors: Vec<String> = match cfg.build.get("kernel") {
        Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let parsed = selectors.iter().map(|s| Selector::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let profile = cfg.build.get("profile").and_then(|v| v.as_str());
    let kernels = ckms::farm::plan::kernels(ctx, &parsed, profile).await?;
    kernels.into_iter().next().ok_or_else(|| {
        Error::usage("[build] kernel selects no kernel: the follow image is made of a kernel's builder image", None)
    })
}

/// `out` new, empty, or holding only the files a previous follow-render wrote.
fn clear_previous(out: &Path, objects: &[(String, serde_json::Value)]) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !objects.iter().any(|(f, _)| *f == name) {
            return Err(Error::usage(
                format!("{} is in the way", e.path().display()),
                Some("name an empty or new directory, or a previous follow-render's".into()),
            ));
        }
    }
    Ok(())
}
