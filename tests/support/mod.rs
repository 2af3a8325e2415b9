//! Helpers for integration tests that drive the `ckms` binary: running it with a clean
//! environment, the shared download cache, looking at what a run left in a cache, a tiny
//! local HTTP server and a size-limited tmpfs.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Whether this host runs the unified cgroup hierarchy (v2, Debian's default since 11): then
/// rootless containers get memory, pids and CPU limits; on v1 rootless Podman gets none, and
/// ckms says so instead. Tests assert what must happen on the host they run on.
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The endpoint of the engine under test, from `var`. Unset is a failure, never a skip.
pub fn engine_host(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: it must name the engine under test (ci/setup-engines.sh starts them; \
             e.g. CKMS_TEST_PODMAN_HOST=unix:///run/user/1001/podman/podman.sock, \
             CKMS_TEST_DOCKER_HOST=unix:///var/run/docker.sock)"
        ),
    }
}

/// A scenario that measures the disk holds this alone; the other scenarios of its test binary
/// hold it shared, so that their writes (a machine tree, another kernel's image) do not count.
static DISK: RwLock<()> = RwLock::new(());

pub fn disk_shared() -> RwLockReadGuard<'static, ()> {
    DISK.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn disk_alone() -> RwLockWriteGuard<'static, ()> {
    DISK.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cache shared by the whole test run (`$CKMS_TEST_CACHE`, else `target/ckms-test-cache`),
/// so that real downloads happen once per run.
pub fn shared_cache() -> PathBuf {
    let dir = std::env::var_os("CKMS_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ckms-test-cache"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating the shared test cache {}: {e}", dir.display()));
    dir
}

static SHARED_CACHE: Mutex<()> = Mutex::new(());

/// Held by the tests of one test binary that look at (or damage) the shared cache, so that
/// "nothing new appeared" checks are not confused by a concurrent test's downloads.
pub fn shared_cache_lock() -> MutexGuard<'static, ()> {
    SHARED_CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One invocation of the `ckms` binary, isolated from the caller's ckms settings: every
/// `CKMS_*`, `DOCKER_HOST` and `CONTAINER_HOST` variable is removed, and the configuration
/// file is one that does not exist (so /etc/ckms and ~/.config/ckms are not read), nor is
/// dkms's signing key pair.
pub struct Ckms {
    cmd: Command,
    envs: Vec<String>,
    shown: Vec<String>,
}

pub fn ckms<I, S>(args: I) -> Ckms
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    invocation(Path::new(env!("CARGO_BIN_EXE_ckms")), "ckms", args)
}

/// The binary called as `dkms` (through a link `<dir>/dkms`, made if missing), as the Debian
/// package installs it.
pub fn dkms<I, S>(dir: &Path, args: I) -> Ckms
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let link = dir.join("dkms");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ckms"), &link).expect("linking dkms to ckms");
    }
    invocation(&link, "dkms", args)
}

fn invocation<I, S>(program: &Path, name: &str, args: I) -> Ckms
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CKMS_") || k == "DOCKER_HOST" || k == "CONTAINER_HOST" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CKMS_CONFIG", "/nonexistent/ckms-test/config.toml");
    // Nor dkms's signing key of the machine: builds sign with the pair of the test's own tree.
    cmd.env("CKMS_DKMS_MOK_DIR", "/nonexistent/ckms-test/dkms");
    // The repository's profiles, not those of a ckms package installed on the machine.
    cmd.env("CKMS_DATA_DIR", env!("CARGO_MANIFEST_DIR"));
    let mut shown = vec![name.to_string()];
    for a in args {
        cmd.arg(a.as_ref());
        shown.push(a.as_ref().to_string());
    }
    Ckms { cmd, envs: Vec::new(), shown }
}

impl Ckms {
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.envs.push(format!("{key}={}", value.as_ref().to_string_lossy()));
        self.cmd.env(key, value);
        self
    }

    /// Runs it in `dir` (relative paths in its arguments are taken from there).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.shown.insert(0, format!("cd {} &&", dir.display()));
        self.cmd.current_dir(dir);
        self
    }

    /// Starts it with stdout piped (to be read as it runs, and killed).
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.shown.join(" ")))
    }

    /// Starts it with its stdout and stderr going to `log`.
    pub fn spawn_logged(mut self, log: &Path) -> std::process::Child {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        self.cmd.stdout(file.try_clone().unwrap()).stderr(file);
        self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.shown.join(" ")))
    }

    pub fn run(self) -> Outcome {
        self.start().wait()
    }

    /// Starts it with its output captured and no stdin, as `run` does, without waiting.
    pub fn start(mut self) -> Running {
        let command = self.envs.iter().chain(&self.shown).cloned().collect::<Vec<_>>().join(" ");
        use std::process::Stdio;
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        Running { child, command }
    }
}

/// A ckms started by [`Ckms::start`].
pub struct Running {
    child: std::process::Child,
    command: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit code, or None when a signal ended it.
    pub fn wait_status(mut self) -> Option<i32> {
        self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.command)).code()
    }

    pub fn wait(self) -> Outcome {
        let command = self.command;
        let out = self.child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {command}: {e}"));
        let code = out.status.code().unwrap_or_else(|| panic!("{command} was killed: {:?}", out.status));
        Outcome {
            command,
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What one run of ckms did.
pub struct Outcome {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n$ {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

impl Outcome {
    /// Panics (showing the run) unless ckms exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit code {code}{self}");
        self
    }

    /// The error message: from `Error! ` up to (not including) the hint line.
    pub fn error_message(&self) -> String {
        let start =
            self.stderr.find("Error! ").unwrap_or_else(|| panic!("no `Error! <message>` line on stderr{self}")) + 7;
        let rest = &self.stderr[start..];
        let lines: Vec<&str> = rest.trim_end().lines().collect();
        assert!(lines.len() >= 2, "no hint line after the error message{self}");
        lines[..lines.len() - 1].join("\n")
    }

    /// The hint: the last line of stderr, after the error message.
    pub fn hint(&self) -> String {
        let _ = self.error_message();
        self.stderr.trim_end().lines().last().unwrap_or_default().to_string()
    }

    /// The `result` document of a `--json` run.
    pub fn json_result(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "result")
            .map(|mut v| v["result"].take())
            .unwrap_or_else(|| panic!("no JSON result line on stdout{self}"))
    }
}

/// File names directly under `dir` (empty when `dir` does not exist), sorted.
pub fn entries(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.map(|e| e.expect("reading a directory entry").file_name().to_string_lossy().into_owned()).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("listing {}: {e}", dir.display()),
    }
}

/// The blobs of a cache (`blobs/sha256/*`).
pub fn blobs(cache: &Path) -> BTreeSet<String> {
    entries(&cache.join("blobs/sha256"))
}

/// Panics unless the cache's `tmp/` holds nothing: no half-written file was left behind.
pub fn assert_tmp_empty(cache: &Path, run: &Outcome) {
    let left = entries(&cache.join("tmp"));
    assert!(left.is_empty(), "{}/tmp should be empty but holds {left:?}{run}", cache.display());
}

/// Panics unless every blob of the cache hashes to its name (nothing half-written stored).
pub fn assert_blobs_intact(cache: &Path, run: &Outcome) {
    for name in blobs(cache) {
        let actual = sha256_file(&cache.join("blobs/sha256").join(&name));
        assert_eq!(actual, name, "blob {name} in {} does not hash to its name{run}", cache.display());
    }
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Flips `len` bytes in the middle of `path`, keeping its size.
pub fn corrupt(path: &Path, len: usize) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} to corrupt it: {e}", path.display()));
    let size = f.metadata().unwrap().len();
    assert!(size >= len as u64, "{} is too small ({size} bytes) to corrupt", path.display());
    let at = (size - len as u64) / 2;
    let mut bytes = vec![0u8; len];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut bytes).unwrap();
    for b in &mut bytes {
        *b ^= 0xff;
    }
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&bytes).unwrap_or_else(|e| panic!("corrupting {}: {e}", path.display()));
    f.sync_all().unwrap();
}

/// A request as [`HttpServer`] hands it to its handler: the path and the headers (names in
/// lower case).
pub struct Request {
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// What a handler answers: the status line's code and reason, extra headers, the body.
pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(body: Vec<u8>) -> Response {
        Response { status: "200 OK", headers: Vec::new(), body }
    }

    pub fn not_found() -> Response {
        Response { status: "404 Not Found", headers: Vec::new(), body: Vec::new() }
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (ephemeral port), one connection at a time: `files`
/// by path and 404 for anything else ([`HttpServer::start`]), or whatever a handler answers
/// ([`HttpServer::serve`]). It stops (and its thread is joined) on drop.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(files: HashMap<String, Vec<u8>>) -> HttpServer {
        HttpServer::serve(move |req| files.get(&req.path).map_or_else(Response::not_found, |b| Response::ok(b.clone())))
    }

    pub fn serve(handler: impl Fn(&Request) -> Response + Send + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a local HTTP server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, requests2, sent2) = (stop.clone(), requests.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(sock) = conn {
                    serve_one(sock, &handler, &requests2, &sent2);
                }
            }
        });
        HttpServer { addr, stop, requests, sent, thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The bytes sent so far (status lines, headers and bodies).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

fn serve_one(
    mut sock: TcpStream,
    handler: &dyn Fn(&Request) -> Response,
    requests: &Mutex<Vec<String>>,
    sent: &std::sync::atomic::AtomicU64,
) {
    // Bounded: a client that never finishes its request cannot hold the server.
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = sock.set_write_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let mut lines = text.lines();
    let path = lines.next().unwrap_or_default().split_whitespace().nth(1).unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    requests.lock().unwrap().push(path.clone());
    let answer = handler(&Request { path, headers });
    let mut head = format!("HTTP/1.1 {}\r\nContent-Type: application/octet-stream\r\n", answer.status);
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", answer.body.len()));
    let mut resp = head.into_bytes();
    resp.extend_from_slice(&answer.body);
    sent.fetch_add(resp.len() as u64, Ordering::SeqCst);
    let _ = sock.write_all(&resp);
    let _ = sock.flush();
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tmpfs of a given size mounted on a fresh temporary directory (needs root), unmounted on
/// drop, also when the test panics.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("creating a mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs on {} failed (this test needs root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(self.dir.path()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("umount {} failed: {}", self.dir.path().display(), String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("cannot run umount {}: {e}", self.dir.path().display()),
        }
    }
}

/// The newest trixie kernel of the flavour amd64 that `ckms kernels` offers.
pub fn newest_trixie(engine: &str) -> String {
    newest_trixie_of(engine, "debian-trixie", "amd64")
}

/// The newest trixie kernel of the flavour `arch` that `profile` offers.
pub fn newest_trixie_of(engine: &str, profile: &str, arch: &str) -> String {
    let cache = shared_cache();
    let args = ["--json", "--engine", engine, "--cache-dir", cache.to_str().unwrap(), "kernels", "--profile"];
    let run = ckms(args.iter().chain(&[profile])).run();
    run.expect_code(0);
    let re = regex::Regex::new(&format!(r"^6\.12\.\d+\+deb13-{arch}$")).unwrap();
    let mut releases: Vec<String> = run
        .json_result()
        .as_array()
        .expect("kernels is a list")
        .iter()
        .filter_map(|k| k["release"].as_str().map(str::to_string))
        .filter(|k| re.is_match(k))
        .collect();
    releases.sort_by(|a, b| ckms::repo::version::compare(a, b));
    releases.pop().unwrap_or_else(|| panic!("no trixie kernel offered{run}"))
}
