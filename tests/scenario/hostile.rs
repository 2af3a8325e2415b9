//! Hostile modules against one real engine: each fixture of tests/fixtures/hostile (see its
//! README) is installed with `ckms install --root <tmp>` and must end with its own exit code,
//! a message naming the module and the kernel with a hint saying what to do, make.log kept at
//! `<dkms_tree>/<m>/<v>/build/make.log`, no module installed, and an untouched host: no marker
//! file anywhere the build tried to write, no process left, the build's volume gone and the
//! disk as full as before.
//!
//! Included by tests/modules_{podman,docker}.rs with the engine's env variable; they also
//! declare `mod support` (tests/support), whose helpers this uses. The cases run in parallel.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{ckms, shared_cache, Outcome};

/// Hostile builds use the bookworm kernel whose builder image the other tests load too.
pub const KERNEL: &str = "6.1.0-56-amd64";
/// What the hostile builds may use (`CKMS_CONFIG`): small, so the limit is reached fast.
const CONFIG: &str = "[build]\n";
const SPACE_MIB: u64 = 64;
/// The disk fills get more, so that what they write stands well above the noise of a shared
/// machine's disk (50 MiB seen) in the check that their space came back.
const FILL_SPACE_MIB: u64 = 256;
const DISK_TOLERANCE: u64 = 128 << 20;
/// The fork bomb's process limit. On rootless Podman (cgroup v1) it is RLIMIT_NPROC, counted
/// per host uid, so shared by every build of that Podman: with 256 the bomb leaves the other
/// builds (limit 4096) room to run beside it.
const BOMB_PIDS: u32 = 256;
const FILLS: [&str; 2] = ["huge-file", "fill-disk"];
/// `CKMS_BUILD_TIMEOUT` for the build that never ends.
const TIMEOUT_SECS: u64 = 20;

/// What every case shares.
struct Ctx {
    engine: String,
    /// In every marker file name and in the command line of the fixtures' long-lived processes.
    token: String,
    mirror_host: String,
    mirror_ip: String,
    /// The host's /etc/shadow, which no file of the tree may hold.
    shadow: Vec<u8>,
}

/// The first mirror of the host's apt sources and its IPv4 address, resolved on the host.
fn apt_mirror() -> (String, String) {
    let sources = ckms::repo::sources::read_host_sources(Path::new("/etc/apt"))
        .unwrap_or_else(|e| panic!("reading the host's apt sources: {e}"));
    let uri = sources
        .iter()
        .filter(|s| s.enabled && s.types.iter().any(|t| t == "deb"))
        .flat_map(|s| &s.uris)
        .find(|u| u.starts_with("http://") || u.starts_with("https://"))
        .unwrap_or_else(|| panic!("no http(s) mirror in the host's apt sources: {sources:?}"))
        .clone();
    let host = uri.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default().to_string();
    let ip = (host.as_str(), 80)
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("resolving the apt mirror {host} on the host: {e}"))
        .find(|a| a.is_ipv4())
        .unwrap_or_else(|| panic!("the apt mirror {host} has no IPv4 address"))
        .ip()
        .to_string();
    (host, ip)
}

/// One case's tree: `<root>/usr/src/hostile-<name>-1.0` holds the fixture.
struct Case {
    name: &'static str,
    /// The run's token and the case's name: the cases run at the same time.
    token: String,
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Case {
    fn new(ctx: &Ctx, name: &'static str) -> Case {
        let dir = tempfile::Builder::new().prefix(&format!("ckms-hostile-{name}-")).tempdir().unwrap();
        let root = dir.path().join("root");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile").join(name);
        let dest = root.join(format!("usr/src/hostile-{name}-1.0"));
        let token = format!("{}{}", ctx.token, name.replace('-', ""));
        std::fs::create_dir_all(&dest).unwrap();
        for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
            let entry = entry.unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text
                .replace("@TOKEN@", &token)
                .replace("@MIRROR_HOST@", &ctx.mirror_host)
                .replace("@MIRROR_IP@", &ctx.mirror_ip)
                .replace("@HOST_ROOT@", root.to_str().unwrap());
            std::fs::write(dest.join(entry.file_name()), text).unwrap();
        }
        let config = dir.path().join("config.toml");
        let pids = if name == "fork-bomb" { format!("pids = {BOMB_PIDS}\n") } else { String::new() };
        let space = if FILLS.contains(&name) { FILL_SPACE_MIB } else { SPACE_MIB };
        std::fs::write(&config, format!("{CONFIG}space_mib = {space}\n{pids}")).unwrap();
        Case { name, token, _dir: dir, root, config }
    }

    fn module(&self) -> String {
        format!("hostile-{}/1.0", self.name)
    }

    fn verb(&self, ctx: &Ctx, args: &[&str]) -> crate::support::Ckms {
        let cache = shared_cache();
        let mut all = vec!["--engine", &ctx.engine, "--cache-dir", cache.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--root", self.root.to_str().unwrap()]);
        ckms(all).env("CKMS_CONFIG", &self.config)
    }

    /// `ckms install --root <root> hostile-<name>/1.0 -k KERNEL`, timed.
    fn install(&self, ctx: &Ctx, env: &[(&str, String)]) -> (Outcome, Duration) {
        let mut cmd = self.verb(ctx, &["install", &self.module(), "-k", KERNEL]);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let started = Instant::now();
        let run = cmd.run();
        (run, started.elapsed())
    }

    fn make_log_path(&self) -> PathBuf {
        self.root.join(format!("var/lib/ckms/hostile-{}/1.0/build/make.log", self.name))
    }

    fn make_log(&self, run: &Outcome) -> String {
        let path = self.make_log_path();
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("make.log not kept at {}: {e}{run}", path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `ckms status` lines for the tree.
    fn status(&self, ctx: &Ctx) -> Vec<String> {
        let run = self.verb(ctx, &["status"]).run();
        run.expect_code(0);
        run.stdout.lines().map(str::to_string).collect()
    }

    /// What every failed case must show: the code, a message naming the module and kernel, a
    /// hint with what to do and where make.log is, make.log there, nothing built or installed.
    fn assert_failed(&self, ctx: &Ctx, run: &Outcome, code: i32, message: &str, hint: &str) -> String {
        run.expect_code(code);
        let msg = run.error_message();
        assert!(msg.contains(&self.module()) && msg.contains(KERNEL), "the message names the module and kernel{run}");
        assert!(msg.contains(message), "the message says {message:?}{run}");
        let h = run.hint();
        assert!(h.contains(hint), "the hint says {hint:?}{run}");
        assert!(h.contains(&format!("Consult {} for more information.", self.make_log_path().display())), "{run}");
        let log = self.make_log(run);
        assert!(
            log.starts_with(&format!("DKMS make.log for hostile-{}-1.0 for kernel {KERNEL} (x86_64)", self.name)),
            "make.log starts like dkms's: {}",
            &log[..log.len().min(200)]
        );
        assert_eq!(self.status(ctx), [format!("{}: added", self.module())], "nothing built{run}");
        assert_eq!(modules_under(&self.root.join("lib")), Vec::<PathBuf>::new(), "no module installed{run}");
        let kept: Vec<String> = walk(&self.root.join("var/lib/ckms"))
            .into_keys()
            .map(|p| p.display().to_string())
            // The tree's lock exists once something took it.
            .filter(|p| p != ".lock" && !p.starts_with(&format!("hostile-{}/1.0/build", self.name)))
            .collect();
        let expected = [
            format!("hostile-{}", self.name),
            format!("hostile-{}/1.0", self.name),
            format!("hostile-{}/1.0/source", self.name),
        ];
        assert_eq!(kept, expected, "the tree holds the source link and make.log, nothing else{run}");
        self.assert_host_untouched(ctx, run);
        log
    }

    /// No marker where the fixtures try to write, on the host or in the tree; no copy of the
    /// host's /etc/shadow in the tree; no process of the build left.
    fn assert_host_untouched(&self, ctx: &Ctx, run: &Outcome) {
        let t = &self.token;
        let mut markers: Vec<PathBuf> =
            ["/etc", "/usr", "/usr/local", "/home", "/home/build", "/root", "/var/lib", "/var/tmp", "/tmp", "/dev/shm"]
                .iter()
                .map(|d| Path::new(d).join(t))
                .collect();
        markers.push(PathBuf::from(format!("/tmp/{t}-connected")));
        markers.push(self.root.join(t));
        markers.push(self.root.join("lib/modules").join(t));
        // `../../../` from the build directory in the container: the tree's top on the host.
        markers.push(self.root.join("var/lib/ckms").join(t));
        for m in &markers {
            assert!(std::fs::symlink_metadata(m).is_err(), "{} exists on the host{run}", m.display());
        }
        for (path, entry) in walk(&self.root) {
            assert!(!path.to_string_lossy().contains(t.as_str()), "{} in the tree{run}", path.display());
            if let Entry::File(bytes, _) = entry {
                assert!(bytes != ctx.shadow, "{} is a copy of the host's /etc/shadow{run}", path.display());
            }
        }
        assert_no_process(t, run);
    }
}

/// Fails if a process whose command line holds `token` is still running after a few seconds.
fn assert_no_process(token: &str, run: &Outcome) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok().map(|c| (e.file_name(), c)))
            .filter(|(_, c)| c.windows(token.len()).any(|w| w == token.as_bytes()))
            .map(|(pid, c)| format!("{}: {}", pid.to_string_lossy(), String::from_utf8_lossy(&c).replace('\0', " ")))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of the build are left on the host: {left:?}{run}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir(u32),
    File(Vec<u8>, u32),
    Link(PathBuf),
}

/// Every path under `dir` (relative), with its kind, mode and contents; empty if missing.
pub fn walk(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.is_symlink() {
                Entry::Link(std::fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                stack.push(path.clone());
                Entry::Dir(mode)
            } else {
                Entry::File(std::fs::read(&path).unwrap_or_default(), mode)
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Files under `dir` whose name holds `.ko`.
fn modules_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir).into_keys().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".ko"))).collect()
}

/// (file system id, used bytes) of the file system holding `path`.
fn used_bytes(path: &Path) -> (u64, u64) {
    let s = rustix::fs::statvfs(path).unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()));
    (s.f_fsid, (s.f_blocks - s.f_bfree) * s.f_frsize)
}

/// Used bytes of every file system that may hold the engines' volumes or the test trees.
fn disks() -> BTreeMap<u64, u64> {
    [std::env::temp_dir(), PathBuf::from("/"), PathBuf::from("/var/lib"), PathBuf::from("/home")]
        .iter()
        .map(|p| used_bytes(p))
        .collect()
}

/// The build's volume on the host, as its first make.log line ("volume: <path>") says; it
/// must be gone, and the directory holding the engine's volumes must exist (else the path
/// would not be the host's and the check would prove nothing).
fn assert_volume_gone(log: &str, run: &Outcome) -> PathBuf {
    let volume = log
        .lines()
        .find_map(|l| l.strip_prefix("volume: "))
        .unwrap_or_else(|| panic!("no volume line in make.log{run}"));
    let volume = PathBuf::from(volume.trim());
    let volumes = volume.parent().and_then(Path::parent).unwrap();
    assert!(volumes.is_dir(), "{} is not the engine's volume directory on the host{run}", volumes.display());
    assert!(!volume.exists(), "the build's volume {} is still on the host{run}", volume.display());
    volumes.to_path_buf()
}

/// What a case returns: how long it took, and the engine's volume directory if it found it.
type Check = fn(&Ctx, &Case) -> (Duration, Option<PathBuf>);

fn network(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let log = c.assert_failed(ctx, &run, 10, "Bad return status for module build", "reach the network");
    let resolve_failed = ["Temporary failure in name resolution", "Name or service not known"]
        .iter()
        .any(|e| log.contains(&format!("{}: {e}", ctx.mirror_host)));
    assert!(resolve_failed, "{log}");
    assert!(log.contains(&format!("/dev/tcp/{}/80: Network is unreachable", ctx.mirror_ip)), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("CONNECTED")), "{log}");
    (took, None)
}

fn writes_outside(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let log = c.assert_failed(ctx, &run, 10, "Bad return status for module build", "outside its build directory");
    for dir in ["/etc", "/usr", "/home", "/var/lib"] {
        assert!(log.contains(&format!("REFUSED {dir}/{}", c.token)), "{dir}: {log}");
    }
    assert!(log.contains("Read-only file system"), "{log}");
    (took, None)
}

fn fork_bomb(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let limit = format!("limit of {BOMB_PIDS} processes");
    let log = c.assert_failed(ctx, &run, 10, "Bad return status for module build", &limit);
    assert!(log.contains("Resource temporarily unavailable"), "{log}");
    (took, None)
}

fn infinite_loop(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[("CKMS_BUILD_TIMEOUT", TIMEOUT_SECS.to_string())]);
    c.assert_failed(ctx, &run, 42, &format!("did not finish in {TIMEOUT_SECS} s"), "CKMS_BUILD_TIMEOUT");
    assert!(took >= Duration::from_secs(TIMEOUT_SECS), "stopped after {took:?}, before its time{run}");
    // Well under the default timeout (1800 s), whatever the machine's load.
    assert!(took < Duration::from_secs(TIMEOUT_SECS + 240), "stopped only after {took:?}{run}");
    (took, None)
}

fn huge_file(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let log = c.assert_failed(ctx, &run, 34, &format!("more than {FILL_SPACE_MIB} MiB of disk"), "space_mib");
    assert!(log.contains("File size limit exceeded"), "ulimit -f stopped it: {log}");
    let volumes = assert_volume_gone(&log, &run);
    (took, Some(volumes))
}

fn fill_disk(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let log = c.assert_failed(ctx, &run, 34, &format!("more than {FILL_SPACE_MIB} MiB of disk"), "space_mib");
    assert!(log.contains("sent SIGKILL to PID 1") && log.contains("sent SIGTERM to PID 1"), "{log}");
    let stopped = format!("ckms: the build used more than {FILL_SPACE_MIB} MiB of disk; stopped");
    assert!(log.contains(&stopped), "{log}");
    let volumes = assert_volume_gone(&log, &run);
    (took, Some(volumes))
}

fn ko_symlink(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    let log = c.assert_failed(ctx, &run, 7, "hostile.ko is a symbolic link, not a built module: refused", "link");
    assert!(log.contains("hostile.ko is a symbolic link (to /etc/shadow)"), "{log}");
    assert!(log.contains("refused \"modules/planted.ko\""), "the planted link was refused too: {log}");
    (took, None)
}

fn log_flood(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    c.assert_failed(ctx, &run, 10, "Bad return status for module build", "Consult");
    // 200 MB went to the container's stdout; the engine keeps at most 8 MiB of it.
    let size = std::fs::metadata(c.make_log_path()).unwrap().len();
    assert!(size < 16 << 20, "make.log holds {size} bytes of the flood{run}");
    (took, None)
}

fn conf_eval(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (run, took) = c.install(ctx, &[]);
    run.expect_code(0);
    let installed = c.root.join(format!("lib/modules/{KERNEL}/updates/dkms/hostile.ko"));
    assert!(installed.is_file(), "the module of a conf that misbehaves in the sandbox still installs{run}");
    assert_eq!(c.status(ctx), [format!("{}, {KERNEL}, x86_64: installed", c.module())]);
    c.assert_host_untouched(ctx, &run);
    (took, None)
}

/// A build that looks for the module signing key everywhere it can read. The pair exists
/// in the tree before the build; signing happens on the host after it, so the build finds
/// neither the files nor any line of the key, and the installed module is signed with it.
fn key_thief(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let (key, cert) = (c.root.join("var/lib/ckms/mok.key"), c.root.join("var/lib/ckms/mok.pub"));
    let cache = shared_cache();
    let (k, p) = (key.to_str().unwrap(), cert.to_str().unwrap());
    let global = ["--cache-dir", cache.to_str().unwrap()];
    ckms(global.iter().chain(&["generate-mok", "--key", k, "--cert", p]))
        .env("CKMS_CONFIG", &c.config)
        .run()
        .expect_code(0);
    let (run, took) = c.install(ctx, &[]);
    run.expect_code(0);
    let installed = c.root.join(format!("lib/modules/{KERNEL}/updates/dkms/hostile.ko"));
    let verify = ckms(global.iter().chain(&["verify-signature", installed.to_str().unwrap(), "--cert", p])).run();
    verify.expect_code(0);
    let log_path = c.root.join(format!("var/lib/ckms/hostile-key-thief/1.0/{KERNEL}/x86_64/log/make.log"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("{}: {e}{run}", log_path.display()));
    assert!(log.contains("key-thief: done"), "the search did not run: {log}{run}");
    let files: Vec<&str> = log.lines().filter(|l| l.starts_with("key-thief: file")).collect();
    assert!(!files.iter().any(|l| l.contains("/mok.")), "the build saw the key's files: {files:?}{run}");
    let pem = std::fs::read_to_string(&key).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "the build read the key ({line}): {log}");
    }
    assert!(!log.contains(k), "the build saw the key's path: {log}");
    c.assert_host_untouched(ctx, &run);
    (took, None)
}

/// A source whose dkms.conf names it "../../../tmp/<token>": `ckms add <dir>` reads that on the
/// host (without running the file) and would copy the source there. No engine involved.
fn path_escape(ctx: &Ctx, c: &Case) -> (Duration, Option<PathBuf>) {
    let dir = c.root.join("usr/src/hostile-path-escape-1.0");
    let started = Instant::now();
    let run = c.verb(ctx, &["add", dir.to_str().unwrap()]).run();
    run.expect_code(8);
    assert!(run.error_message().contains("PACKAGE_NAME") && run.error_message().contains("not a plain name"), "{run}");
    assert!(run.hint().contains("without '/'"), "{run}");
    for escaped in [format!("/tmp/{}", c.token), format!("/tmp/{}-1.0", c.token)] {
        assert!(std::fs::symlink_metadata(&escaped).is_err(), "{escaped} exists on the host{run}");
    }
    assert_eq!(walk(&c.root.join("var/lib/ckms")).len(), 0, "nothing added{run}");
    c.assert_host_untouched(ctx, &run);
    (started.elapsed(), None)
}

const CASES: &[(&str, Check)] = &[
    ("infinite-loop", infinite_loop),
    ("network", network),
    ("writes-outside", writes_outside),
    ("fork-bomb", fork_bomb),
    ("huge-file", huge_file),
    ("fill-disk", fill_disk),
    ("ko-symlink", ko_symlink),
    ("log-flood", log_flood),
    ("conf-eval", conf_eval),
    ("key-thief", key_thief),
    ("path-escape", path_escape),
];

/// Runs `f` on every item, each in its own thread; the results in order, panics included.
pub fn in_parallel<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<(&I, std::thread::Result<T>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| (i, s.spawn(|| f(i)))).collect();
        handles.into_iter().map(|(i, h)| (i, h.join())).collect()
    })
}

/// The values of `results`; panics with every failure's message if any failed.
pub fn all_ok<I: std::fmt::Debug, T>(what: &str, results: Vec<(I, std::thread::Result<T>)>) -> Vec<(I, T)> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (item, result) in results {
        match result {
            Ok(v) => ok.push((item, v)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{item:?}: {msg}"));
            }
        }
    }
    assert!(failed.is_empty(), "{what}: {} failed:\n{}", failed.len(), failed.join("\n\n"));
    ok
}

pub fn scenario(var: &str) {
    let engine = crate::support::engine_host(var);
    let _alone = crate::support::disk_alone();
    let started = Instant::now();
    let cache = shared_cache();
    // The image first, once, so that the cases do not all assemble it at the same time.
    ckms(["--engine", &engine, "--cache-dir", cache.to_str().unwrap(), "image", "build", "-k", KERNEL])
        .run()
        .expect_code(0);
    let (mirror_host, mirror_ip) = apt_mirror();
    let kind = if var.contains("PODMAN") { "podman" } else { "docker" };
    let ctx = Ctx {
        engine,
        token: format!("ckmshostile{}{kind}", std::process::id()),
        mirror_host,
        mirror_ip,
        shadow: std::fs::read("/etc/shadow").expect("reading the host's /etc/shadow (the tests run as root)"),
    };
    let used_before = disks();

    let results = in_parallel(CASES, |(name, check)| check(&ctx, &Case::new(&ctx, name)));
    let mut volume_dirs = Vec::new();
    for ((name, _), (took, volumes)) in all_ok(&format!("hostile modules on {kind}"), results) {
        eprintln!("hostile {name} on {kind}: contained in {:.1} s", took.as_secs_f64());
        volume_dirs.extend(volumes);
    }

    // The fills wrote 256 MiB and more, twice; their volumes were removed with their
    // containers (the volume directory's file system is one of those measured).
    for dir in &volume_dirs {
        let (fs, _) = used_bytes(dir);
        assert!(used_before.contains_key(&fs), "{} is on a file system the test did not measure", dir.display());
    }
    assert!(!volume_dirs.is_empty(), "no fill case reported its volume");
    for (fs, after) in disks() {
        let grown = after.saturating_sub(used_before.get(&fs).copied().unwrap_or(after));
        assert!(grown < DISK_TOLERANCE, "file system {fs:#x} grew by {} MiB", grown >> 20);
    }
    eprintln!("hostile modules on {kind}: {:.1} s in all", started.elapsed().as_secs_f64());
}
