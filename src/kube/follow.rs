//! The Kubernetes objects `farm kube follow-render` writes: `farm follow` as a Deployment of
//! one pod that builds through Jobs. The pod itself builds nothing (a restricted pod cannot
//! run a container engine): each cycle renders the pairs the store lacks as Indexed Jobs (as
//! `farm kube render`), creates them through the API server with its service account, waits
//! for them, collects their results from the results claim, signs and publishes. Kubernetes
//! schedules the build pods; ckms only creates Jobs.
//!
//! One replica with the Recreate strategy: the store is a single writer's, and a rolling
//! update would start the new pod while the old one still writes to it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifest::{self, MANAGED_BY};
use super::KubeError;

/// The name of every follow object (the Deployment, its account, role, claim, ...).
pub const NAME: &str = "ckms-follow";
/// The label of the follow pod (the build pods have `build`; the deny-all policy selects those).
pub const ROLE: (&str, &str) = ("ckms.io/role", "follow");
/// Where the pod sees the store claim: the store, ckms's cache and the outputs go there.
pub const DATA: &str = "/var/lib/ckms";
/// Where the pod sees its configuration (the ConfigMap).
pub const CONFIG_DIR: &str = "/etc/ckms/follow";
pub const CONFIG_FILE: &str = "follow.toml";
/// What the Role allows on Jobs: what a cycle does with the Jobs it creates, nothing more.
pub const JOB_VERBS: &[&str] = &["create", "get", "list", "watch", "delete"];

/// The follow service in a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowDeployment {
    pub namespace: String,
    /// A digest-pinned reference to an image holding ckms (see `render::ckms_command`).
    pub image: String,
    pub command: Vec<String>,
    /// The follow configuration, as the ConfigMap's `follow.toml`.
    pub config: String,
    pub uid: i64,
    pub gid: i64,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// The size of the store claim (store, cache, outputs).
    pub store_bytes: i64,
    /// The claim the build pods write to, which the follow pod reads (collect).
    pub results_claim: String,
    /// Where the follow pod sees it.
    pub results_mount: String,
    /// Secrets mounted read-only: (Secret name, directory).
    pub secrets: Vec<(String, String)>,
    pub metrics_port: i32,
}

fn meta(f: &FollowDeployment, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(f.namespace.clone()),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// The follow pod's labels; the Deployment and the Service select them.
fn labels() -> BTreeMap<String, String> {
    [MANAGED_BY, ROLE, ("app.kubernetes.io/name", NAME)].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn quantity(n: i64) -> Quantity {
    Quantity(n.to_string())
}

/// The namespace, labelled so that PodSecurity admission enforces "restricted" on every pod
/// in it, the Jobs' pods included: the follow account may create Jobs, hence pods, and
/// admission refuses one that is not locked down whoever wrote it.
pub fn namespace(f: &FollowDeployment) -> Namespace {
    let mut labels: BTreeMap<String, String> = [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
    }
    Namespace {
        metadata: ObjectMeta { name: Some(f.namespace.clone()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    }
}

pub fn service_account(f: &FollowDeployment) -> ServiceAccount {
    ServiceAccount { metadata: meta(f, NAME), ..Default::default() }
}

/// Jobs in this namespace: created, watched and deleted by the follow pod. Nothing else: no
/// pods (the Job controller makes them), no Secrets, no claims (rendered once, here).
pub fn role(f: &FollowDeployment) -> Role {
    Role {
        metadata: meta(f, NAME),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["batch".into()]),
            resources: Some(vec!["jobs".into()]),
            verbs: JOB_VERBS.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }]),
    }
}

pub fn role_binding(f: &FollowDeployment) -> RoleBinding {
    RoleBinding {
        metadata: meta(f, NAME),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: NAME.into() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(f.namespace.clone()),
            api_group: None,
        }]),
    }
}

/// The store, ckms's cache and the outputs: one writer's, hence ReadWriteOnce.
pub fn store_claim(f: &FollowDeployment) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(f, NAME),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), quantity(f.store_bytes))].into()),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn config_map(f: &FollowDeployment) -> ConfigMap {
    ConfigMap {
        metadata: meta(f, NAME),
        data: Some([(CONFIG_FILE.to_string(), f.config.clone())].into()),
        ..Default::default()
    }
}

/// Only the metrics port is reachable; the pod's own traffic out (mirrors, registry, API
/// server) is not limited here.
pub fn network_policy(f: &FollowDeployment) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(f, NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(labels()), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

pub fn service(f: &FollowDeployment) -> Service {
    Service {
        metadata: meta(f, NAME),
        spec: Some(ServiceSpec {
            selector: Some(labels()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: f.metrics_port,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/metrics".into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

/// The follow pod's spec (the Deployment's template).
pub fn pod(f: &FollowDeployment) -> PodSpec {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", Quantity(format!("{}m", f.cpu_millis))),
        ("memory", quantity(f.memory_bytes)),
        ("ephemeral-storage", quantity(1 << 30)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: NAME.into(), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: NAME.into(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "results".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: f.results_claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: None, size_limit: Some(quantity(1 << 30)) }),
            ..Default::default()
        },
    ];
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("data", DATA, false),
        mount("results", &f.results_mount, false),
        mount("tmp", "/tmp", false),
    ];
    for (i, (secret, dir)) in f.secrets.iter().enumerate() {
        let name = format!("secret-{i}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // Readable by the pod's group (fsGroup) only: keys are not world-readable.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&name, dir, true));
    }
    let container = Container {
        name: "follow".into(),
        image: Some(f.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(f.command.clone()),
        env: Some(vec![EnvVar { name: "HOME".into(), value: Some("/tmp".into()), value_from: None }]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: f.metrics_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The metrics are served from the start, before the first cycle, which may take hours.
        readiness_probe: Some(probe(10, 3)),
        liveness_probe: Some(probe(30, 5)),
        resources: Some(manifest::guaranteed(resources)),
        security_context: Some(manifest::locked_down()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        working_dir: Some("/tmp".into()),
        ..Default::default()
    };
    PodSpec {
        service_account_name: Some(NAME.into()),
        // The pod talks to the API server (Jobs): it needs its account's token.
        automount_service_account_token: Some(true),
        enable_service_links: Some(false),
        // A cycle stopped in the middle is taken up by the next pod: give it time to save.
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(f.uid),
            run_as_group: Some(f.gid),
            fs_group: Some(f.gid),
            seccomp_profile: manifest::runtime_default(),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// One replica, replaced by Recreate: never two followers on one store.
pub fn deployment(f: &FollowDeployment) -> Deployment {
    Deployment {
        metadata: meta(f, NAME),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            selector: LabelSelector { match_labels: Some(labels()), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels()), ..Default::default() }),
                spec: Some(pod(f)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Every object, by the file name `kubectl apply -f DIR` reads it under (in this order: the
/// namespace first, the Deployment once what it uses exists).
pub fn objects(f: &FollowDeployment, results_bytes: i64) -> Result<Vec<(String, serde_json::Value)>, KubeError> {
    let mut claim = manifest::results_claim(&f.results_claim, results_bytes);
    claim.metadata.namespace = Some(f.namespace.clone());
    let mut deny = manifest::network_policy();
    deny.metadata.namespace = Some(f.namespace.clone());
    Ok(vec![
        ("00-namespace.yaml".into(), manifest::value(&namespace(f))?),
        ("01-results-claim.yaml".into(), manifest::value(&claim)?),
        ("02-build-network-policy.yaml".into(), manifest::value(&deny)?),
        ("10-follow-service-account.yaml".into(), manifest::value(&service_account(f))?),
        ("11-follow-role.yaml".into(), manifest::value(&role(f))?),
        ("12-follow-role-binding.yaml".into(), manifest::value(&role_binding(f))?),
        ("13-follow-store-claim.yaml".into(), manifest::value(&store_claim(f))?),
        ("14-follow-config.yaml".into(), manifest::value(&config_map(f))?),
        ("15-follow-network-policy.yaml".into(), manifest::value(&network_policy(f))?),
        ("16-follow-deployment.yaml".into(), manifest::value(&deployment(f))?),
        ("17-follow-service.yaml".into(), manifest::value(&service(f))?),
    ])
}

/// A follow service as the tests of this module and the manifests' tests use it.
#[cfg(test)]
pub(crate) fn sample() -> FollowDeployment {
    FollowDeployment {
        namespace: "ckms-farm".into(),
        image: format!("127.0.0.1:5000/ckms/follow@sha256:{}", "0".repeat(64)),
        command: vec!["/usr/lib/ckms/bin/ckms".into(), "farm".into(), "follow".into()],
        config: "store = '/var/lib/ckms/store'\n[build]\n".into(),
        uid: 1000,
        gid: 1000,
        cpu_millis: 1000,
        memory_bytes: 2 << 30,
        store_bytes: 50 << 30,
        results_claim: "ckms-results".into(),
        results_mount: "/results".into(),
        secrets: vec![("ckms-signing".into(), "/etc/ckms/keys".into())],
        metrics_port: 9464,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kube::podsecurity::restricted;

    #[test]
    fn one_follower_replaced_by_recreate() {
        let v = manifest::value(&deployment(&sample())).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(v["spec"]["selector"]["matchLabels"], v["spec"]["template"]["metadata"]["labels"]);
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["ckms.io/role"], "follow");
    }

    #[test]
    fn the_follow_pod_is_restricted_and_reads_its_keys_only() {
        let p = pod(&sample());
        assert_eq!(restricted(&p), Vec::<String>::new());
        let v = manifest::value(&p).unwrap();
        let c = &v["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["resources"]["limits"], c["resources"]["requests"]);
        assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/metrics", "port": "metrics"}));
        let keys = v["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "secret-0").unwrap().clone();
        assert_eq!(keys["secret"], json!({"secretName": "ckms-signing", "defaultMode": 0o440}));
        let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "secret-0").unwrap().clone();
        assert_eq!(mount, json!({"name": "secret-0", "mountPath": "/etc/ckms/keys", "readOnly": true}));
        assert_eq!(v["serviceAccountName"], NAME);
    }

    #[test]
    fn the_role_allows_jobs_and_nothing_else() {
        let v = manifest::value(&role(&sample())).unwrap();
        assert_eq!(
            v["rules"],
            json!([{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]}])
        );
        let b = manifest::value(&role_binding(&sample())).unwrap();
        assert_eq!(b["subjects"], json!([{"kind": "ServiceAccount", "name": NAME, "namespace": "ckms-farm"}]));
    }

    #[test]
    fn every_object_is_in_the_namespace_and_the_build_pods_stay_denied() {
        let objects = objects(&sample(), 10 << 30).unwrap();
        for (file, v) in &objects[1..] {
            assert_eq!(v["metadata"]["namespace"], "ckms-farm", "{file}");
        }
        let ns = &objects[0].1;
        assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
        // The follow pod is not a build pod: the deny-all policy does not cut it off.
        let deny = &objects[2].1["spec"]["podSelector"]["matchLabels"];
        assert_eq!(deny["ckms.io/role"], "build");
    }
}
