//! The Kubernetes objects `farm kube render` writes, typed with k8s-openapi so that a field
//! name cannot be misspelt: per kernel an Indexed [`job`] whose pod `i` builds pair `i`, the
//! [`network_policy`] that cuts every build pod off the network, and the [`results_claim`]
//! the pods write their results to. [`write`] renders them as YAML files for `kubectl apply -f`.
//!
//! Every build pod passes PodSecurity "restricted" and ckms's own stricter rules
//! ([`super::podsecurity`]): a build runs code from a module's source, so it gets no network,
//! no root, no capabilities, a read-only root file system and bounded time, memory and disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::KubeError;
use crate::k8s::to_yaml;

/// One kernel's Indexed Job: each index builds one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildJob {
    /// RFC 1123 label, at most 63 characters (the caller makes it, e.g. with `k8s::name`).
    pub name: String,
    /// On the Job and its pod template, besides [`MANAGED_BY`] and [`ROLE`].
    pub labels: BTreeMap<String, String>,
    /// A digest-pinned reference, e.g. `127.0.0.1:5000/ckms/build@sha256:...`.
    pub image: String,
    /// The image's architecture (OCI's name): its pods go to nodes of it. A cross build's
    /// image is the build machine's, so any such node builds for any kernel architecture.
    pub node_arch: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub completions: i32,
    pub parallelism: i32,
    pub backoff_limit_per_index: i32,
    /// The pod's activeDeadlineSeconds.
    pub deadline_seconds: i64,
    pub uid: i64,
    pub gid: i64,
    /// CPU request and limit.
    pub cpu_millis: i64,
    /// Memory request and limit.
    pub memory_bytes: i64,
    /// Ephemeral-storage request and limit; also the sizeLimit of each scratch emptyDir.
    pub storage_bytes: i64,
    /// sizeLimit of /tmp, an emptyDir in memory (what it holds counts against `memory_bytes`).
    pub tmp_bytes: i64,
    /// Writable emptyDir mount paths, e.g. `["/var/lib/dkms", "/usr/src"]`.
    pub scratch: Vec<String>,
    /// Where the pod sees its own result directory, e.g. `/results`.
    pub results_mount: String,
}

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ckms");
/// The label every build pod has; the NetworkPolicy selects it.
pub const ROLE: (&str, &str) = ("ckms.io/role", "build");
pub const NETWORK_POLICY: &str = "ckms-build-deny-all";
/// The pod's completion index, set by the Job controller as an annotation.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
const INDEX_FIELD: &str = "metadata.annotations['batch.kubernetes.io/job-completion-index']";

fn common_labels(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    for (k, v) in [MANAGED_BY, ROLE] {
        labels.insert(k.into(), v.into());
    }
    labels
}

fn quantity(n: i64) -> Quantity {
    Quantity(n.to_string())
}

pub(crate) fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() })
}

/// A container's security context for PodSecurity "restricted", and a read-only root.
pub(crate) fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        run_as_non_root: Some(true),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// Requests equal to limits: the Guaranteed QoS class, never evicted for another's use.
pub(crate) fn guaranteed(resources: BTreeMap<String, Quantity>) -> ResourceRequirements {
    ResourceRequirements { requests: Some(resources.clone()), limits: Some(resources), claims: None }
}

/// The Indexed Job building `j`'s pairs, its results going to the claim named `claim`.
pub fn job(j: &BuildJob, claim: &str) -> Job {
    let labels = common_labels(&j.labels);
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", Quantity(format!("{}m", j.cpu_millis))),
        ("memory", quantity(j.memory_bytes)),
        ("ephemeral-storage", quantity(j.storage_bytes)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, path) in j.scratch.iter().enumerate() {
        let name = format!("scratch-{i}");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity(j.storage_bytes)), medium: None }),
            ..Default::default()
        });
        mounts.push(VolumeMount { name, mount_path: path.clone(), ..Default::default() });
    }
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(quantity(j.tmp_bytes)),
        }),
        ..Default::default()
    });
    mounts.push(VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() });
    volumes.push(Volume {
        name: "results".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
        ..Default::default()
    });
    // Each pod sees only its own directory of the shared claim, so a hostile build cannot
    // touch another pair's results.
    mounts.push(VolumeMount {
        name: "results".into(),
        mount_path: j.results_mount.clone(),
        sub_path_expr: Some(format!("{}/$({INDEX_ENV})", j.name)),
        ..Default::default()
    });

    // The index is set explicitly (the Job controller sets it too) because subPathExpr may
    // only expand variables the container declares; a caller's own value would shadow it.
    let mut env: Vec<EnvVar> = j
        .env
        .iter()
        .filter(|(k, _)| k != INDEX_ENV)
        .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), value_from: None })
        .collect();
    env.push(EnvVar {
        name: INDEX_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: INDEX_FIELD.into(), api_version: None }),
            ..Default::default()
        }),
    });

    let container = Container {
        name: "build".into(),
        image: Some(j.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(j.command.clone()),
        env: Some(env),
        working_dir: Some("/".into()),
        resources: Some(guaranteed(resources)),
        security_context: Some(locked_down()),
        // A failed build's last log lines show in `kubectl describe` without its logs.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        active_deadline_seconds: Some(j.deadline_seconds),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(j.uid),
            run_as_group: Some(j.gid),
            fs_group: Some(j.gid),
            seccomp_profile: runtime_default(),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: Some(BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), j.node_arch.clone()),
        ])),
        ..Default::default()
    };

    Job {
        metadata: ObjectMeta { name: Some(j.name.clone()), labels: Some(labels.clone()), ..Default::default() },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(j.completions),
            parallelism: Some(j.parallelism),
            backoff_limit_per_index: Some(j.backoff_limit_per_index),
            // A failed pair must not stop the others: the Job fails only once all are done.
            max_failed_indexes: Some(j.completions),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Denies all ingress and egress to every build pod: no rules in either direction.
pub fn network_policy() -> NetworkPolicy {
    let selected: BTreeMap<String, String> =
        [ROLE, MANAGED_BY].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(NETWORK_POLICY.into()),
            labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selected), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// The claim all build pods of a render write their results to (each to its own subPath),
/// hence ReadWriteMany.
pub fn results_claim(name: &str, bytes: i64) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), quantity(bytes))].into()),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// A typed object as the JSON value [`write`] takes (k8s-openapi adds apiVersion and kind).
pub fn value<T: serde::Serialize>(object: &T) -> Result<serde_json::Value, KubeError> {
    Ok(serde_json::to_value(object)?)
}

/// Writes each object as one YAML file into `dir` (created if missing) under its given file
/// name; the paths written, in order.
pub fn write(dir: &Path, objects: &[(String, serde_json::Value)]) -> Result<Vec<PathBuf>, KubeError> {
    std::fs::create_dir_all(dir).map_err(|source| KubeError::Io { path: dir.to_path_buf(), source })?;
    let mut paths = Vec::new();
    for (file, object) in objects {
        // A name with a directory in it could write outside `dir`.
        let plain = Path::new(file).file_name().is_some_and(|n| n == file.as_str());
        if !plain || file.starts_with('.') {
            return Err(KubeError::BadFileName(file.clone()));
        }
        let path = dir.join(file);
        std::fs::write(&path, to_yaml(object)).map_err(|source| KubeError::Io { path: path.clone(), source })?;
        paths.push(path);
    }
    Ok(paths)
}

/// A job as the tests of this module and of [`super::podsecurity`] use it.
#[cfg(test)]
pub(crate) fn sample() -> BuildJob {
    BuildJob {
        name: "ckms-6-1-0-56-amd64".into(),
        labels: [("ckms.io/kernel".to_string(), "6.1.0-56-amd64".to_string())].into(),
        image: format!("127.0.0.1:5000/ckms/build@sha256:{}", "0".repeat(64)),
        node_arch: "amd64".into(),
        command: vec!["/ckms-build".into(), "--pairs".into(), "/etc/ckms/pairs.json".into()],
        env: vec![("KERNEL".into(), "6.1.0-56-amd64".into())],
        completions: 3,
        parallelism: 2,
        backoff_limit_per_index: 1,
        deadline_seconds: 3600,
        uid: 65532,
        gid: 65532,
        cpu_millis: 500,
        memory_bytes: 2 << 30,
        storage_bytes: 4 << 30,
        tmp_bytes: 256 << 20,
        scratch: vec!["/var/lib/dkms".into(), "/usr/src".into()],
        results_mount: "/results".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn job_is_an_indexed_batch_v1_job() {
        let v = value(&job(&sample(), "ckms-results")).unwrap();
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        let spec = &v["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["completions"], 3);
        assert_eq!(spec["parallelism"], 2);
        assert_eq!(spec["backoffLimitPerIndex"], 1);
        assert_eq!(spec["maxFailedIndexes"], 3);
        for meta in [&v["metadata"], &spec["template"]["metadata"]] {
            assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "ckms");
            assert_eq!(meta["labels"]["ckms.io/role"], "build");
            assert_eq!(meta["labels"]["ckms.io/kernel"], "6.1.0-56-amd64");
        }
    }

    #[test]
    fn pod_is_locked_down_and_bounded() {
        let v = value(&job(&sample(), "ckms-results")).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["enableServiceLinks"], false);
        assert_eq!(pod["activeDeadlineSeconds"], 3600);
        // The image's architecture picks the nodes, whatever the kernel's (a cross build).
        assert_eq!(pod["nodeSelector"], json!({ "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux" }));
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        let c = &pod["containers"][0];
        assert_eq!(c["name"], "build");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        let limits = json!({"cpu": "500m", "memory": "2147483648", "ephemeral-storage": "4294967296"});
        assert_eq!(c["resources"]["limits"], limits);
        assert_eq!(c["resources"]["requests"], limits);
    }

    #[test]
    fn each_pod_mounts_its_own_result_directory() {
        let v = value(&job(&sample(), "ckms-results")).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let env = c["env"].as_array().unwrap();
        assert_eq!(env[0], json!({"name": "KERNEL", "value": "6.1.0-56-amd64"}));
        assert_eq!(env[1]["valueFrom"]["fieldRef"]["fieldPath"], INDEX_FIELD);
        let mounts = c["volumeMounts"].as_array().unwrap();
        let results = mounts.iter().find(|m| m["name"] == "results").unwrap();
        assert_eq!(results["subPathExpr"], "ckms-6-1-0-56-amd64/$(JOB_COMPLETION_INDEX)");
        assert_eq!(results["mountPath"], "/results");
        let volumes = pod["volumes"].as_array().unwrap();
        assert_eq!(volumes[0], json!({"name": "scratch-0", "emptyDir": {"sizeLimit": "4294967296"}}));
        assert_eq!(mounts[1], json!({"name": "scratch-1", "mountPath": "/usr/src"}));
        assert_eq!(volumes[2], json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "268435456"}}));
        assert_eq!(volumes[3]["persistentVolumeClaim"]["claimName"], "ckms-results");
    }

    #[test]
    fn a_callers_index_variable_cannot_shadow_the_real_one() {
        let mut j = sample();
        j.env.push((INDEX_ENV.into(), "0".into()));
        let v = value(&job(&j, "c")).unwrap();
        let env = v["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        let index: Vec<_> = env.iter().filter(|e| e["name"] == INDEX_ENV).collect();
        assert_eq!(index.len(), 1);
        assert!(index[0].get("value").is_none());
    }

    #[test]
    fn network_policy_denies_everything_to_build_pods() {
        let v = value(&network_policy()).unwrap();
        assert_eq!(v["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(v["kind"], "NetworkPolicy");
        assert_eq!(v["metadata"]["name"], NETWORK_POLICY);
        assert_eq!(
            v["spec"],
            json!({"podSelector": {"matchLabels": {"ckms.io/role": "build", "app.kubernetes.io/managed-by": "ckms"}},
                   "policyTypes": ["Ingress", "Egress"]})
        );
    }

    #[test]
    fn results_claim_is_shared_by_all_pods() {
        let v = value(&results_claim("ckms-results", 10 << 30)).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "PersistentVolumeClaim");
        assert_eq!(
            v["spec"],
            json!({"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10737418240"}}})
        );
    }

    #[test]
    fn write_makes_one_yaml_file_per_object() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("manifests");
        let objects = vec![
            ("network-policy.yaml".to_string(), value(&network_policy()).unwrap()),
            ("claim.yaml".to_string(), value(&results_claim("r", 1)).unwrap()),
        ];
        let paths = write(&out, &objects).unwrap();
        assert_eq!(paths, vec![out.join("network-policy.yaml"), out.join("claim.yaml")]);
        let text = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(text.contains("kind: \"NetworkPolicy\"\n"), "{text}");
        assert!(text.contains("\"ckms.io/role\": \"build\""), "{text}");
    }

    #[test]
    fn write_refuses_names_that_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x.yaml", "a/b.yaml", "", ".."] {
            let err = write(dir.path(), &[(bad.to_string(), json!({}))]).unwrap_err();
            assert!(matches!(err, KubeError::BadFileName(_)), "{bad}: {err}");
        }
    }
}
