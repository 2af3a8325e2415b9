//! Which engine to use: an explicit setting, else the first of the usual sockets that
//! answers, else a private rootless `podman system service` that lives as long as the
//! [`Connection`].

use super::{DockerApi, EngineError, EngineInfo};
use crate::report::{Event, Reporter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long one discovered candidate gets to answer ping and version. A socket that is not
/// there fails at once; one that is there but slow (a busy rootless Podman answers /info in
/// 2-3 s) gets this long before the next candidate is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an engine the user named gets: there is no other to fall back to, and a busy
/// rootless Podman 4 takes seconds to answer /info (2-3 s with a dozen clients at once).
const EXPLICIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a freshly started private service gets to answer.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variables naming an engine, first set wins.
pub const HOST_VARS: [&str; 3] = ["CKMS_ENGINE_HOST", "DOCKER_HOST", "CONTAINER_HOST"];
pub const DEFAULT_ROOTLESS_USER: &str = "ckms";

#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// From config or --engine.
    pub host: Option<String>,
    /// When running as root: whose rootless Podman to use or start (default "ckms").
    pub rootless_user: Option<String>,
}

impl EngineSettings {
    pub fn rootless_user(&self) -> &str {
        self.rootless_user.as_deref().unwrap_or(DEFAULT_ROOTLESS_USER)
    }
}

/// Where an endpoint came from; explicit ones are never silently replaced by another engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `settings.host` (config or --engine).
    Setting,
    /// One of [`HOST_VARS`].
    Env(&'static str),
    /// The rootless Podman socket of the current user (or of `rootless_user` when root).
    RootlessPodman,
    SystemPodman,
    Docker,
}

impl Origin {
    pub fn is_explicit(self) -> bool {
        matches!(self, Origin::Setting | Origin::Env(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// unix:///path or tcp://host:port
    pub host: String,
    pub origin: Origin,
}

/// The endpoints to try, in order. An explicit endpoint (setting or environment) is the only
/// candidate. Otherwise: the rootless Podman socket (when root: that of `rootless_uid`, so
/// builds never run as root on the host), system Podman, Docker.
pub fn candidates(
    settings: &EngineSettings,
    env: &dyn Fn(&str) -> Option<String>,
    uid: u32,
    rootless_uid: Option<u32>,
) -> Vec<Endpoint> {
    let explicit = settings
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .map(|h| (h, Origin::Setting))
        .or_else(|| HOST_VARS.iter().find_map(|v| env(v).filter(|h| !h.is_empty()).map(|h| (h, Origin::Env(v)))));
    if let Some((host, origin)) = explicit {
        return vec![Endpoint { host: normalize(&host), origin }];
    }
    let mut out = Vec::new();
    let rootless = if uid == 0 {
        rootless_uid.map(|u| format!("/run/user/{u}/podman/podman.sock"))
    } else {
        Some(match env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => format!("{}/podman/podman.sock", dir.trim_end_matches('/')),
            None => format!("/run/user/{uid}/podman/podman.sock"),
        })
    };
    if let Some(path) = rootless {
        out.push(Endpoint { host: format!("unix://{path}"), origin: Origin::RootlessPodman });
    }
    out.push(Endpoint { host: "unix:///run/podman/podman.sock".into(), origin: Origin::SystemPodman });
    out.push(Endpoint { host: "unix:///var/run/docker.sock".into(), origin: Origin::Docker });
    out
}

/// A bare socket path means unix://.
fn normalize(host: &str) -> String {
    if host.starts_with('/') {
        format!("unix://{host}")
    } else {
        host.to_string()
    }
}

/// A user from the passwd database.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks `name` up in /etc/passwd (ckms's service user is a local account).
pub fn lookup_user(name: &str) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(User {
            name: name.to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    })
}

/// A `podman` executable on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// An engine to use, and the private service behind it if ckms started one.
pub struct Connection {
    pub engine: std::sync::Arc<dyn super::Engine>,
    pub info: EngineInfo,
    /// The Docker-API client behind `engine`, for checks only it can make (`doctor`).
    docker: Option<DockerApi>,
    service: Option<PrivateService>,
}

impl Connection {
    /// A connection to an engine ckms did not discover (one that replays runs made elsewhere).
    pub fn of(engine: std::sync::Arc<dyn super::Engine>, info: EngineInfo) -> Connection {
        Connection { engine, info, docker: None, service: None }
    }

    pub fn docker(&self) -> Option<&DockerApi> {
        self.docker.as_ref()
    }

    /// What a build on this engine goes without: memory, pids and CPU limits on rootless
    /// Podman with cgroup v1 (said by the commands that run containers, once).
    pub fn limits_warning(&self) -> Option<String> {
        let docker = self.docker.as_ref()?;
        (!docker.caps().cgroup_limits).then(|| {
            format!(
                "{} {} cannot enforce memory, pids or CPU limits (rootless on cgroup v1): builds run without \
                 them, with only a process-count rlimit against fork bombs",
                self.info.kind, self.info.endpoint
            )
        })
    }

    /// Whether ckms started the engine itself (it stops when this is dropped).
    pub fn is_private(&self) -> bool {
        self.service.is_some()
    }
}

/// Finds an engine as described in [`candidates`], else starts a private rootless Podman.
pub async fn connect(settings: &EngineSettings, report: &dyn Reporter) -> Result<Connection, EngineError> {
    let uid = rustix::process::getuid().as_raw();
    let user = (uid == 0).then(|| lookup_user(settings.rootless_user())).flatten();
    let env = |k: &str| std::env::var(k).ok();
    let cands = candidates(settings, &env, uid, user.as_ref().map(|u| u.uid));
    let explicit = cands.iter().any(|c| c.origin.is_explicit());
    let mut tried = Vec::new();
    for c in &cands {
        let timeout = if c.origin.is_explicit() { EXPLICIT_TIMEOUT } else { PROBE_TIMEOUT };
        match DockerApi::connect(&c.host, timeout).await {
            Ok(engine) => return Ok(connected(engine, None, report)),
            Err(why) => tried.push((c.host.clone(), why)),
        }
    }
    if explicit {
        return Err(EngineError::NoEngine { tried, explicit });
    }
    match start_private(settings, report).await {
        Err(EngineError::NoEngine { tried: more, .. }) => {
            tried.extend(more);
            Err(EngineError::NoEngine { tried, explicit })
        }
        other => other,
    }
}

/// Starts a private rootless `podman system service` (as `rootless_user` when root) without
/// probing the usual sockets; it is stopped when the returned [`Connection`] drops.
pub async fn start_private(settings: &EngineSettings, report: &dyn Reporter) -> Result<Connection, EngineError> {
    let uid = rustix::process::getuid().as_raw();
    let Some(podman) = find_on_path("podman") else {
        let tried = vec![("private podman service".into(), "no podman on PATH".into())];
        return Err(EngineError::NoEngine { tried, explicit: false });
    };
    let run_as = if uid == 0 {
        let name = settings.rootless_user();
        Some(lookup_user(name).ok_or_else(|| EngineError::NoRootlessUser { user: name.to_string() })?)
    } else {
        None
    };
    report.detail(format!(
        "no container engine answered; starting a private rootless podman service{}",
        run_as.as_ref().map(|u| format!(" as {}", u.name)).unwrap_or_default()
    ));
    let (service, engine) = PrivateService::start(&podman, run_as.as_ref()).await?;
    Ok(connected(engine, Some(service), report))
}

fn connected(engine: DockerApi, service: Option<PrivateService>, report: &dyn Reporter) -> Connection {
    let info = engine.info_cached();
    // Once: a command may connect more than once (the farm's plan, then its builds).
    report.once(Event::Detail {
        message: format!(
            "using {} {} ({}) at {}",
            info.kind,
            info.version,
            if info.rootless { "rootless" } else { "rootful" },
            info.endpoint
        ),
    });
    Connection { engine: std::sync::Arc::new(engine.clone()), info, docker: Some(engine), service }
}

/// `podman system service` started by ckms; stopped (SIGTERM, then SIGKILL) on drop.
struct PrivateService {
    child: std::process::Child,
    dir: PathBuf,
}

impl PrivateService {
    async fn start(podman: &Path, run_as: Option<&User>) -> Result<(PrivateService, DockerApi), EngineError> {
        let fail = |detail: String| EngineError::ServiceStart { detail };
        // The runtime dir podman keeps its state in: the user's usual one, so a service started
        // later by the user shares state with this one.
        let runtime_dir = match run_as {
            Some(u) => PathBuf::from(format!("/run/user/{}", u.uid)),
            None => std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", rustix::process::getuid().as_raw()))),
        };
        let dir = runtime_dir.join(format!("ckms-{}", std::process::id()));
        let mk = |p: &Path| -> std::io::Result<()> {
            std::fs::create_dir_all(p)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
            if let Some(u) = run_as {
                rustix::fs::chown(p, Some(rustix::fs::Uid::from_raw(u.uid)), Some(rustix::fs::Gid::from_raw(u.gid)))?;
            }
            Ok(())
        };
        if !runtime_dir.exists() {
            mk(&runtime_dir).map_err(|e| fail(format!("cannot create {}: {e}", runtime_dir.display())))?;
        }
        mk(&dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let sock = dir.join("podman.sock");
        let log_path = dir.join("service.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| fail(format!("cannot create {}: {e}", log_path.display())))?;

        // setpriv execs podman directly (no intermediate process to forward signals) and
        // --pdeathsig stops the service should ckms die without dropping the Connection.
        let setpriv = find_on_path("setpriv");
        let mut cmd = match (&setpriv, run_as) {
            (Some(sp), _) => {
                let mut c = std::process::Command::new(sp);
                if let Some(u) = run_as {
                    c.args(["--reuid", &u.uid.to_string(), "--regid", &u.gid.to_string(), "--init-groups"]);
                }
                c.args(["--pdeathsig", "TERM", "--"]).arg(podman);
                c
            }
            (None, Some(u)) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", &u.name, "--"]).arg(podman);
                c
            }
            (None, None) => std::process::Command::new(podman),
        };
        if let Some(u) = run_as {
            cmd.env("HOME", &u.home).env("USER", &u.name).env("LOGNAME", &u.name);
        }
        cmd.env("XDG_RUNTIME_DIR", &runtime_dir)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|e| fail(format!("cannot run {}: {e}", podman.display())))?;
        let mut service = PrivateService { child, dir };
        let endpoint = format!("unix://{}", sock.display());
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < SERVICE_START_TIMEOUT {
            if let Ok(Some(status)) = service.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(fail(format!("podman exited ({status}): {}", log.trim())));
            }
            match DockerApi::connect(&endpoint, Duration::from_secs(2)).await {
                Ok(engine) => return Ok((service, engine)),
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Err(fail(format!(
            "{endpoint} did not answer within {} s ({last}); its log: {}",
            SERVICE_START_TIMEOUT.as_secs(),
            log.trim()
        )))
    }
}

impl Drop for PrivateService {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn hosts(c: &[Endpoint]) -> Vec<&str> {
        c.iter().map(|e| e.host.as_str()).collect()
    }

    #[test]
    fn setting_beats_environment_and_is_alone() {
        let s = EngineSettings { host: Some("unix:///a.sock".into()), rootless_user: None };
        let c = candidates(&s, &env_of(&[("CKMS_ENGINE_HOST", "unix:///b.sock")]), 1000, None);
        assert_eq!(c, vec![Endpoint { host: "unix:///a.sock".into(), origin: Origin::Setting }]);
        assert!(c[0].origin.is_explicit());
    }

    #[test]
    fn environment_precedence() {
        let s = EngineSettings::default();
        let all = [("CKMS_ENGINE_HOST", "unix:///c"), ("DOCKER_HOST", "unix:///d"), ("CONTAINER_HOST", "unix:///p")];
        let c = candidates(&s, &env_of(&all), 1000, None);
        assert_eq!(c, vec![Endpoint { host: "unix:///c".into(), origin: Origin::Env("CKMS_ENGINE_HOST") }]);
        let c = candidates(&s, &env_of(&all[1..]), 1000, None);
        assert_eq!(c, vec![Endpoint { host: "unix:///d".into(), origin: Origin::Env("DOCKER_HOST") }]);
        let c = candidates(&s, &env_of(&all[2..]), 1000, None);
        assert_eq!(c, vec![Endpoint { host: "unix:///p".into(), origin: Origin::Env("CONTAINER_HOST") }]);
        // Empty values count as unset.
        let c = candidates(&s, &env_of(&[("CKMS_ENGINE_HOST", ""), ("DOCKER_HOST", "tcp://h:2375")]), 1000, None);
        assert_eq!(hosts(&c), ["tcp://h:2375"]);
    }

    #[test]
    fn bare_paths_become_unix_urls() {
        let s = EngineSettings { host: Some("/run/x.sock".into()), rootless_user: None };
        assert_eq!(hosts(&candidates(&s, &env_of(&[]), 1000, None)), ["unix:///run/x.sock"]);
    }

    #[test]
    fn non_root_order_uses_xdg_runtime_dir() {
        let c = candidates(
            &EngineSettings::default(),
            &env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000/")]),
            1000,
            Some(1001),
        );
        assert_eq!(
            hosts(&c),
            [
                "unix:///run/user/1000/podman/podman.sock",
                "unix:///run/podman/podman.sock",
                "unix:///var/run/docker.sock"
            ]
        );
        assert!(c.iter().all(|e| !e.origin.is_explicit()));
    }

    #[test]
    fn non_root_without_xdg_uses_run_user() {
        let c = candidates(&EngineSettings::default(), &env_of(&[]), 1234, None);
        assert_eq!(hosts(&c)[0], "unix:///run/user/1234/podman/podman.sock");
        assert_eq!(c[0].origin, Origin::RootlessPodman);
    }

    #[test]
    fn root_prefers_the_rootless_users_socket() {
        // Root's own XDG_RUNTIME_DIR is ignored: builds must not run in root's engine first.
        let c = candidates(&EngineSettings::default(), &env_of(&[("XDG_RUNTIME_DIR", "/run/user/0")]), 0, Some(1001));
        assert_eq!(
            hosts(&c),
            [
                "unix:///run/user/1001/podman/podman.sock",
                "unix:///run/podman/podman.sock",
                "unix:///var/run/docker.sock"
            ]
        );
    }

    #[test]
    fn root_without_rootless_user_skips_rootless_socket() {
        let c = candidates(&EngineSettings::default(), &env_of(&[]), 0, None);
        assert_eq!(hosts(&c), ["unix:///run/podman/podman.sock", "unix:///var/run/docker.sock"]);
    }

    #[test]
    fn rootless_user_default() {
        assert_eq!(EngineSettings::default().rootless_user(), "ckms");
        let s = EngineSettings { host: None, rootless_user: Some("builder".into()) };
        assert_eq!(s.rootless_user(), "builder");
    }

    #[test]
    fn lookup_root() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup_user("no-such-user-ckms-test").is_none());
    }
}
