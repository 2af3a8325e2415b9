//! A fake Kubernetes API server on loopback with a "kubelet" behind it: it takes Jobs in one
//! namespace (create, get, delete, as the follow pod's Role allows), and runs each created
//! Job's pods with a local engine exactly as written (tests/support/kube_pods.rs), beside the
//! deny-all NetworkPolicy and the results claim follow-render writes. A Job is reported
//! Complete once every pod succeeded, Failed otherwise. Any other request is answered 403,
//! as RBAC would.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube_pods::{run_rendered, Cli, PodRun};

#[derive(Default)]
struct State {
    /// Every request, as `METHOD PATH`.
    calls: Vec<String>,
    /// Each Job as created, and once its pods ran: whether all succeeded.
    jobs: BTreeMap<String, (Value, Option<bool>)>,
    pods: Vec<PodRun>,
}

pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// The objects a Job's pods run beside (as follow-render writes them): the deny-all policy
/// and the results claim.
pub type Beside = Vec<(String, Value)>;

impl FakeApi {
    /// Serves namespace `ns`; the kubelet runs pods with `cli`, the claims mapped to host
    /// directories by `claims`, in directories under `work`.
    pub fn start(ns: &str, cli: Cli, claims: HashMap<String, PathBuf>, beside: Beside, work: &Path) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared =
            Arc::new((cli, claims, beside, work.to_path_buf(), format!("/apis/batch/v1/namespaces/{ns}/jobs")));
        let st = state.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let (st, shared) = (st.clone(), shared.clone());
                std::thread::spawn(move || serve(sock, &st, &shared));
            }
        });
        FakeApi { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn pods(&self) -> Vec<PodRun> {
        self.state.lock().unwrap().pods.clone()
    }

    /// The Jobs still there (not deleted).
    pub fn jobs(&self) -> Vec<String> {
        self.state.lock().unwrap().jobs.keys().cloned().collect()
    }
}

type Shared = (Cli, HashMap<String, PathBuf>, Beside, PathBuf, String);

fn serve(mut sock: TcpStream, state: &Arc<Mutex<State>>, shared: &Arc<Shared>) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while req.len() < head_end + length {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = &req[head_end..head_end + length];
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or_default().to_string(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default().to_string();
    state.lock().unwrap().calls.push(format!("{method} {path}"));
    let jobs = &shared.4;
    let name = path.strip_prefix(&format!("{jobs}/")).map(str::to_string);
    let (code, answer) = match (method.as_str(), name) {
        ("POST", None) if path == *jobs => create(body, state, shared),
        ("GET", Some(n)) => match state.lock().unwrap().jobs.get(&n) {
            Some((job, done)) => (200, with_status(job, *done)),
            None => (404, json!({"kind": "Status", "message": format!("jobs.batch \"{n}\" not found")})),
        },
        ("DELETE", Some(n)) => match state.lock().unwrap().jobs.remove(&n) {
            Some(_) => (200, json!({"kind": "Status", "status": "Success"})),
            None => (404, json!({"kind": "Status", "message": "not found"})),
        },
        _ => (403, json!({"kind": "Status", "message": format!("{method} {path} is forbidden")})),
    };
    let text = answer.to_string();
    let reason = if code < 300 { "OK" } else { "Error" };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(resp.as_bytes());
}

fn create(body: &[u8], state: &Arc<Mutex<State>>, shared: &Arc<Shared>) -> (u16, Value) {
    let job: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return (400, json!({"kind": "Status", "message": e.to_string()})),
    };
    let name = job["metadata"]["name"].as_str().unwrap_or_default().to_string();
    {
        let mut s = state.lock().unwrap();
        if s.jobs.contains_key(&name) {
            return (409, json!({"kind": "Status", "message": "already exists"}));
        }
        s.jobs.insert(name.clone(), (job.clone(), None));
    }
    // The kubelet: the Job's pods, as written, in a directory of their own.
    let (state, shared) = (state.clone(), shared.clone());
    let created = job.clone();
    std::thread::spawn(move || {
        let (cli, claims, beside, work, _) = &*shared;
        let dir = work.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, v) in beside.iter().chain([(format!("job-{name}.yaml"), job)].iter()) {
            std::fs::write(dir.join(file), serde_json::to_string_pretty(v).unwrap()).unwrap();
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_rendered(&dir, cli, claims)));
        let mut s = state.lock().unwrap();
        let ok = match ran {
            Ok(pods) => {
                let ok = pods.iter().all(|p| p.exit_code == 0 && !p.timed_out);
                s.pods.extend(pods);
                ok
            }
            Err(_) => false,
        };
        if let Some(entry) = s.jobs.get_mut(&name) {
            entry.1 = Some(ok);
        }
    });
    (201, created)
}

fn with_status(job: &Value, done: Option<bool>) -> Value {
    let mut v = job.clone();
    v["status"] = match done {
        None => json!({"active": 1}),
        Some(ok) => json!({"conditions": [{"type": if ok { "Complete" } else { "Failed" }, "status": "True"}]}),
    };
    v
}
