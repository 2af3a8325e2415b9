//! Runs the Indexed Jobs of a directory of rendered Kubernetes manifests the way their pods
//! would run, with a local engine's CLI instead of a cluster (none can run here): the same
//! image pulled from its registry, the same command and environment, every index
//! 0..completions with `parallelism` pods at a time, the security settings as engine flags,
//! the volumes as host directories. Anything it cannot map faithfully panics: a field it
//! does not know is never skipped.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub use crate::kube_pods_plan::expand;
use crate::kube_pods_plan::*;

/// The engine's CLI: podman `podman --remote --url URL ...`, docker `docker -H HOST ...`.
pub enum Cli {
    Podman { url: String },
    Docker { host: String },
}

/// One pod of one Job, as it ran.
#[derive(Debug, Clone)]
pub struct PodRun {
    pub job: String,
    pub index: u32,
    pub exit_code: i32,
    pub timed_out: bool,
    /// What the harness could not enforce on this engine (one `kube_pods:` line each), then
    /// the container's stdout and stderr as they came.
    pub log: String,
}

/// Runs every Indexed Job in `dir` as its pods would run: each index 0..completions,
/// `parallelism` at a time; `claims` maps a persistentVolumeClaim's claimName to the host
/// directory standing for it. The Jobs share one cluster whose room is the largest
/// `parallelism` of them (as many pods at once): the lowest pending index of the first Job
/// (in file order) that is under its own `parallelism` starts whenever a pod ends.
pub fn run_rendered(dir: &Path, cli: &Cli, claims: &HashMap<String, PathBuf>) -> Vec<PodRun> {
    let objects = load(dir);
    let policies: Vec<&Obj> = objects.iter().filter(|o| o.kind == "NetworkPolicy").collect();
    let pvcs: HashSet<(String, String)> = objects
        .iter()
        .filter(|o| o.kind == "PersistentVolumeClaim")
        .map(|o| (o.namespace.clone(), o.name.clone()))
        .collect();
    // Every pod is planned (and refused) before any runs.
    let jobs: Vec<Job> =
        objects.iter().filter(|o| o.kind == "Job").map(|o| plan_job(o, &policies, &pvcs, claims)).collect();
    assert!(!jobs.is_empty(), "no Job in {}", dir.display());

    let engine = Engine::probe(cli);
    let mut pulled = HashSet::new();
    for job in &jobs {
        if pulled.insert(job.pod.image.clone()) {
            engine.pull(&job.pod.image);
        }
    }
    run_jobs(&engine, &jobs)
}

/// The debug binary without its debug sections: what the pods run (a tenth of the size).
pub fn pod_binary(dir: &Path) -> PathBuf {
    let out = dir.join("ckms");
    let status = Command::new("objcopy")
        .args(["--strip-debug", env!("CARGO_BIN_EXE_ckms")])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("objcopy is needed by this test (apt-get install binutils): {e}"));
    assert!(status.success(), "objcopy --strip-debug failed");
    out
}

// ---------------------------------------------------------------------------------------
// Running

/// The CLI and what its engine can enforce.
struct Engine<'a> {
    cli: &'a Cli,
    memory_limits: bool,
    cpu_limits: bool,
}

impl<'a> Engine<'a> {
    fn probe(cli: &'a Cli) -> Engine<'a> {
        match cli {
            Cli::Podman { .. } => {
                let info = self::json(cli, &["info", "--format", "json"]);
                let controllers: Vec<&str> =
                    info["host"]["cgroupControllers"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
                assert_eq!(info["host"]["security"]["seccompEnabled"], true, "podman runs without seccomp");
                Engine { cli, memory_limits: controllers.contains(&"memory"), cpu_limits: controllers.contains(&"cpu") }
            }
            Cli::Docker { .. } => {
                let info = self::json(cli, &["info", "--format", "{{json .}}"]);
                let seccomp = info["SecurityOptions"].as_array().unwrap().iter().any(|o| {
                    o.as_str().unwrap_or_default().starts_with("name=seccomp")
                        && !o.as_str().unwrap_or_default().contains("profile=unconfined")
                });
                assert!(seccomp, "docker runs without seccomp: {}", info["SecurityOptions"]);
                Engine { cli, memory_limits: info["MemoryLimit"] == true, cpu_limits: info["CpuCfsQuota"] == true }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self.cli {
            Cli::Podman { .. } => "podman",
            Cli::Docker { .. } => "docker",
        }
    }

    fn pull(&self, image: &str) {
        let args: &[&str] = match self.cli {
            Cli::Podman { .. } => &["pull", "--tls-verify=false", image],
            // Docker takes registries on 127.0.0.0/8 as insecure by itself.
            Cli::Docker { .. } => &["pull", image],
        };
        let out = command(self.cli).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} pull {image} failed: {}{}",
            self.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Removes the images the Jobs of `dir` ran (pulled by [`run_rendered`]): a test leaves the
/// engine's storage as it found it.
pub fn remove_images(dir: &Path, cli: &Cli) {
    let images: HashSet<String> = load(dir)
        .iter()
        .filter(|o| o.kind == "Job")
        .filter_map(|o| o.value["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(String::from))
        .collect();
    for image in images {
        let _ = command(cli).args(["rmi", "-f", &image]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn command(cli: &Cli) -> Command {
    let mut cmd = match cli {
        Cli::Podman { url } => {
            let mut c = Command::new("podman");
            c.args(["--remote", "--url", url]);
            c
        }
        Cli::Docker { host } => {
            let mut c = Command::new("docker");
            c.args(["-H", host]);
            c
        }
    };
    cmd.stdin(Stdio::null());
    cmd
}

fn json(cli: &Cli, args: &[&str]) -> Value {
    let out = command(cli).args(args).output().unwrap_or_else(|e| panic!("cannot run the engine CLI: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON: {e}"))
}

fn run_jobs(engine: &Engine, jobs: &[Job]) -> Vec<PodRun> {
    let room = jobs.iter().map(|j| j.parallelism).max().unwrap_or(1);
    // Per Job: the next index to start, and its pods running.
    let state = Mutex::new((vec![0u32; jobs.len()], vec![0u32; jobs.len()]));
    let ended = Condvar::new();
    let runs = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..room {
            s.spawn(|| loop {
                let picked = {
                    let mut st = state.lock().unwrap();
                    loop {
                        let (next, running) = &mut *st;
                        if (0..jobs.len()).all(|j| next[j] >= jobs[j].completions) {
                            break None;
                        }
                        let free = (0..jobs.len())
                            .find(|&j| next[j] < jobs[j].completions && running[j] < jobs[j].parallelism);
                        if let Some(j) = free {
                            next[j] += 1;
                            running[j] += 1;
                            break Some((j, next[j] - 1));
                        }
                        st = ended.wait(st).unwrap();
                    }
                };
                let Some((j, index)) = picked else { break };
                let job = &jobs[j];
                // A failed pod is replaced (same index) until the index's budget is spent.
                let mut run = run_pod(engine, job, index);
                for _ in 0..job.retries {
                    if run.exit_code == 0 && !run.timed_out {
                        break;
                    }
                    run = run_pod(engine, job, index);
                }
                runs.lock().unwrap().push((j, run));
                state.lock().unwrap().1[j] -= 1;
                ended.notify_all();
            });
        }
    });
    let mut runs = runs.into_inner().unwrap();
    runs.sort_by_key(|(j, r)| (*j, r.index));
    runs.into_iter().map(|(_, r)| r).collect()
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

fn run_pod(engine: &Engine, job: &Job, index: u32) -> PodRun {
    let pod = &job.pod;
    let name =
        format!("kube-pods-{}-{}-{}-{}", job.name, index, std::process::id(), SERIAL.fetch_add(1, Ordering::SeqCst));
    let mut notes = pod.notes.clone();

    let mut env: Vec<(String, String)> = Vec::new();
    for var in &pod.env {
        let (k, v) = match var {
            EnvVar::Value(k, v) => (k.clone(), expand(v, &env)),
            EnvVar::Index(k) => (k.clone(), index.to_string()),
        };
        env.push((k, v));
    }

    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--name".into(), name.clone()];
    // A pod's hostname is its name: <job>-<index>-<random>.
    args.extend(["--hostname".into(), format!("{}-{index}-kpods", job.name).chars().take(63).collect()]);
    // The NetworkPolicy (checked when planning) denies everything.
    args.extend(["--network".into(), "none".into()]);
    if pod.read_only {
        args.push("--read-only".into());
        if let Cli::Podman { .. } = engine.cli {
            // Podman would otherwise mount writable tmpfs on /tmp, /var/tmp and /run.
            args.push("--read-only-tmpfs=false".into());
        }
    }
    if pod.cap_drop_all {
        args.extend(["--cap-drop".into(), "ALL".into()]);
    }
    if pod.no_new_privileges {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    args.extend(["--user".into(), pod.user.clone()]);
    for g in &pod.groups {
        args.extend(["--group-add".into(), g.to_string()]);
    }
    if let Some(m) = pod.memory {
        if engine.memory_limits {
            args.extend(["--memory".into(), m.to_string()]);
        } else {
            notes.push(format!(
                "kube_pods: limits.memory {m} bytes not enforced: {} here has no memory cgroup controller",
                engine.name()
            ));
        }
    }
    if let Some(c) = &pod.cpus {
        if engine.cpu_limits {
            args.extend(["--cpus".into(), c.clone()]);
        } else {
            notes.push(format!(
                "kube_pods: limits.cpu {c} not enforced: {} here has no cpu cgroup controller",
                engine.name()
            ));
        }
    }
    if let Some(w) = &pod.workdir {
        args.extend(["--workdir".into(), w.clone()]);
    }
    for (k, v) in &env {
        args.extend(["--env".into(), format!("{k}={v}")]);
    }

    // Host directories live as long as the pod (an emptyDir's life), the claims beyond it.
    let mut scratch = Vec::new();
    for m in &pod.mounts {
        let sub = m.sub_path.as_ref().map(|s| match s {
            SubPath::Plain(p) => p.clone(),
            SubPath::Expr(e) => expand(e, &env),
        });
        if let Some(s) = &sub {
            assert!(
                !s.starts_with('/') && !s.split('/').any(|c| c == ".."),
                "Job {}: subPath {s:?} leaves its volume (the kubelet refuses it)",
                job.name
            );
        }
        let host = match &m.source {
            Source::Tmpfs(size) => {
                let mut opt = format!("{}:rw", m.path);
                match size {
                    Some(b) => opt.push_str(&format!(",size={b}")),
                    None => notes.push(format!(
                        "kube_pods: memory emptyDir at {}: no sizeLimit nor memory limit, the engine's default tmpfs size applies",
                        m.path
                    )),
                }
                opt.push_str(",mode=1777");
                args.extend(["--tmpfs".into(), opt]);
                continue;
            }
            Source::Dir => {
                let dir = tempfile::Builder::new().prefix("kube-pods-emptydir-").tempdir().unwrap();
                world_writable(dir.path());
                let p = dir.path().to_path_buf();
                scratch.push(dir);
                p
            }
            Source::Claim(root) => root.clone(),
        };
        let host = match &sub {
            Some(s) => {
                let mut p = host.clone();
                // Every level the kubelet creates is world-writable, like the volume.
                for part in s.split('/').filter(|c| !c.is_empty() && *c != ".") {
                    p.push(part);
                    // Pods of one Job start at once and share the levels above their own.
                    match std::fs::create_dir(&p) {
                        Ok(()) => world_writable(&p),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => panic!("creating {}: {e}", p.display()),
                    }
                }
                p
            }
            None => host,
        };
        let host_s = host.to_str().unwrap();
        assert!(!host_s.contains(':'), "{host_s}: a host path with ':' cannot be given to -v");
        args.extend(["--volume".into(), format!("{host_s}:{}{}", m.path, if m.read_only { ":ro" } else { "" })]);
    }

    // Kubernetes expands $(VAR) in command and args against the container's environment.
    if let Some(e) = &pod.entrypoint {
        args.extend(["--entrypoint".into(), expand(e, &env)]);
    }
    args.push(pod.image.clone());
    args.extend(pod.args.iter().map(|a| expand(a, &env)));

    let log_file = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = command(engine.cli)
        .args(&args)
        .stdout(log_file.reopen().unwrap())
        .stderr(log_file.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", engine.name()));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Some(d) = pod.deadline {
            if !timed_out && started.elapsed() >= d {
                timed_out = true;
                // As the kubelet does past activeDeadlineSeconds: SIGTERM, SIGKILL after the grace.
                let _ = command(engine.cli)
                    .args(["stop", "--time", &pod.grace.to_string(), &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Also when the CLI died before its --rm did.
    let _ = command(engine.cli).args(["rm", "-f", &name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    drop(scratch);
    let mut log = String::new();
    for n in notes {
        log.push_str(&n);
        log.push('\n');
    }
    log.push_str(&String::from_utf8_lossy(&std::fs::read(log_file.path()).unwrap()));
    PodRun { job: job.name.clone(), index, exit_code: status.code().unwrap_or(-1), timed_out, log }
}

fn world_writable(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod 0777 {}: {e}", p.display()));
}
