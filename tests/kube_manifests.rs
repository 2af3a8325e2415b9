//! The manifests `ckms farm kube render` writes (a build Job, the deny-all NetworkPolicy, the
//! results claim), made by the library and written as YAML, are valid Kubernetes objects:
//! kubernetes-validate in strict mode accepts them for Kubernetes 1.35 and the newest version
//! it ships, and refuses an object with an unknown field (so it really validates). So are
//! those of `farm kube follow-render` (the follow Deployment, its account, Role, claims,
//! ConfigMap, Service), whose pod passes PodSecurity "restricted" too.

use std::path::PathBuf;

use ckms::kube::follow::{self, FollowDeployment};
use ckms::kube::manifest::{job, network_policy, results_claim, value, write, BuildJob};
use ckms::kube::podsecurity::{ckms_rules, restricted};
use serde_json::json;

#[path = "support/kube_validate.rs"]
mod kube_validate;

fn sample() -> BuildJob {
    BuildJob {
        name: "ckms-6-1-0-56-amd64".into(),
        labels: [("ckms.io/kernel".to_string(), "6.1.0-56-amd64".to_string())].into(),
        image: format!("127.0.0.1:5000/ckms/build@sha256:{}", "ab".repeat(32)),
        node_arch: "amd64".into(),
        command: vec!["/ckms-build".into(), "--index".into(), "$(JOB_COMPLETION_INDEX)".into()],
        env: vec![("KERNEL".into(), "6.1.0-56-amd64".into()), ("MAKEFLAGS".into(), "-j2".into())],
        completions: 4,
        parallelism: 2,
        backoff_limit_per_index: 1,
        deadline_seconds: 5400,
        uid: 65532,
        gid: 65532,
        cpu_millis: 1500,
        memory_bytes: 3 << 30,
        storage_bytes: 8 << 30,
        tmp_bytes: 512 << 20,
        scratch: vec!["/var/lib/dkms".into(), "/usr/src".into(), "/home/build".into()],
        results_mount: "/results".into(),
    }
}

fn written(dir: &std::path::Path) -> Vec<PathBuf> {
    let j = job(&sample(), "ckms-results");
    let objects = vec![
        ("job-6-1-0-56-amd64.yaml".to_string(), value(&j).unwrap()),
        ("network-policy.yaml".to_string(), value(&network_policy()).unwrap()),
        ("results-claim.yaml".to_string(), value(&results_claim("ckms-results", 20 << 30)).unwrap()),
    ];
    write(dir, &objects).unwrap()
}

#[test]
fn rendered_manifests_are_valid_kubernetes_objects() {
    let dir = tempfile::tempdir().unwrap();
    let files = written(dir.path());
    assert_eq!(files.len(), 3);
    kube_validate::validate(&files);
}

#[test]
fn the_build_pod_passes_podsecurity_restricted_and_ckms_rules() {
    let pod = job(&sample(), "ckms-results").spec.and_then(|s| s.template.spec).unwrap();
    assert_eq!(restricted(&pod), Vec::<String>::new());
    assert_eq!(ckms_rules(&pod), Vec::<String>::new());
}

#[test]
fn the_validator_refuses_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut claim = value(&results_claim("ckms-results", 1 << 30)).unwrap();
    claim["spec"]["storageClassNmae"] = json!("fast");
    let files = write(dir.path(), &[("broken.yaml".to_string(), claim)]).unwrap();
    for version in kube_validate::versions() {
        let err = kube_validate::check(&files, &version).expect_err("an unknown field must be refused");
        assert!(err.contains("storageClassNmae"), "{err}");
    }
}

#[test]
fn the_validator_refuses_a_wrong_type_in_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = value(&job(&sample(), "ckms-results")).unwrap();
    j["spec"]["completions"] = json!("four");
    let files = write(dir.path(), &[("broken-job.yaml".to_string(), j)]).unwrap();
    let err =
        kube_validate::check(&files, kube_validate::KUBERNETES).expect_err("a string completions must be refused");
    assert!(err.contains("four"), "{err}");
}

fn follow_sample() -> FollowDeployment {
    FollowDeployment {
        namespace: "ckms-farm".into(),
        image: format!("127.0.0.1:5000/ckms/follow@sha256:{}", "cd".repeat(32)),
        command: ckms::kube::render::ckms_command(
            "/var/lib/ckms/cache",
            &["farm", "follow", "--config", "/etc/ckms/follow/follow.toml", "--metrics", "0.0.0.0:9464"],
        ),
        config: "store = \"/var/lib/ckms/store\"\n[build]\nkernel = [\"@debian-bookworm:latest\"]\n".into(),
        uid: 1000,
        gid: 1000,
        cpu_millis: 1000,
        memory_bytes: 2 << 30,
        store_bytes: 50 << 30,
        results_claim: "ckms-results".into(),
        results_mount: "/results".into(),
        secrets: vec![
            ("ckms-signing".into(), "/etc/ckms/keys".into()),
            ("ckms-registry".into(), "/etc/ckms/registry".into()),
        ],
        metrics_port: 9464,
    }
}

#[test]
fn follow_render_writes_valid_kubernetes_objects() {
    let dir = tempfile::tempdir().unwrap();
    let objects = follow::objects(&follow_sample(), 10 << 30).unwrap();
    let files = write(dir.path(), &objects).unwrap();
    assert_eq!(files.len(), 11);
    let kinds: Vec<String> = objects.iter().map(|(_, v)| v["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "PersistentVolumeClaim",
            "ConfigMap",
            "NetworkPolicy",
            "Deployment",
            "Service"
        ]
    );
    kube_validate::validate(&files);
}

#[test]
fn the_follow_pod_passes_podsecurity_restricted() {
    let pod = follow::pod(&follow_sample());
    assert_eq!(restricted(&pod), Vec::<String>::new());
    // ckms's build rules but one: the follow pod needs its token (it creates Jobs), and runs
    // without a deadline (it is a service).
    assert_eq!(
        ckms_rules(&pod),
        ["pod: spec.automountServiceAccountToken must be false", "pod: spec.activeDeadlineSeconds must be set"]
    );
}

fn follow_render(dir: &std::path::Path, config: &str) -> std::process::Output {
    let cfg = dir.join("follow.toml");
    std::fs::write(&cfg, config).unwrap();
    let image = format!("127.0.0.1:5000/ckms/follow@sha256:{}", "ef".repeat(32));
    std::process::Command::new(env!("CARGO_BIN_EXE_ckms"))
        .args(["--cache-dir", dir.join("cache").to_str().unwrap(), "farm", "kube", "follow-render", "--config"])
        .arg(&cfg)
        .args(["--image", &image, "--uid", "1000", "--secret", "ckms-signing=/etc/ckms/keys", "-o"])
        .arg(dir.join("out"))
        .output()
        .unwrap()
}

#[test]
fn follow_render_with_an_image_writes_what_it_validates_and_refuses_paths_the_pod_has_not() {
    let dir = tempfile::tempdir().unwrap();
    let good = "store = \"/var/lib/ckms/store\"\n[build]\nkernel = [\"6.1.0-56-amd64\"]\nsources = [\"deb:v4l2loopback-dkms\"]\n\
                key = \"/etc/ckms/keys/mok.key\"\ncert = \"/etc/ckms/keys/mok.crt\"\n\
                [kube]\nregistry = \"registry.example:5000/ckms/build\"\n\
                [[publish]]\nformat = \"cache\"\nout = \"/var/lib/ckms/www/cache\"\nkey = \"/etc/ckms/keys/farm.asc\"\n";
    let out = follow_render(dir.path(), good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 11);
    kube_validate::validate(&files);
    let config = std::fs::read_to_string(dir.path().join("out/14-follow-config.yaml")).unwrap();
    assert!(config.contains("[kube]"), "the configuration as given: {config}");
    let deployment = std::fs::read_to_string(dir.path().join("out/16-follow-deployment.yaml")).unwrap();
    assert!(deployment.contains("\"0.0.0.0:9464\""), "{deployment}");

    let cases = [
        (good.replace("/var/lib/ckms/store", "/srv/store"), "store = \"/srv/store\""),
        (good.replace("/etc/ckms/keys/mok.key", "/root/mok.key"), "[build] key = \"/root/mok.key\""),
        (good.replace("[kube]\nregistry = \"registry.example:5000/ckms/build\"\n", ""), "no [kube] table"),
        (good.replace("[build]\n", "[build]\nverify = true\n"), "verify = true"),
    ];
    for (config, said) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = follow_render(dir.path(), &config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}\n{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        assert!(!dir.path().join("out").exists(), "nothing written: {config}");
    }
}
