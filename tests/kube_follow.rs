//! `farm follow` building through Kubernetes Jobs (`[kube]`), against a fake API server on
//! loopback whose "kubelet" runs each created Job's pods with Podman as written
//! (tests/support/kube_api.rs, kube_pods.rs): one `--once` cycle renders the pairs, pushes
//! their image to a loopback registry, creates the Jobs through the API, waits for them,
//! collects (a module that builds is stored built and signed, one that fails stored failed),
//! publishes, deletes the Jobs and their results; a second cycle with nothing changed creates
//! no Job. And the image `farm kube follow-render` pushes runs ckms as the Deployment starts it.
//! Podman, docker-registry, gpg and the archive must be there: a missing one fails.
mod support;

#[path = "support/registry.rs"]
mod registry;

#[path = "support/kube_pods.rs"]
mod kube_pods;

#[path = "support/kube_pods_plan.rs"]
mod kube_pods_plan;

#[path = "support/kube_api.rs"]
mod kube_api;

#[path = "support/bookworm.rs"]
mod bookworm;

#[path = "support/farm.rs"]
mod farm;

use std::collections::HashMap;

use ckms::kube::manifest::{network_policy, results_claim, value};
use farm::{module, C, KERNEL};
use support::{ckms, engine_host, shared_cache};

const NS: &str = "ckms-farm";
const CLAIM: &str = "ckms-results";

#[test]
fn follow_builds_through_jobs_it_creates_through_the_api() {
    let engine = engine_host("CKMS_TEST_PODMAN_HOST");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = registry::LocalRegistry::start();
    let binary = kube_pods::pod_binary(d);
    let key = bookworm::farm_key(d);
    let good = module(d, "kfgood", "", "obj-m := kfgood.o\n", C);
    let bad = module(d, "kfbad", "", "obj-m := kfbad.o\n", "#include <linux/module.h>\nint x = undeclared_thing;\n");
    let [store, results, kubelet, www] = ["store", "results", "kubelet", "www"].map(|x| d.join(x));
    std::fs::create_dir_all(&results).unwrap();
    let beside = vec![
        ("01-results-claim.yaml".to_string(), value(&results_claim(CLAIM, 1 << 30)).unwrap()),
        ("02-build-network-policy.yaml".to_string(), value(&network_policy()).unwrap()),
    ];
    let api = kube_api::FakeApi::start(
        NS,
        kube_pods::Cli::Podman { url: engine },
        HashMap::from([(CLAIM.to_string(), results.clone())]),
        beside,
        &kubelet,
    );
    let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let config = format!(
        "store = {}\n[build]\nkernel = [\"{KERNEL}\"]\nsources = [{}, {}]\n\
         [kube]\napi = \"{}\"\nnamespace = \"{NS}\"\nregistry = \"{}/ckms/build\"\ninsecure = true\n\
         ckms_binary = {}\nresults = {}\nparallelism = 2\ncpus = 1\n\
         [[publish]]\nformat = \"cache\"\nout = {}\nkey = {}\n",
        q(&store),
        q(&good),
        q(&bad),
        api.url(),
        registry.host,
        q(&binary),
        q(&results),
        q(&www.join("cache")),
        q(&key),
    );
    let cfg = d.join("follow.toml");
    std::fs::write(&cfg, config).unwrap();
    let cache = shared_cache();
    let follow = || {
        ckms(["--cache-dir", cache.to_str().unwrap(), "farm", "follow", "--once", "--config", cfg.to_str().unwrap()])
            .run()
    };

    let started = std::time::Instant::now();
    let first = follow();
    let secs = started.elapsed().as_secs_f64();
    // The failing module is a failed pair, not a failed cycle: the cycle publishes.
    assert!(first.stderr.contains("cycle done"), "{first}");
    let calls = api.calls();
    let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let created: Vec<&String> = calls.iter().filter(|c| **c == format!("POST {jobs_path}")).collect();
    assert_eq!(created.len(), 1, "one Job (one kernel, one image): {calls:?}");
    assert!(calls.iter().any(|c| c.starts_with(&format!("GET {jobs_path}/"))), "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with(&format!("DELETE {jobs_path}/"))), "{calls:?}");
    assert!(calls.iter().all(|c| c.contains(&jobs_path)), "only Jobs, in its namespace: {calls:?}");
    assert_eq!(api.jobs(), Vec::<String>::new(), "the Jobs are deleted once collected");
    let pods = api.pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| p.exit_code == 0), "a failed build is a result: {pods:?}");
    assert_eq!(std::fs::read_dir(&results).unwrap().count(), 0, "collected results are removed");

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("follow/state.json")).unwrap()).unwrap();
    assert_eq!(state["pairs_built"], 1, "{state}");
    assert_eq!(state["pairs_failed"], 1, "{state}");
    let index = std::fs::read_to_string(www.join("cache/index.json")).unwrap();
    assert!(index.contains("kfgood"), "{index}");
    eprintln!("follow through Jobs: first cycle {secs:.1} s (render, 2 pods on Podman, collect, publish)");

    // Nothing changed: no build, no Job.
    let second = follow();
    second.expect_code(0);
    let again = api.calls().iter().filter(|c| c.starts_with("POST")).count();
    assert_eq!(again, 1, "{second}");
}

/// The image follow-render pushes (the builder image's userland and render's ckms layer) runs
/// ckms as the Deployment's command starts it, as the pod's user, read-only, without network.
#[test]
fn follow_render_pushes_an_image_whose_ckms_runs_as_the_pod_starts_it() {
    let engine = engine_host("CKMS_TEST_PODMAN_HOST");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = registry::LocalRegistry::start();
    let binary = kube_pods::pod_binary(d);
    let cfg = d.join("follow.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = \"/var/lib/ckms/store\"\n[build]\nkernel = [\"{KERNEL}\"]\nsources = [\"deb:v4l2loopback-dkms\"]\n\
             [kube]\nregistry = \"{}/ckms/build\"\n",
            registry.host
        ),
    )
    .unwrap();
    let cache = shared_cache();
    let out = d.join("out");
    let rendered = ckms([
        "--cache-dir",
        cache.to_str().unwrap(),
        "farm",
        "kube",
        "follow-render",
        "--config",
        cfg.to_str().unwrap(),
        "--registry",
        &format!("{}/ckms/follow", registry.host),
        "--insecure",
        "--ckms-binary",
        binary.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .run();
    rendered.expect_code(0);
    let text = std::fs::read_to_string(out.join("16-follow-deployment.yaml")).unwrap();
    let deployment: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().unwrap().to_string();
    assert!(image.starts_with(&format!("{}/ckms/follow@sha256:", registry.host)), "{image}");
    let command: Vec<String> =
        pod["containers"][0]["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let user = format!("{}:{}", pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]);

    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman").args(["--remote", "--url", &engine]).args(args).output();
        out.unwrap_or_else(|e| panic!("podman is needed by this test: {e}"))
    };
    let pulled = podman(&["pull", "--tls-verify=false", &image]);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    // The command up to ckms's own options (loader, --library-path, its libraries, ckms).
    let mut run = vec!["run", "--rm", "--read-only", "--network", "none", "--cap-drop", "ALL"];
    run.extend(["--security-opt", "no-new-privileges", "--user", &user, &image]);
    run.extend(command[..4].iter().map(String::as_str));
    run.push("--version");
    let ran = podman(&run);
    let _ = podman(&["rmi", &image]);
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success() && said.starts_with("ckms "), "{said}{}", String::from_utf8_lossy(&ran.stderr));
}
