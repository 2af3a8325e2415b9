//! The manifests `ckms farm kube render` writes (a build Job, the deny-all NetworkPolicy, the
//! results claim), made by the library and written as YAML, are valid Kubernetes objects:
//! kubernetes-validate in strict mode accepts them for Kubernetes 1.35 and the newest version
//! it ships, and refuses an object with an unknown field (so it really validates).

use std::path::PathBuf;

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
