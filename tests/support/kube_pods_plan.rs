//! Reading rendered manifests and planning their pods for tests/support/kube_pods.rs: every
//! field either mapped to an engine flag or refused.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
// ---------------------------------------------------------------------------------------
// Reading the manifests

/// One Kubernetes object of the directory.
pub struct Obj {
    pub file: PathBuf,
    pub kind: String,
    pub name: String,
    /// "" when the object names none (then all share the default namespace).
    pub namespace: String,
    pub value: Value,
}

pub fn load(dir: &Path) -> Vec<Obj> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
            if value.is_null() {
                continue; // an empty document (e.g. a trailing `---`)
            }
            let what = file.display().to_string();
            let kind = str_at(&value, "kind", &what);
            let meta = value.get("metadata").unwrap_or_else(|| panic!("{what}: no metadata"));
            let name = str_at(meta, "name", &what);
            let namespace = meta.get("namespace").map(|n| str_of(n, &what)).unwrap_or_default();
            let api = str_at(&value, "apiVersion", &what);
            let expected = match kind.as_str() {
                "Job" => "batch/v1",
                "NetworkPolicy" => "networking.k8s.io/v1",
                "PersistentVolumeClaim" | "Namespace" => "v1",
                // A LimitRange, a quota, a ConfigMap... would change what the pods see.
                other => panic!("{what}: kube_pods does not map a {other}"),
            };
            assert_eq!(api, expected, "{what}: a {kind} of apiVersion {api}");
            objects.push(Obj { file: file.clone(), kind, name, namespace, value });
        }
    }
    objects
}

/// The keys of mapping `v`, panicking on any key outside `known`.
pub fn keys<'a>(v: &'a Value, what: &str, known: &[&str]) -> &'a Map<String, Value> {
    let m = v.as_object().unwrap_or_else(|| panic!("{what} is not a mapping: {v}"));
    for (k, val) in m {
        assert!(
            known.contains(&k.as_str()),
            "{what}.{k} = {val} is not mapped by kube_pods: it cannot run this pod faithfully"
        );
    }
    m
}

pub fn str_of(v: &Value, what: &str) -> String {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}")).to_string()
}

pub fn str_at(v: &Value, key: &str, what: &str) -> String {
    str_of(v.get(key).unwrap_or_else(|| panic!("{what}: no {key}")), &format!("{what}.{key}"))
}

pub fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{what} is not a non-negative integer: {v}"))
}

pub fn bool_of(v: &Value, what: &str) -> bool {
    v.as_bool().unwrap_or_else(|| panic!("{what} is not a boolean: {v}"))
}

pub fn list_of<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

/// A resource quantity ("512Mi", "1G", "500m", "2") in its base unit.
pub fn quantity(v: &Value, what: &str) -> f64 {
    let s = match v {
        Value::Number(n) => n.to_string(),
        other => str_of(other, what),
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().unwrap_or_else(|_| panic!("{what}: cannot read the quantity {s:?}"));
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => panic!("{what}: kube_pods does not read the quantity suffix of {s:?}"),
    };
    num * factor
}

// ---------------------------------------------------------------------------------------
// Planning: from a Job to the engine flags of its pods

pub struct Job {
    pub name: String,
    pub completions: u32,
    pub parallelism: u32,
    /// backoffLimitPerIndex: how many times a failed index runs again.
    pub retries: u32,
    pub pod: Pod,
}

/// The pod template, mapped; `{index}`-dependent parts are filled in per pod.
pub struct Pod {
    pub image: String,
    /// --user uid[:gid]
    pub user: String,
    pub groups: Vec<u64>,
    pub read_only: bool,
    pub cap_drop_all: bool,
    pub no_new_privileges: bool,
    pub memory: Option<u64>,
    /// limits.cpu in cores, as --cpus takes it.
    pub cpus: Option<String>,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    /// In order; values may hold `$(VAR)` references, expanded per pod.
    pub env: Vec<EnvVar>,
    pub workdir: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub deadline: Option<Duration>,
    /// terminationGracePeriodSeconds: SIGTERM, then SIGKILL this long after.
    pub grace: u64,
    /// What no engine flag enforces, said in each PodRun's log.
    pub notes: Vec<String>,
}

pub enum EnvVar {
    Value(String, String),
    /// fieldRef of the completion index (annotation or label).
    Index(String),
}

pub struct MountSpec {
    pub path: String,
    pub read_only: bool,
    pub sub_path: Option<SubPath>,
    pub source: Source,
}

pub enum SubPath {
    Plain(String),
    /// Expanded against the container's environment.
    Expr(String),
}

pub enum Source {
    /// A disk-backed emptyDir: a fresh world-writable host directory.
    Dir,
    /// An emptyDir of medium Memory: a tmpfs of this many bytes.
    Tmpfs(Option<u64>),
    Claim(PathBuf),
}

pub const INDEX_ANNOTATION: &str = "metadata.annotations['batch.kubernetes.io/job-completion-index']";
pub const INDEX_LABEL: &str = "metadata.labels['batch.kubernetes.io/job-completion-index']";

pub fn plan_job(
    obj: &Obj,
    policies: &[&Obj],
    pvcs: &HashSet<(String, String)>,
    claims: &HashMap<String, PathBuf>,
) -> Job {
    let what = format!("{} (Job {})", obj.file.display(), obj.name);
    keys(&obj.value, &what, &["apiVersion", "kind", "metadata", "spec"]);
    keys(&obj.value["metadata"], &format!("{what}.metadata"), &["name", "namespace", "labels", "annotations"]);
    let spec_what = format!("{what}.spec");
    let spec = keys(
        &obj.value["spec"],
        &spec_what,
        // ttlSecondsAfterFinished only deletes the finished Job object.
        &[
            "completionMode",
            "completions",
            "parallelism",
            "backoffLimit",
            "backoffLimitPerIndex",
            "maxFailedIndexes",
            "ttlSecondsAfterFinished",
            "template",
        ],
    );
    let mode = spec.get("completionMode").map(|v| str_of(v, &spec_what)).unwrap_or_default();
    assert_eq!(mode, "Indexed", "{spec_what}.completionMode: only Indexed Jobs are mapped");
    let completions =
        u64_of(spec.get("completions").unwrap_or_else(|| panic!("{spec_what}: no completions")), &spec_what);
    let parallelism = spec.get("parallelism").map(|v| u64_of(v, &spec_what)).unwrap_or(1);
    assert!(completions > 0 && parallelism > 0, "{spec_what}: completions {completions}, parallelism {parallelism}");
    // Kubernetes retries failed pods up to backoffLimit (6 when absent) across the Job, or
    // backoffLimitPerIndex per index: the latter is what is mapped (each index run again up
    // to that many times); a Job-wide budget only when it is 0.
    let per_index = spec.get("backoffLimitPerIndex").map(|v| u64_of(v, &spec_what) as u32);
    let backoff = spec.get("backoffLimit").map(|v| u64_of(v, &spec_what));
    if per_index.is_none() {
        assert_eq!(backoff, Some(0), "{spec_what}.backoffLimit: only 0 (no retries) is mapped, got {backoff:?}");
    }
    // maxFailedIndexes only decides when the Job object is marked failed: every index runs here.

    let template = spec.get("template").unwrap_or_else(|| panic!("{spec_what}: no template"));
    let t_what = format!("{spec_what}.template");
    keys(template, &t_what, &["metadata", "spec"]);
    let labels: BTreeMap<String, String> = match template.get("metadata") {
        Some(m) => {
            keys(m, &format!("{t_what}.metadata"), &["labels", "annotations"]);
            string_map(m.get("labels"), &format!("{t_what}.metadata.labels"))
        }
        None => BTreeMap::new(),
    };
    let pod = plan_pod(&template["spec"], &format!("{t_what}.spec"), &obj.namespace, pvcs, claims);
    let job = Job {
        name: obj.name.clone(),
        completions: completions as u32,
        parallelism: parallelism as u32,
        retries: per_index.unwrap_or(0),
        pod,
    };
    for index in 0..job.completions {
        check_isolated(&job, index, &labels, &obj.namespace, policies);
    }
    job
}

pub fn string_map(v: Option<&Value>, what: &str) -> BTreeMap<String, String> {
    match v {
        None => BTreeMap::new(),
        Some(v) => v
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
            .iter()
            .map(|(k, v)| (k.clone(), str_of(v, &format!("{what}.{k}"))))
            .collect(),
    }
}

/// Panics unless a NetworkPolicy of the pod's namespace selects it and denies all traffic
/// both ways, and none that selects it allows any: only then is `--network none` what it gets.
pub fn check_isolated(job: &Job, index: u32, template: &BTreeMap<String, String>, ns: &str, policies: &[&Obj]) {
    // The labels the Job controller adds to its pods, which a policy may select on.
    let mut labels = template.clone();
    labels.insert("batch.kubernetes.io/job-name".into(), job.name.clone());
    labels.insert("job-name".into(), job.name.clone());
    labels.insert("batch.kubernetes.io/job-completion-index".into(), index.to_string());
    let mut deny_all = false;
    for p in policies.iter().filter(|p| p.namespace == ns) {
        let what = format!("{} (NetworkPolicy {})", p.file.display(), p.name);
        keys(&p.value, &what, &["apiVersion", "kind", "metadata", "spec"]);
        let spec =
            keys(&p.value["spec"], &format!("{what}.spec"), &["podSelector", "policyTypes", "ingress", "egress"]);
        let selector = spec.get("podSelector").unwrap_or_else(|| panic!("{what}: no podSelector"));
        keys(selector, &format!("{what}.spec.podSelector"), &["matchLabels"]);
        let wanted = string_map(selector.get("matchLabels"), &format!("{what}.spec.podSelector.matchLabels"));
        if !wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let types: Vec<String> = spec
            .get("policyTypes")
            .map(|t| list_of(t, &what).iter().map(|v| str_of(v, &what)).collect())
            .unwrap_or_default();
        let no_rules = |k: &str| spec.get(k).is_none_or(|r| list_of(r, &what).is_empty());
        // A policy with rules opens something that --network none would close.
        assert!(
            no_rules("ingress") && no_rules("egress"),
            "{what} selects pod {index} of Job {} and allows some traffic: kube_pods maps only deny-all",
            job.name
        );
        if types.iter().any(|t| t == "Ingress") && types.iter().any(|t| t == "Egress") {
            deny_all = true;
        }
    }
    assert!(
        deny_all,
        "refusing to run pod {index} of Job {}: no NetworkPolicy denying both Ingress and Egress selects it \
         (its labels: {labels:?})",
        job.name
    );
}

pub fn plan_pod(
    spec: &Value,
    what: &str,
    ns: &str,
    pvcs: &HashSet<(String, String)>,
    claims: &HashMap<String, PathBuf>,
) -> Pod {
    let spec = keys(
        spec,
        what,
        &[
            "restartPolicy",
            "automountServiceAccountToken",
            "enableServiceLinks",
            "nodeSelector",
            "securityContext",
            "activeDeadlineSeconds",
            "terminationGracePeriodSeconds",
            "containers",
            "volumes",
        ],
    );
    let restart = spec.get("restartPolicy").map(|v| str_of(v, what));
    assert_eq!(restart.as_deref(), Some("Never"), "{what}.restartPolicy: only Never is mapped");
    // Otherwise the pod gets a service-account token mounted, which no flag here gives.
    let automount = spec.get("automountServiceAccountToken").map(|v| bool_of(v, what));
    assert_eq!(automount, Some(false), "{what}.automountServiceAccountToken: only false is mapped");
    // Service links are environment variables naming the namespace's services; a pod that
    // keeps them (the default) would see KUBERNETES_SERVICE_HOST and the like.
    let links = spec.get("enableServiceLinks").map(|v| bool_of(v, what));
    let mut notes = Vec::new();
    if links != Some(false) {
        notes.push(
            "kube_pods: enableServiceLinks is not false: the pod would also see the namespace's service \
             variables (KUBERNETES_SERVICE_HOST...), which this run does not set"
                .to_string(),
        );
    }
    // The scheduler's part: this machine is the one node, so the pod must fit it.
    if let Some(selector) = spec.get("nodeSelector") {
        let labels = keys(selector, &format!("{what}.nodeSelector"), &["kubernetes.io/arch", "kubernetes.io/os"]);
        let node = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        for (label, want) in [("kubernetes.io/arch", node), ("kubernetes.io/os", "linux")] {
            let got = labels.get(label).map(|v| str_of(v, what));
            assert!(got.as_deref().is_none_or(|g| g == want), "{what}.nodeSelector {label}={got:?}: no such node here");
        }
    }
    let deadline = spec.get("activeDeadlineSeconds").map(|v| Duration::from_secs(u64_of(v, what)));
    let grace = spec.get("terminationGracePeriodSeconds").map(|v| u64_of(v, what)).unwrap_or(30);

    let pod_sc = spec.get("securityContext").cloned().unwrap_or(Value::Object(Map::new()));
    let psc_what = format!("{what}.securityContext");
    keys(
        &pod_sc,
        &psc_what,
        &["runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "seccompProfile"],
    );
    check_seccomp(pod_sc.get("seccompProfile"), &psc_what);

    let containers = list_of(spec.get("containers").unwrap_or_else(|| panic!("{what}: no containers")), what);
    assert_eq!(containers.len(), 1, "{what}.containers: only pods of one container are mapped");
    let c_what = format!("{what}.containers[0]");
    let c = keys(
        &containers[0],
        &c_what,
        &[
            "name",
            "image",
            "imagePullPolicy",
            "command",
            "args",
            "env",
            "workingDir",
            "securityContext",
            "resources",
            "volumeMounts",
            // Where the kubelet reads a termination message from: no effect inside.
            "terminationMessagePath",
            "terminationMessagePolicy",
        ],
    );
    let image = str_at(&containers[0], "image", &c_what);

    // Security: the container's settings override the pod's.
    let csc = c.get("securityContext").cloned().unwrap_or(Value::Object(Map::new()));
    let csc_what = format!("{c_what}.securityContext");
    keys(
        &csc,
        &csc_what,
        &[
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "capabilities",
            "runAsNonRoot",
            "runAsUser",
            "runAsGroup",
            "privileged",
            "seccompProfile",
        ],
    );
    check_seccomp(csc.get("seccompProfile"), &csc_what);
    let privileged = csc.get("privileged").map(|v| bool_of(v, &csc_what)).unwrap_or(false);
    assert!(!privileged, "{csc_what}.privileged: a privileged container is not mapped");
    let pick = |k: &str| csc.get(k).or_else(|| pod_sc.get(k));
    let uid = pick("runAsUser").map(|v| u64_of(v, &csc_what));
    let gid = pick("runAsGroup").map(|v| u64_of(v, &csc_what));
    let non_root = pick("runAsNonRoot").map(|v| bool_of(v, &csc_what)).unwrap_or(false);
    // The kubelet would check the image's USER when runAsUser is missing; refusing is simpler.
    let uid = uid.unwrap_or_else(|| panic!("{what}: no runAsUser; kube_pods maps only pods that name their uid"));
    assert!(!(non_root && uid == 0), "{what}: runAsNonRoot with runAsUser 0 would not start");
    let user = match gid {
        Some(g) => format!("{uid}:{g}"),
        None => uid.to_string(),
    };
    // fsGroup and supplementalGroups become supplementary groups of the process.
    let mut groups = Vec::new();
    if let Some(g) = pod_sc.get("fsGroup") {
        groups.push(u64_of(g, &psc_what));
    }
    if let Some(gs) = pod_sc.get("supplementalGroups") {
        groups.extend(list_of(gs, &psc_what).iter().map(|g| u64_of(g, &psc_what)));
    }
    let read_only = csc.get("readOnlyRootFilesystem").map(|v| bool_of(v, &csc_what)).unwrap_or(false);
    let no_new_privileges = csc.get("allowPrivilegeEscalation").map(|v| !bool_of(v, &csc_what)).unwrap_or(false);
    let mut cap_drop_all = false;
    if let Some(caps) = csc.get("capabilities") {
        let caps_what = format!("{csc_what}.capabilities");
        let m = keys(caps, &caps_what, &["drop", "add"]);
        if let Some(add) = m.get("add") {
            assert!(list_of(add, &caps_what).is_empty(), "{caps_what}.add: adding capabilities is not mapped");
        }
        if let Some(drop) = m.get("drop") {
            let drop: Vec<String> = list_of(drop, &caps_what).iter().map(|v| str_of(v, &caps_what)).collect();
            assert_eq!(drop, ["ALL"], "{caps_what}.drop: only [ALL] is mapped");
            cap_drop_all = true;
        }
    }

    // Resources: requests only place the pod; limits become engine flags where it can.
    let (mut memory, mut cpus) = (None, None);
    if let Some(r) = c.get("resources") {
        let r_what = format!("{c_what}.resources");
        let m = keys(r, &r_what, &["requests", "limits"]);
        if let Some(req) = m.get("requests") {
            keys(req, &format!("{r_what}.requests"), &["cpu", "memory", "ephemeral-storage"]);
        }
        if let Some(lim) = m.get("limits") {
            let l_what = format!("{r_what}.limits");
            let l = keys(lim, &l_what, &["cpu", "memory", "ephemeral-storage"]);
            memory = l.get("memory").map(|v| quantity(v, &l_what).ceil() as u64);
            cpus = l.get("cpu").map(|v| format!("{:.3}", quantity(v, &l_what)));
            if let Some(e) = l.get("ephemeral-storage") {
                let e = e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string());
                notes.push(format!(
                    "kube_pods: limits.ephemeral-storage {e} not enforced: no engine flag bounds the writable layer and emptyDirs"
                ));
            }
        }
    }

    let mut env = Vec::new();
    for (i, e) in c.get("env").map(|v| list_of(v, &c_what).clone()).unwrap_or_default().iter().enumerate() {
        let e_what = format!("{c_what}.env[{i}]");
        let m = keys(e, &e_what, &["name", "value", "valueFrom"]);
        let name = str_at(e, "name", &e_what);
        let var = match (m.get("value"), m.get("valueFrom")) {
            (Some(v), None) => EnvVar::Value(name, str_of(v, &e_what)),
            (None, Some(from)) => {
                let f = keys(from, &format!("{e_what}.valueFrom"), &["fieldRef"]);
                let field = f.get("fieldRef").unwrap_or_else(|| panic!("{e_what}.valueFrom: no fieldRef"));
                keys(field, &format!("{e_what}.valueFrom.fieldRef"), &["fieldPath", "apiVersion"]);
                let path = str_at(field, "fieldPath", &e_what);
                assert!(
                    path == INDEX_ANNOTATION || path == INDEX_LABEL,
                    "{e_what}: only the completion index is mapped as a fieldRef, not {path}"
                );
                EnvVar::Index(name)
            }
            (None, None) => EnvVar::Value(name, String::new()),
            _ => panic!("{e_what}: both value and valueFrom"),
        };
        if let EnvVar::Value(n, _) = &var {
            assert_ne!(n, "JOB_COMPLETION_INDEX", "{e_what}: JOB_COMPLETION_INDEX set to a value, not the index");
        }
        env.push(var);
    }
    // The Job controller adds it to every container of an Indexed Job's pods, last.
    if !env.iter().any(|v| matches!(v, EnvVar::Index(n) if n == "JOB_COMPLETION_INDEX")) {
        env.push(EnvVar::Index("JOB_COMPLETION_INDEX".into()));
    }

    let strings = |k: &str| -> Option<Vec<String>> {
        c.get(k).map(|v| list_of(v, &c_what).iter().map(|s| str_of(s, &format!("{c_what}.{k}"))).collect())
    };
    let (entrypoint, mut args) = match strings("command") {
        Some(cmd) => {
            let (first, rest) = cmd.split_first().unwrap_or_else(|| panic!("{c_what}.command is empty"));
            (Some(first.clone()), rest.to_vec())
        }
        None => (None, Vec::new()),
    };
    args.extend(strings("args").unwrap_or_default());
    let workdir = c.get("workingDir").map(|v| str_of(v, &c_what));

    // Volumes, by name, then the container's mounts of them.
    let mut volumes: HashMap<String, Source> = HashMap::new();
    for (i, v) in spec.get("volumes").map(|v| list_of(v, what).clone()).unwrap_or_default().iter().enumerate() {
        let v_what = format!("{what}.volumes[{i}]");
        let m = keys(v, &v_what, &["name", "emptyDir", "persistentVolumeClaim"]);
        let name = str_at(v, "name", &v_what);
        let source = if let Some(ed) = m.get("emptyDir") {
            let e_what = format!("{v_what}.emptyDir");
            let e = keys(ed, &e_what, &["medium", "sizeLimit"]);
            let size = e.get("sizeLimit").map(|s| quantity(s, &e_what).ceil() as u64);
            match e.get("medium").map(|v| str_of(v, &e_what)).as_deref() {
                // The kubelet sizes it to the smaller of sizeLimit and the memory limit.
                Some("Memory") => Source::Tmpfs(match (size, memory) {
                    (Some(s), Some(m)) => Some(s.min(m)),
                    (s, m) => s.or(m),
                }),
                None | Some("") => {
                    if let Some(s) =
                        e.get("sizeLimit").map(|s| s.as_str().map(str::to_string).unwrap_or_else(|| s.to_string()))
                    {
                        notes.push(format!(
                            "kube_pods: volume {name}: sizeLimit {s} not enforced on a host directory (the kubelet would evict the pod past it)"
                        ));
                    }
                    Source::Dir
                }
                Some(other) => panic!("{e_what}.medium {other} is not mapped"),
            }
        } else if let Some(pvc) = m.get("persistentVolumeClaim") {
            let p_what = format!("{v_what}.persistentVolumeClaim");
            let p = keys(pvc, &p_what, &["claimName", "readOnly"]);
            let claim = str_at(pvc, "claimName", &p_what);
            assert!(
                pvcs.contains(&(ns.to_string(), claim.clone())),
                "{p_what}: no PersistentVolumeClaim {claim} in the directory (the pod would stay Pending)"
            );
            assert!(
                p.get("readOnly").is_none_or(|r| !bool_of(r, &p_what)),
                "{p_what}.readOnly: a read-only claim is not mapped"
            );
            let host =
                claims.get(&claim).unwrap_or_else(|| panic!("{p_what}: no host directory given for claim {claim}"));
            Source::Claim(host.clone())
        } else {
            panic!("{v_what}: only emptyDir and persistentVolumeClaim volumes are mapped: {v}");
        };
        volumes.insert(name, source);
    }
    let mut mounts = Vec::new();
    for (i, vm) in c.get("volumeMounts").map(|v| list_of(v, &c_what).clone()).unwrap_or_default().iter().enumerate() {
        let m_what = format!("{c_what}.volumeMounts[{i}]");
        let m = keys(vm, &m_what, &["name", "mountPath", "readOnly", "subPath", "subPathExpr"]);
        let name = str_at(vm, "name", &m_what);
        let path = str_at(vm, "mountPath", &m_what);
        let read_only = m.get("readOnly").map(|v| bool_of(v, &m_what)).unwrap_or(false);
        let sub_path = match (m.get("subPath"), m.get("subPathExpr")) {
            (Some(s), None) => Some(SubPath::Plain(str_of(s, &m_what))),
            (None, Some(s)) => Some(SubPath::Expr(str_of(s, &m_what))),
            (None, None) => None,
            _ => panic!("{m_what}: both subPath and subPathExpr"),
        };
        let source = match volumes.remove(&name) {
            Some(s) => s,
            None => panic!("{m_what}: volume {name} is not declared, or mounted twice (not mapped)"),
        };
        if matches!(source, Source::Tmpfs(_)) {
            assert!(sub_path.is_none(), "{m_what}: a subPath of a memory emptyDir is not mapped");
            assert!(!read_only, "{m_what}: a read-only memory emptyDir is not mapped");
        }
        assert!(!path.contains(':'), "{m_what}: a mountPath with ':' cannot be given to -v");
        mounts.push(MountSpec { path, read_only, sub_path, source });
    }
    // An unmounted volume still exists in the pod, but no container sees it.
    Pod {
        image,
        user,
        groups,
        read_only,
        cap_drop_all,
        no_new_privileges,
        memory,
        cpus,
        entrypoint,
        args,
        env,
        workdir,
        mounts,
        deadline,
        grace,
        notes,
    }
}

/// Only the runtime's default profile is mapped: the engines apply theirs (checked to be on).
pub fn check_seccomp(profile: Option<&Value>, what: &str) {
    if let Some(p) = profile {
        let m = keys(p, &format!("{what}.seccompProfile"), &["type"]);
        let t = m.get("type").map(|t| str_of(t, what));
        assert_eq!(t.as_deref(), Some("RuntimeDefault"), "{what}.seccompProfile: only RuntimeDefault is mapped");
    }
}

/// Kubernetes's `$(VAR)` expansion (command, args, env values, subPathExpr): a defined
/// variable is replaced, an undefined reference stays as written, `$$` is a `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let (Some(inner), Some(end)) = (tail.strip_prefix("$("), tail.find(')')) {
            let name = &inner[..end - 2];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..=end]),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}
