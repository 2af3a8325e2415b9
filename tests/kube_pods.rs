//! The kube_pods harness (tests/support/kube_pods.rs) runs hand-made Indexed Jobs on Podman
//! and on Docker as their pods would run: a ckms builder image pushed to Debian's
//! docker-registry on loopback and pulled back by digest, three indexes two at a time, each
//! writing its own results/<job>/<index>; the pod sees a read-only root, a non-root uid, no
//! network but lo, no capabilities; a deadline kills a sleeping pod; a Job that no deny-all
//! NetworkPolicy selects is refused. Fails when an engine is missing, never skips.
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ckms::k8s::to_yaml;
use kube_pods::{expand, run_rendered, Cli, PodRun};
use serde_json::{json, Value};
use support::{ckms, engine_host, shared_cache};

#[path = "support/bookworm.rs"]
mod bookworm;

#[path = "support/kube_pods.rs"]
mod kube_pods;

#[path = "support/kube_pods_plan.rs"]
mod kube_pods_plan;

#[path = "support/registry.rs"]
mod registry;

const KERNEL: &str = "6.1.0-56-amd64";

/// The objects every directory holds, as `farm kube render` writes them (in its YAML, which
/// `to_yaml` makes): the results claim and the deny-all policy.
fn claim() -> String {
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ckms-results"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
}

fn deny_all() -> String {
    to_yaml(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "ckms-build-deny-all"},
        "spec": {
            "podSelector": {"matchLabels": build_labels()},
            "policyTypes": ["Ingress", "Egress"]
        }
    }))
}

fn build_labels() -> Value {
    json!({"ckms.io/role": "build", "app.kubernetes.io/managed-by": "ckms"})
}

/// What each probe pod prints and writes: its index to /results/out, when it ran to
/// /results/times.
const PROBE: &str = r#"
start=$(date +%s.%N)
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
if touch /rootfs-probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi
if touch /var/tmp/probe 2>/dev/null; then echo vartmp=writable; else echo vartmp=read-only; fi
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
echo "tmpsize=$(df -B1 --output=size /tmp | tail -1 | tr -d ' ')"
touch /tmp/t && echo tmp=writable
touch /scratch/s && echo scratch=writable
echo "memlimit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "cpuquota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max)"
echo "index=$JOB_COMPLETION_INDEX derived=$DERIVED arg=$1 pwd=$(pwd)"
echo "$JOB_COMPLETION_INDEX" > /results/out
sleep 2
echo "$start $(date +%s.%N)" > /results/times
"#;

/// An Indexed Job of `completions` pods, `parallelism` at a time, running `script` (bash, with
/// one argument "$(DERIVED)") in `image`, its pods labelled `labels`; `extra` is merged into
/// the pod spec.
fn job(
    name: &str,
    image: &str,
    completions: u32,
    parallelism: u32,
    deadline: u32,
    labels: Value,
    script: &str,
) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": parallelism,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "activeDeadlineSeconds": deadline,
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "args": ["$(DERIVED)"],
                        "command": ["bash", "-c", script, "probe"],
                        "env": [
                            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                            {"name": "DERIVED", "value": "pod-$(JOB_COMPLETION_INDEX)"},
                            {"name": "HOME", "value": "/tmp"}
                        ],
                        "image": image,
                        "name": "build",
                        "resources": {
                            "limits": {"cpu": "1", "ephemeral-storage": "2Gi", "memory": "512Mi"},
                            "requests": {"cpu": "500m", "ephemeral-storage": "1Gi", "memory": "256Mi"}
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": true
                        },
                        "volumeMounts": [
                            {"mountPath": "/tmp", "name": "tmp"},
                            {"mountPath": "/scratch", "name": "scratch"},
                            {"mountPath": "/results", "name": "results",
                             "subPathExpr": format!("{name}/$(JOB_COMPLETION_INDEX)")}
                        ],
                        "workingDir": "/scratch"
                    }],
                    "enableServiceLinks": false,
                    "restartPolicy": "Never",
                    "securityContext": {
                        "fsGroup": 1000,
                        "runAsGroup": 1000,
                        "runAsNonRoot": true,
                        "runAsUser": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [
                        {"emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}, "name": "tmp"},
                        {"emptyDir": {}, "name": "scratch"},
                        {"name": "results", "persistentVolumeClaim": {"claimName": "ckms-results"}}
                    ]
                }
            }
        }
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn podman(url: &str) -> Command {
    let mut c = Command::new("podman");
    c.args(["--remote", "--url", url]);
    c
}

fn docker(host: &str) -> Command {
    let mut c = Command::new("docker");
    c.args(["-H", host]);
    c
}

/// The digest-pinned reference, pulled by each engine once, removed again on drop.
struct Pulled {
    image: String,
    podman: String,
    docker: String,
}

impl Drop for Pulled {
    fn drop(&mut self) {
        let _ = podman(&self.podman).args(["rmi", &self.image]).output();
        let _ = docker(&self.docker).args(["rmi", &self.image]).output();
    }
}

/// A directory of manifests: the claim, the policy when `deny_all`, and `jobs`.
fn manifests(jobs: &[Value], with_policy: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pvc-ckms-results.yaml"), claim()).unwrap();
    if with_policy {
        std::fs::write(dir.path().join("networkpolicy-ckms-build-deny-all.yaml"), deny_all()).unwrap();
    }
    for job in jobs {
        let name = job["metadata"]["name"].as_str().unwrap();
        std::fs::write(dir.path().join(format!("job-{name}.yaml")), to_yaml(job)).unwrap();
    }
    dir
}

/// A fresh host directory standing for the claim (traversable by the rootless engine's user).
fn claim_dir() -> (tempfile::TempDir, HashMap<String, PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let claims = HashMap::from([("ckms-results".to_string(), dir.path().to_path_buf())]);
    (dir, claims)
}

fn line<'a>(run: &'a PodRun, key: &str) -> &'a str {
    run.log
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` line in the log of pod {}:\n{}", run.index, run.log))
}

fn prove(engine: &str, cli: &Cli, image: &str) {
    let started = Instant::now();
    let dir = manifests(
        &[
            job("probe", image, 3, 2, 120, build_labels(), PROBE),
            job("sleeper", image, 1, 1, 3, build_labels(), "echo sleeping; exec sleep 300"),
        ],
        true,
    );
    let (results, claims) = claim_dir();
    let runs = run_rendered(dir.path(), cli, &claims);
    let took = started.elapsed();
    let all_logs: String = runs.iter().map(|r| format!("--- {} {} ---\n{}", r.job, r.index, r.log)).collect();
    assert_eq!(runs.len(), 4, "{engine}: one run per pod{all_logs}");

    let probes: Vec<&PodRun> = runs.iter().filter(|r| r.job == "probe").collect();
    let mut spans = Vec::new();
    for (i, r) in probes.iter().enumerate() {
        let ctx = format!("{engine}, probe pod {i}:\n{}", r.log);
        assert_eq!((r.index, r.exit_code, r.timed_out), (i as u32, 0, false), "{ctx}");
        let pod_dir = results.path().join("probe").join(i.to_string());
        let out = std::fs::read_to_string(pod_dir.join("out")).unwrap_or_else(|e| panic!("{ctx}\nno out: {e}"));
        assert_eq!(out, format!("{i}\n"), "{ctx}");
        assert_eq!(line(r, "uid="), "1000 gid=1000 groups=1000", "{ctx}");
        assert_eq!(line(r, "rootfs="), "read-only", "{ctx}");
        assert_eq!(line(r, "vartmp="), "read-only", "{ctx}");
        assert_eq!(line(r, "net="), "lo ", "{ctx}");
        assert_eq!(line(r, "CapEff:").trim(), "0000000000000000", "{ctx}");
        assert_eq!(line(r, "NoNewPrivs:").trim(), "1", "{ctx}");
        assert_eq!(line(r, "tmpsize="), (64 << 20).to_string(), "{ctx}");
        assert_eq!(line(r, "tmp="), "writable", "{ctx}");
        assert_eq!(line(r, "scratch="), "writable", "{ctx}");
        assert_eq!(line(r, "index="), format!("{i} derived=pod-{i} arg=pod-{i} pwd=/scratch"), "{ctx}");
        assert!(r.log.contains("kube_pods: limits.ephemeral-storage 2Gi not enforced"), "{ctx}");
        // Docker (root) always has the controllers; rootless Podman on cgroup v2 only. On v1
        // it has none: said in the log, not passed.
        if matches!(cli, Cli::Docker { .. }) || support::cgroup_v2() {
            assert_eq!(line(r, "memlimit="), (512u64 << 20).to_string(), "{ctx}");
            // One CPU: a quota of one default period.
            assert_eq!(line(r, "cpuquota="), "100000", "{ctx}");
        } else {
            assert!(r.log.contains("kube_pods: limits.memory 536870912 bytes not enforced"), "{ctx}");
            assert!(r.log.contains("kube_pods: limits.cpu 1.000 not enforced"), "{ctx}");
        }
        let times = std::fs::read_to_string(pod_dir.join("times")).unwrap();
        let t: Vec<f64> = times.split_whitespace().map(|x| x.parse().unwrap()).collect();
        spans.push((t[0], t[1]));
    }
    // Two at a time: pods 0 and 1 overlap, pod 2 starts only once one of them has ended.
    let running_at = |t: f64| spans.iter().filter(|(s, e)| *s <= t && t < *e).count();
    let most = spans.iter().map(|(s, _)| running_at(*s)).max().unwrap();
    assert_eq!(most, 2, "{engine}: pods ran {most} at a time, not 2: {spans:?}");

    eprintln!("{engine}, probe pod 0:\n{}", probes[0].log);

    let sleeper = runs.iter().find(|r| r.job == "sleeper").unwrap();
    assert!(sleeper.timed_out, "{engine}: the sleeper outlived its deadline:\n{}", sleeper.log);
    assert_ne!(sleeper.exit_code, 0, "{engine}: the sleeper:\n{}", sleeper.log);
    assert!(sleeper.log.contains("sleeping"), "{engine}: the sleeper:\n{}", sleeper.log);
    eprintln!(
        "{engine}: 3 probe pods (2 at a time) and a sleeper killed at its 3 s deadline in {:.1} s; sleeper exit {}",
        took.as_secs_f64(),
        sleeper.exit_code
    );

    // The same Job without its NetworkPolicy, with labels the policy does not select, with a
    // field the harness does not map: refused before any pod runs.
    let probe = || job("probe", image, 3, 2, 120, build_labels(), PROBE);
    let mut unselected = probe();
    unselected["spec"]["template"]["metadata"]["labels"] = json!({"ckms.io/role": "build"});
    let mut host_network = probe();
    host_network["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    for (case, dir, expected) in [
        ("no policy", manifests(&[probe()], false), "refusing to run pod 0 of Job probe: no NetworkPolicy"),
        ("unselected labels", manifests(&[unselected], true), "refusing to run pod 0 of Job probe: no NetworkPolicy"),
        ("hostNetwork", manifests(&[host_network], true), ".hostNetwork = true is not mapped by kube_pods"),
    ] {
        let (results, claims) = claim_dir();
        let refused = quietly(|| run_rendered(dir.path(), cli, &claims)).expect_err(case);
        assert!(refused.contains(expected), "{engine}, {case}: {refused}");
        assert!(support::entries(results.path()).is_empty(), "{engine}, {case}: a pod ran");
    }
}

/// Runs `f`, returning its panic message (without printing it as a failure would) if it panics.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    outcome.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn rendered_pods_run_as_written_on_podman_and_docker() {
    let podman_url = engine_host("CKMS_TEST_PODMAN_HOST");
    let docker_host = engine_host("CKMS_TEST_DOCKER_HOST");
    let cache = shared_cache();
    let built = ckms([
        "--json",
        "--engine",
        &podman_url,
        "--cache-dir",
        cache.to_str().unwrap(),
        "image",
        "build",
        "-k",
        KERNEL,
    ])
    .run();
    built.expect_code(0);
    let reference =
        built.json_result()[0]["reference"].as_str().unwrap_or_else(|| panic!("no reference{built}")).to_string();

    let registry = registry::LocalRegistry::start();
    let tag = format!("{}/ckms/build:kube-pods", registry.host);
    run(podman(&podman_url).args(["push", "--tls-verify=false", &reference, &format!("docker://{tag}")]));
    let headers = run(Command::new("curl").args([
        "-fsSI",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{}/v2/ckms/build/manifests/kube-pods", registry.host),
    ]));
    let digest = headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("docker-content-digest:").map(|d| d.trim().to_string()))
        .unwrap_or_else(|| panic!("the registry named no digest:\n{headers}"));
    let pulled = Pulled {
        image: format!("{}/ckms/build@{digest}", registry.host),
        podman: podman_url.clone(),
        docker: docker_host.clone(),
    };

    prove("podman", &Cli::Podman { url: podman_url.clone() }, &pulled.image);
    prove("docker", &Cli::Docker { host: docker_host.clone() }, &pulled.image);
}

#[test]
fn dollar_references_expand_as_kubernetes_does() {
    let env = [("A".to_string(), "1".to_string()), ("B".to_string(), "x/$(A)".to_string())];
    assert_eq!(expand("$(A)/$(B)", &env), "1/x/$(A)");
    assert_eq!(expand("$(MISSING) $$(A) $$ $A $(", &env), "$(MISSING) $(A) $ $A $(");
    assert_eq!(expand("é$(A)ü", &env), "é1ü");
}
