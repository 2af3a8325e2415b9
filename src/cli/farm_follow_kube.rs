//! A follow cycle's build in a cluster (the follow config's `[kube]` table): the pairs the
//! store lacks rendered as Indexed Jobs (as `farm kube render`), created through the API
//! server, waited for, collected from the results claim (as `farm kube collect`: checked,
//! signed here, stored), then deleted. Kubernetes schedules the build pods; this pod builds
//! nothing itself and holds the only signing key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Error;
use super::farm_build::BuildDone;
use super::farm_kube::{collect, parse_collect, parse_render, render_jobs};
use super::Output;
use ckms::context::Context;
use ckms::farm::follow::{argv, FollowConfig};
use ckms::farm::store::{Lookup, Status, Store};
use ckms::kube::api::{self, InCluster, Jobs};
use ckms::kube::plan::CKMS_DIR;

/// Keys of `[kube]` that are follow's, not `farm kube render`'s.
const OWN: &[&str] = &["results", "api", "namespace"];
/// How often a cycle asks the API server about its Jobs.
const POLL: Duration = Duration::from_secs(10);

/// The `[kube]` table, checked: the render and collect command lines of every cycle.
pub(super) struct KubeBuild {
    render: Vec<String>,
    collect: Vec<String>,
    results: PathBuf,
    store: PathBuf,
    api: Option<String>,
    namespace: Option<String>,
}

impl KubeBuild {
    pub(super) fn new(cfg: &FollowConfig, kube: &toml::Table) -> Result<KubeBuild, Error> {
        let bad = |m: String| Error::usage(format!("[kube]: {m}"), None);
        // Both need this machine's engine or KVM, which a pod has not.
        for key in ["verify", "check"] {
            if cfg.build.get(key).is_some_and(|v| v.as_bool() != Some(false)) {
                return Err(bad(format!(
                    "[build] {key}: a follow that builds through Jobs cannot (it needs a local engine or KVM); \
                     run `ckms farm build --{key}` on the store where there is one"
                )));
            }
        }
        let text = |k: &str| kube.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let results = PathBuf::from(text("results").unwrap_or_else(|| "/results".into()));
        let mut table = kube.clone();
        table.retain(|k, _| !OWN.contains(&k));
        // In an image of render's, this process runs through the loader: the binary the
        // build pods get is ckms itself, not the loader.
        let in_image = Path::new(CKMS_DIR).join("bin/ckms");
        if !table.contains_key("ckms_binary") && in_image.is_file() {
            table.insert("ckms_binary".into(), toml::Value::String(in_image.display().to_string()));
        }
        let store = vec!["--store".to_string(), cfg.store.display().to_string()];
        let mut render = [store.clone(), argv(&table, "").map_err(bad)?].concat();
        // What to build is [build]'s: its kernels, profile and sources.
        for key in ["kernel", "profile", "sources"] {
            if let Some(v) = cfg.build.get(key) {
                let one: toml::Table = [(key.to_string(), v.clone())].into_iter().collect();
                render.extend(argv(&one, "sources").map_err(bad)?);
            }
        }
        let mut collect = [store, vec!["--from".into(), results.display().to_string()]].concat();
        for key in ["key", "cert"] {
            if let Some(v) = cfg.build.get(key).and_then(|v| v.as_str()) {
                collect.extend([format!("--{key}"), v.to_string()]);
            }
        }
        let with_out = [render.clone(), vec!["-o".into(), "/nonexistent".into()]].concat();
        parse_render(&with_out).map_err(|e| bad(e.to_string()))?;
        parse_collect(&collect).map_err(|e| bad(e.to_string()))?;
        Ok(KubeBuild {
            render,
            collect,
            results,
            store: cfg.store.clone(),
            api: text("api"),
            namespace: text("namespace"),
        })
    }

    /// The API client: through `api` (a proxy that authenticates) or the pod's own account.
    pub(super) fn client(&self) -> Result<Box<dyn Jobs>, Error> {
        Ok(match &self.api {
            Some(url) => Box::new(InCluster::proxied(url, self.namespace.as_deref().unwrap_or("default"))?),
            None => Box::new(InCluster::from_pod()?),
        })
    }

    /// One cycle's build: render, create, wait, collect, delete.
    pub(super) async fn build(&self, ctx: &Context, out: &Output, jobs: &dyn Jobs) -> Result<BuildDone, Error> {
        let dir = tempfile::tempdir_in(ctx.cache.dir("tmp")?)
            .map_err(|e| Error::usage(format!("{}: {e}", ctx.cache.root().display()), None))?;
        let argv =
            [self.render.clone(), vec!["-o".into(), dir.path().join("manifests").display().to_string()]].concat();
        let args = parse_render(&argv).map_err(|e| Error::usage(e.to_string(), None))?;
        let done = render_jobs(ctx, args).await?;
        for l in &done.rendered.left_out {
            ctx.reporter().warn(format!("left out: {l}"));
        }
        let names: Vec<String> = done.rendered.jobs.iter().filter_map(|j| j.metadata.name.clone()).collect();
        let mut code = 0;
        if !names.is_empty() {
            for job in &done.rendered.jobs {
                jobs.create(job).await?;
            }
            ctx.reporter().info(format!("created {} Job(s): {}", names.len(), names.join(", ")));
            let ended = api::wait(jobs, &names, POLL, timeout(&done.rendered.jobs)).await?;
            for (name, how) in &ended {
                ctx.reporter().info(format!("Job {name}: {how:?}"));
            }
            let args = parse_collect(&self.collect).map_err(|e| Error::usage(e.to_string(), None))?;
            code = collect(ctx, out, args).await?;
            // Collected (or refused: built again by the next render): the Jobs and their
            // results go, so that no later collect reads them again.
            for name in &names {
                jobs.delete(name).await?;
                let dir = self.results.join(name);
                if dir.is_dir() {
                    std::fs::remove_dir_all(&dir).map_err(|e| Error::usage(format!("{}: {e}", dir.display()), None))?;
                }
            }
        }
        let store = Store::open(&self.store)?;
        let status = |k: &String| match store.get(k) {
            Lookup::Found(r) => Some(r.status),
            _ => None,
        };
        let built_now = done
            .rendered
            .plan
            .jobs
            .iter()
            .flat_map(|j| &j.pairs)
            .filter(|p| status(&p.key) == Some(Status::Built))
            .count();
        let failed = done.keys.iter().filter(|k| status(k) == Some(Status::Failed)).count();
        Ok(BuildDone { code, built_now, failed })
    }
}

/// How long the Jobs may take: each runs its indexes `parallelism` at a time, each pod within
/// its deadline; and ten minutes for the images to be pulled.
fn timeout(jobs: &[k8s_openapi::api::batch::v1::Job]) -> Duration {
    let secs: i64 = jobs
        .iter()
        .filter_map(|j| j.spec.as_ref())
        .map(|s| {
            let deadline = s.template.spec.as_ref().and_then(|p| p.active_deadline_seconds).unwrap_or(3600);
            let (n, at_once) = (i64::from(s.completions.unwrap_or(1)), i64::from(s.parallelism.unwrap_or(1).max(1)));
            let rounds = (n + at_once - 1) / at_once;
            deadline * rounds
        })
        .sum();
    Duration::from_secs(u64::try_from(secs).unwrap_or(0) + 600)
}
