//! `ckms doctor`: what ckms needs from the host's container engines, each with a fix.

use super::discover::{candidates, connect, find_on_path, lookup_user, EngineSettings, Origin};
use super::{DockerApi, EngineKind};
use crate::report::Silent;
use std::time::Duration;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check { name: name.into(), ok, detail: detail.into(), fix: if ok { None } else { fix } }
    }
}

/// Runs every check; never fails (a failure is a check with `ok: false`).
pub async fn doctor(settings: &EngineSettings) -> Vec<Check> {
    let mut out = Vec::new();
    let uid = rustix::process::getuid().as_raw();
    let podman = find_on_path("podman");
    out.push(Check::new(
        "podman installed",
        podman.is_some(),
        podman.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "no podman on PATH".into()),
        Some("apt-get install podman uidmap slirp4netns (or use Docker)".into()),
    ));

    // Whose rootless engine builds use: ours, or rootless_user's when we are root.
    let user_name =
        if uid == 0 { settings.rootless_user().to_string() } else { std::env::var("USER").unwrap_or_default() };
    let user = if uid == 0 { lookup_user(&user_name) } else { None };
    if uid == 0 {
        out.push(Check::new(
            format!("rootless user {user_name}"),
            user.is_some(),
            match &user {
                Some(u) => format!("uid {}, home {}", u.uid, u.home.display()),
                None => "does not exist: running as root, ckms runs builds in this user's rootless Podman".into(),
            },
            Some(format!("useradd --create-home {user_name}")),
        ));
    }
    if podman.is_some() && !user_name.is_empty() {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let has = std::fs::read_to_string(file)
                .map(|s| s.lines().any(|l| l.split(':').next() == Some(user_name.as_str())))
                .unwrap_or(false);
            out.push(Check::new(
                format!("{file} range for {user_name}"),
                has,
                if has { "present".to_string() } else { "missing: rootless Podman cannot map container uids".into() },
                Some(format!("usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {user_name}")),
            ));
        }
        let newuidmap = find_on_path("newuidmap");
        out.push(Check::new(
            "newuidmap installed",
            newuidmap.is_some(),
            newuidmap.map(|p| p.display().to_string()).unwrap_or_else(|| "missing".into()),
            Some("apt-get install uidmap".into()),
        ));
    }

    let env = |k: &str| std::env::var(k).ok();
    for c in candidates(settings, &env, uid, user.as_ref().map(|u| u.uid)) {
        let (ok, detail) = match DockerApi::connect(&c.host, Duration::from_secs(3)).await {
            Ok(api) => {
                let i = api.info_cached();
                (
                    true,
                    format!(
                        "{} {} (API {}), {}",
                        i.kind,
                        i.version,
                        i.api_version,
                        if i.rootless { "rootless" } else { "rootful" }
                    ),
                )
            }
            Err(why) => (false, why),
        };
        // Only an explicit endpoint has to answer; the usual sockets are alternatives.
        let must = c.origin.is_explicit();
        let what = match c.origin {
            Origin::Setting => "configured engine".to_string(),
            Origin::Env(v) => format!("engine from {v}"),
            Origin::RootlessPodman => "rootless podman socket".into(),
            Origin::SystemPodman => "system podman socket".into(),
            Origin::Docker => "docker socket".into(),
        };
        out.push(Check::new(
            format!("{what} {}", c.host),
            ok || !must,
            if ok { detail } else { format!("not answering: {detail}") },
            Some(format!("start that engine, or unset the setting naming {}", c.host)),
        ));
    }

    match connect(settings, &Silent).await {
        Ok(conn) => {
            let i = &conn.info;
            out.push(Check::new(
                "engine",
                true,
                format!(
                    "{} {} at {}{}",
                    i.kind,
                    i.version,
                    i.endpoint,
                    if conn.is_private() { " (private service started by ckms for this run)" } else { "" }
                ),
                None,
            ));
            out.push(Check::new(
                "rootless",
                i.rootless,
                if i.rootless {
                    "the engine runs unprivileged".to_string()
                } else {
                    "the engine runs as root; builds still run as an unprivileged uid inside".into()
                },
                Some("prefer rootless Podman: apt-get install podman uidmap slirp4netns".into()),
            ));
            // Doctor connects by discovery: always a Docker-API client.
            let cgroup_limits = conn.docker().is_some_and(|d| d.caps().cgroup_limits);
            out.push(Check::new(
                "resource limits",
                cgroup_limits,
                if cgroup_limits {
                    format!(
                        "memory, pids and CPU limits enforced (cgroup v{})",
                        i.cgroup_version.as_deref().unwrap_or("?")
                    )
                } else {
                    "rootless on cgroup v1: memory, pids and CPU limits are dropped; only an nproc rlimit guards \
                     against fork bombs"
                        .into()
                },
                Some(
                    "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) and delegate controllers to user \
                     sessions, or use Docker"
                        .into(),
                ),
            ));
            let driver = i.storage_driver.clone().unwrap_or_default();
            out.push(Check::new(
                "storage driver",
                driver != "vfs",
                if driver.is_empty() { "unknown".to_string() } else { driver.clone() },
                (i.kind == EngineKind::Podman).then(|| {
                    "vfs copies every layer in full (slow, large builder images): install fuse-overlayfs, or use a \
                     kernel with rootless overlay (5.13+), then `podman system reset`"
                        .to_string()
                }),
            ));
            match leftovers(&conn).await {
                Ok(left) => out.push(Check::new(
                    "leftover containers",
                    left.is_empty(),
                    format!("{} ckms containers present", left.len()),
                    Some("remove them: docker/podman rm -fv $(docker/podman ps -aq --filter label=io.ckms.run)".into()),
                )),
                Err(e) => out.push(Check::new("leftover containers", false, e.to_string(), None)),
            }
        }
        Err(e) => {
            use crate::diagnose::Diagnose;
            out.push(Check::new("engine", false, e.to_string(), e.hint()));
        }
    }
    out
}

async fn leftovers(conn: &super::Connection) -> Result<Vec<(String, String)>, super::EngineError> {
    match conn.docker() {
        Some(d) => d.leftover_containers().await,
        None => Ok(Vec::new()),
    }
}
