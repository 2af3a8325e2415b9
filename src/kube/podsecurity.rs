//! PodSecurity "restricted" (the latest version of the Kubernetes Pod Security Standards:
//! the baseline rules plus the restricted ones), checked on every pod spec ckms writes, so a
//! namespace enforcing it never rejects a build pod at admission time, after the render.
//! [`ckms_rules`] adds ckms's own stricter rules for pods that run a module's build.
//!
//! Only the pod spec is checked: the rules on metadata annotations (the deprecated AppArmor
//! and seccomp annotations) concern objects ckms does not annotate. The optional "non-root
//! groups" control is left out, as PodSecurity admission leaves it out.

use k8s_openapi::api::core::v1::{
    ContainerPort, Lifecycle, PodSpec, Probe, ResourceRequirements, SELinuxOptions, SecurityContext,
    WindowsSecurityContextOptions,
};

/// The volume types restricted allows. `image` joined in Kubernetes 1.33
/// (kubernetes/kubernetes#130394), before the documentation listed it.
const VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The sysctls baseline considers safe: namespaced and isolated from other pods.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
const PROFILES: &[&str] = &["RuntimeDefault", "Localhost"];

/// What the checks need of a container, an init container or an ephemeral container (three
/// types in k8s-openapi with the same fields).
struct Ctr<'a> {
    /// How messages name it, e.g. `container "build"`.
    who: String,
    sc: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
    probes: [(&'static str, Option<&'a Probe>); 3],
    lifecycle: Option<&'a Lifecycle>,
    resources: Option<&'a ResourceRequirements>,
}

fn containers(pod: &PodSpec) -> Vec<Ctr<'_>> {
    let mut out = Vec::new();
    let init = pod.init_containers.as_deref().unwrap_or(&[]);
    for (kind, list) in [("initContainer", init), ("container", &pod.containers[..])] {
        out.extend(list.iter().map(|c| Ctr {
            who: format!("{kind} {:?}", c.name),
            sc: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or(&[]),
            probes: [
                ("livenessProbe", c.liveness_probe.as_ref()),
                ("readinessProbe", c.readiness_probe.as_ref()),
                ("startupProbe", c.startup_probe.as_ref()),
            ],
            lifecycle: c.lifecycle.as_ref(),
            resources: c.resources.as_ref(),
        }));
    }
    out.extend(pod.ephemeral_containers.as_deref().unwrap_or(&[]).iter().map(|c| Ctr {
        who: format!("ephemeralContainer {:?}", c.name),
        sc: c.security_context.as_ref(),
        ports: c.ports.as_deref().unwrap_or(&[]),
        probes: [
            ("livenessProbe", c.liveness_probe.as_ref()),
            ("readinessProbe", c.readiness_probe.as_ref()),
            ("startupProbe", c.startup_probe.as_ref()),
        ],
        lifecycle: c.lifecycle.as_ref(),
        resources: c.resources.as_ref(),
    }));
    out
}

fn host_process(who: &str, w: Option<&WindowsSecurityContextOptions>, out: &mut Vec<String>) {
    if w.and_then(|w| w.host_process) == Some(true) {
        out.push(format!("{who}: securityContext.windowsOptions.hostProcess must be false or unset"));
    }
}

fn selinux(who: &str, o: Option<&SELinuxOptions>, out: &mut Vec<String>) {
    let Some(o) = o else { return };
    if let Some(t) = o.type_.as_deref().filter(|t| !SELINUX_TYPES.contains(t)) {
        out.push(format!(
            "{who}: securityContext.seLinuxOptions.type {t:?} is not allowed (only {})",
            SELINUX_TYPES[1..].join(", ")
        ));
    }
    for (field, v) in [("user", &o.user), ("role", &o.role)] {
        if v.as_deref().is_some_and(|v| !v.is_empty()) {
            out.push(format!("{who}: securityContext.seLinuxOptions.{field} must be unset"));
        }
    }
}

fn app_armor(who: &str, t: Option<&str>, out: &mut Vec<String>) {
    if let Some(t) = t.filter(|t| !PROFILES.contains(t)) {
        out.push(format!(
            "{who}: securityContext.appArmorProfile.type {t:?} is not allowed (RuntimeDefault or Localhost)"
        ));
    }
}

/// Every violation of PodSecurity "restricted" in `pod`, each naming the container (or the
/// pod, or the volume) and the field.
pub fn restricted(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    // Seccomp, privilege escalation and capabilities do not apply to Windows pods.
    let linux = pod.os.as_ref().is_none_or(|os| os.name != "windows");
    let psc = pod.security_context.as_ref();

    for (field, v) in [("hostNetwork", pod.host_network), ("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)] {
        if v == Some(true) {
            out.push(format!("pod: spec.{field} must be false or unset"));
        }
    }
    if let Some(psc) = psc {
        host_process("pod", psc.windows_options.as_ref(), &mut out);
        selinux("pod", psc.se_linux_options.as_ref(), &mut out);
        app_armor("pod", psc.app_armor_profile.as_ref().map(|p| p.type_.as_str()), &mut out);
        if psc.run_as_user == Some(0) {
            out.push("pod: securityContext.runAsUser must not be 0".into());
        }
        if psc.run_as_non_root == Some(false) {
            out.push("pod: securityContext.runAsNonRoot must be true".into());
        }
        for s in psc.sysctls.as_deref().unwrap_or(&[]) {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                out.push(format!("pod: securityContext.sysctls {:?} is not a safe sysctl", s.name));
            }
        }
    }
    let pod_seccomp = psc.and_then(|p| p.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
    if let Some(t) = pod_seccomp.filter(|t| linux && !PROFILES.contains(t)) {
        out.push(format!(
            "pod: securityContext.seccompProfile.type {t:?} is not allowed (RuntimeDefault or Localhost)"
        ));
    }
    let pod_seccomp_ok = pod_seccomp.is_some_and(|t| PROFILES.contains(&t));
    let pod_non_root = psc.and_then(|p| p.run_as_non_root) == Some(true);

    for v in pod.volumes.as_deref().unwrap_or(&[]) {
        // Read the source's name off the JSON form, so a type k8s-openapi adds later is
        // refused too rather than missed.
        let kinds = match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m.keys().filter(|k| *k != "name").cloned().collect(),
            _ => vec!["(unreadable)".to_string()],
        };
        for k in kinds.iter().filter(|k| !VOLUME_TYPES.contains(&k.as_str())) {
            out.push(format!("volume {:?}: {k} volumes are not allowed (only {})", v.name, VOLUME_TYPES.join(", ")));
        }
    }

    for c in containers(pod) {
        let who = c.who.as_str();
        let sc = c.sc;
        if sc.and_then(|s| s.privileged) == Some(true) {
            out.push(format!("{who}: securityContext.privileged must be false or unset"));
        }
        host_process(who, sc.and_then(|s| s.windows_options.as_ref()), &mut out);
        selinux(who, sc.and_then(|s| s.se_linux_options.as_ref()), &mut out);
        app_armor(who, sc.and_then(|s| s.app_armor_profile.as_ref()).map(|p| p.type_.as_str()), &mut out);
        if let Some(m) = sc.and_then(|s| s.proc_mount.as_deref()).filter(|m| *m != "Default") {
            out.push(format!("{who}: securityContext.procMount {m:?} is not allowed (Default or unset)"));
        }
        for p in c.ports.iter().filter(|p| p.host_port.is_some_and(|h| h != 0)) {
            out.push(format!("{who}: ports[{}].hostPort must be 0 or unset", p.container_port));
        }
        let probes = c.probes.iter().filter_map(|(n, p)| p.map(|p| (*n, p.http_get.as_ref(), p.tcp_socket.as_ref())));
        let hooks = c.lifecycle.into_iter().flat_map(|l| {
            [("lifecycle.postStart", &l.post_start), ("lifecycle.preStop", &l.pre_stop)]
                .into_iter()
                .filter_map(|(n, h)| h.as_ref().map(|h| (n, h.http_get.as_ref(), h.tcp_socket.as_ref())))
        });
        for (name, http, tcp) in probes.chain(hooks) {
            if http.and_then(|a| a.host.as_deref()).is_some_and(|h| !h.is_empty()) {
                out.push(format!("{who}: {name}.httpGet.host must be unset"));
            }
            if tcp.and_then(|a| a.host.as_deref()).is_some_and(|h| !h.is_empty()) {
                out.push(format!("{who}: {name}.tcpSocket.host must be unset"));
            }
        }
        if sc.and_then(|s| s.run_as_user) == Some(0) {
            out.push(format!("{who}: securityContext.runAsUser must not be 0"));
        }
        match sc.and_then(|s| s.run_as_non_root) {
            Some(true) => {}
            Some(false) => out.push(format!("{who}: securityContext.runAsNonRoot must be true")),
            None if !pod_non_root => out.push(format!(
                "{who}: securityContext.runAsNonRoot must be true (here or in the pod's securityContext)"
            )),
            None => {}
        }
        if !linux {
            continue;
        }
        match sc.and_then(|s| s.seccomp_profile.as_ref()).map(|p| p.type_.as_str()) {
            Some(t) if PROFILES.contains(&t) => {}
            Some(t) => out.push(format!(
                "{who}: securityContext.seccompProfile.type {t:?} is not allowed (RuntimeDefault or Localhost)"
            )),
            None if !pod_seccomp_ok => out.push(format!(
                "{who}: securityContext.seccompProfile.type must be RuntimeDefault or Localhost \
                 (here or in the pod's securityContext)"
            )),
            None => {}
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            out.push(format!("{who}: securityContext.allowPrivilegeEscalation must be false"));
        }
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        if !caps.and_then(|c| c.drop.as_ref()).is_some_and(|d| d.iter().any(|d| d == "ALL")) {
            out.push(format!("{who}: securityContext.capabilities.drop must include ALL"));
        }
        for a in caps.and_then(|c| c.add.as_deref()).unwrap_or(&[]) {
            if a != "NET_BIND_SERVICE" {
                out.push(format!(
                    "{who}: securityContext.capabilities.add {a:?} is not allowed (only NET_BIND_SERVICE)"
                ));
            }
        }
    }
    out
}

/// ckms's own rules for build pods, stricter than restricted: a build writes only where it
/// is given a volume, sees no API credentials, and is bounded in memory and time.
pub fn ckms_rules(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    if pod.automount_service_account_token != Some(false) {
        out.push("pod: spec.automountServiceAccountToken must be false".into());
    }
    if pod.active_deadline_seconds.is_none_or(|s| s <= 0) {
        out.push("pod: spec.activeDeadlineSeconds must be set".into());
    }
    for c in containers(pod) {
        let who = c.who.as_str();
        if c.sc.and_then(|s| s.read_only_root_filesystem) != Some(true) {
            out.push(format!("{who}: securityContext.readOnlyRootFilesystem must be true"));
        }
        if !c.resources.and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key("memory")) {
            out.push(format!("{who}: resources.limits.memory must be set"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Capabilities, Container, EphemeralContainer, HTTPGetAction, HostPathVolumeSource, PodOS, SeccompProfile,
        Sysctl, Volume,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::kube::manifest::{job, sample};

    fn pod() -> PodSpec {
        job(&sample(), "claim").spec.and_then(|s| s.template.spec).unwrap()
    }

    /// The build container's security context, to mutate.
    fn sc(p: &mut PodSpec) -> &mut SecurityContext {
        p.containers[0].security_context.as_mut().unwrap()
    }

    fn violations(p: &PodSpec) -> Vec<String> {
        let mut v = restricted(p);
        v.extend(ckms_rules(p));
        v
    }

    fn assert_one(p: &PodSpec, expected: &str) {
        assert_eq!(violations(p), vec![expected.to_string()]);
    }

    #[test]
    fn the_build_pod_passes_both() {
        assert_eq!(violations(&pod()), Vec::<String>::new());
    }

    #[test]
    fn privileged() {
        let mut p = pod();
        sc(&mut p).privileged = Some(true);
        assert_one(&p, r#"container "build": securityContext.privileged must be false or unset"#);
    }

    #[test]
    fn host_path() {
        let mut p = pod();
        let v = Volume {
            name: "root".into(),
            host_path: Some(HostPathVolumeSource { path: "/".into(), type_: None }),
            ..Default::default()
        };
        p.volumes.as_mut().unwrap().push(v);
        let got = violations(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with(r#"volume "root": hostPath volumes are not allowed"#), "{got:?}");
    }

    #[test]
    fn run_as_user_0() {
        let mut p = pod();
        p.security_context.as_mut().unwrap().run_as_user = Some(0);
        assert_one(&p, "pod: securityContext.runAsUser must not be 0");
        let mut p = pod();
        sc(&mut p).run_as_user = Some(0);
        assert_one(&p, r#"container "build": securityContext.runAsUser must not be 0"#);
    }

    #[test]
    fn run_as_non_root_from_the_pod_or_every_container() {
        let mut p = pod();
        p.security_context.as_mut().unwrap().run_as_non_root = None;
        assert_eq!(violations(&p), Vec::<String>::new(), "the container sets it");
        sc(&mut p).run_as_non_root = None;
        assert_one(
            &p,
            r#"container "build": securityContext.runAsNonRoot must be true (here or in the pod's securityContext)"#,
        );
        let mut p = pod();
        sc(&mut p).run_as_non_root = Some(false);
        assert_one(&p, r#"container "build": securityContext.runAsNonRoot must be true"#);
    }

    #[test]
    fn added_capability() {
        let mut p = pod();
        sc(&mut p).capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into(), "NET_BIND_SERVICE".into()]);
        assert_one(
            &p,
            r#"container "build": securityContext.capabilities.add "SYS_ADMIN" is not allowed (only NET_BIND_SERVICE)"#,
        );
        sc(&mut p).capabilities = Some(Capabilities { add: None, drop: Some(vec!["NET_RAW".into()]) });
        assert_one(&p, r#"container "build": securityContext.capabilities.drop must include ALL"#);
    }

    #[test]
    fn seccomp_from_the_pod_or_every_container() {
        let mut p = pod();
        p.security_context.as_mut().unwrap().seccomp_profile = None;
        assert_eq!(violations(&p), Vec::<String>::new(), "the container sets it");
        sc(&mut p).seccomp_profile = None;
        assert_one(
            &p,
            r#"container "build": securityContext.seccompProfile.type must be RuntimeDefault or Localhost (here or in the pod's securityContext)"#,
        );
        let mut p = pod();
        sc(&mut p).seccomp_profile = Some(SeccompProfile { type_: "Unconfined".into(), localhost_profile: None });
        assert_one(
            &p,
            r#"container "build": securityContext.seccompProfile.type "Unconfined" is not allowed (RuntimeDefault or Localhost)"#,
        );
    }

    #[test]
    fn allow_privilege_escalation_unset() {
        let mut p = pod();
        sc(&mut p).allow_privilege_escalation = None;
        assert_one(&p, r#"container "build": securityContext.allowPrivilegeEscalation must be false"#);
    }

    #[test]
    fn host_namespaces_ports_sysctls_and_probes() {
        let mut p = pod();
        p.host_network = Some(true);
        p.host_pid = Some(true);
        p.security_context.as_mut().unwrap().sysctls = Some(vec![
            Sysctl { name: "net.ipv4.tcp_syncookies".into(), value: "1".into() },
            Sysctl { name: "kernel.msgmax".into(), value: "1".into() },
        ]);
        p.containers[0].ports =
            Some(vec![ContainerPort { container_port: 80, host_port: Some(80), ..Default::default() }]);
        p.containers[0].liveness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                host: Some("10.0.0.1".into()),
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        });
        sc(&mut p).proc_mount = Some("Unmasked".into());
        assert_eq!(
            violations(&p),
            [
                "pod: spec.hostNetwork must be false or unset",
                "pod: spec.hostPID must be false or unset",
                r#"pod: securityContext.sysctls "kernel.msgmax" is not a safe sysctl"#,
                r#"container "build": securityContext.procMount "Unmasked" is not allowed (Default or unset)"#,
                r#"container "build": ports[80].hostPort must be 0 or unset"#,
                r#"container "build": livenessProbe.httpGet.host must be unset"#,
            ]
        );
    }

    #[test]
    fn every_kind_of_container_is_checked() {
        let mut p = pod();
        p.init_containers = Some(vec![Container { name: "init".into(), ..Default::default() }]);
        p.ephemeral_containers = Some(vec![EphemeralContainer { name: "debug".into(), ..Default::default() }]);
        let got = restricted(&p);
        for who in [r#"initContainer "init""#, r#"ephemeralContainer "debug""#] {
            assert!(got.contains(&format!("{who}: securityContext.allowPrivilegeEscalation must be false")), "{got:?}");
            assert!(got.contains(&format!("{who}: securityContext.capabilities.drop must include ALL")), "{got:?}");
        }
        let got = ckms_rules(&p);
        assert!(got.contains(&r#"initContainer "init": resources.limits.memory must be set"#.to_string()), "{got:?}");
    }

    #[test]
    fn windows_pods_are_exempt_from_the_linux_only_rules() {
        let mut p = pod();
        p.os = Some(PodOS { name: "windows".into() });
        p.security_context.as_mut().unwrap().seccomp_profile = None;
        sc(&mut p).seccomp_profile = None;
        sc(&mut p).allow_privilege_escalation = None;
        sc(&mut p).capabilities = None;
        assert_eq!(restricted(&p), Vec::<String>::new());
    }

    #[test]
    fn ckms_rules_bound_the_build() {
        let mut p = pod();
        p.automount_service_account_token = None;
        p.active_deadline_seconds = None;
        sc(&mut p).read_only_root_filesystem = Some(false);
        p.containers[0].resources.as_mut().unwrap().limits.as_mut().unwrap().remove("memory");
        assert_eq!(restricted(&p), Vec::<String>::new());
        assert_eq!(
            ckms_rules(&p),
            [
                "pod: spec.automountServiceAccountToken must be false",
                "pod: spec.activeDeadlineSeconds must be set",
                r#"container "build": securityContext.readOnlyRootFilesystem must be true"#,
                r#"container "build": resources.limits.memory must be set"#,
            ]
        );
    }
}
