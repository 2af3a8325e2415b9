//! `ckms farm follow` ahead of the kernel, against an archive a kernel appears in
//! (tests/support/archive.rs: the host mirror's bookworm indexes re-signed by a test key, the
//! newest 6.1 kernel held back), on Podman, with real `*-dkms` packages:
//!
//! - follow, as a service, publishes the old kernel's modules (cache, apt, KMM to Debian's
//!   docker-registry on loopback), each proven to load in a VM; then polls while nothing
//!   changes (bytes and CPU per poll printed), and through the mirror down for a while;
//! - the archive gains the kernel: the time from that change to the new kernel's modules
//!   published, signed and proven in all three outputs is printed (`MEASURED` lines; the goal,
//!   5 minutes for 5 modules, is checked by ci/bench/follow.sh, which runs this test with
//!   `CKMS_FOLLOW_MODULES` naming five packages);
//! - the consumers get them: apt-get in a clean bookworm container, a ckms host with `ready`
//!   and `install --prebuilt-only`, the KMM image pulled by Podman;
//! - kill -9 during publications: a reader that loops over the cache and the apt repository
//!   all along never sees half of one, and the next run publishes.
//!
//! Podman, Docker, gpg, curl, docker-registry and qemu must be there: a missing one fails.
mod support;

#[path = "support/archive.rs"]
mod archive;
#[path = "support/bookworm.rs"]
mod bookworm;
#[path = "support/farm.rs"]
mod farm;
#[path = "support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use archive::Archive;
use bookworm::{bookworm_image, docker, farm_key, need, run};
use ckms::cache::sha256_hex;
use farm::Farm;
use support::{shared_cache, HttpServer};

/// Modules that build for bookworm's 6.1 kernels and load in a VM without their hardware.
const DEFAULT_MODULES: &str = "v4l2loopback-dkms digimend-dkms";

fn state(store: &Path) -> serde_json::Value {
    std::fs::read(store.join("follow/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits (up to `limit`) for `done` on follow's state, failing with follow's log.
fn wait_for(store: &Path, log: &Path, limit: Duration, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    while !done(&state(store)) {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\nstate: {}\nlog:\n{}",
            state(store),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ready(state: &serde_json::Value, kernel: &str) -> bool {
    state["kernels"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kernel"] == kernel && k["ready"] == true))
}

fn epoch() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

struct Setup {
    farm: Farm,
    archive: Archive,
    registry: registry::LocalRegistry,
    config: PathBuf,
    log: PathBuf,
    modules: Vec<String>,
}

impl Setup {
    fn dir(&self) -> &Path {
        self.farm.dir.path()
    }

    fn follow(&self, args: &[&str]) -> support::Ckms {
        let mut all = vec!["farm", "follow", "--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut c = self.farm.ckms(&all);
        for (k, v) in self.archive.env() {
            c = c.env(&k, v);
        }
        c
    }

    fn write_config(&self, cache_extra: &str) {
        let d = self.dir();
        let (key, cert) = (d.join("mok.key"), d.join("mok.pub"));
        let sources: Vec<String> = self.modules.iter().map(|m| format!("\"deb:{m}\"")).collect();
        let text = format!(
            "store = {store:?}\ninterval_secs = 2\n\
             [build]\nkernel = [\"@debian-bookworm:latest=2\"]\nsources = [{sources}]\nverify = true\njobs = 2\n\
             key = {key:?}\ncert = {cert:?}\n\
             [[publish]]\nformat = \"cache\"\nout = {cache:?}\nkey = {farm:?}\ncert = {cert:?}\n{cache_extra}\n\
             [[publish]]\nformat = \"apt\"\nout = {apt:?}\nkey = {farm:?}\ncert = {cert:?}\n\
             [[publish]]\nformat = \"kmm\"\nout = {kmm:?}\nname = \"fleet\"\ncert = {cert:?}\n\
             registry = {registry:?}\ninsecure = true\n",
            store = self.farm.store().display().to_string(),
            sources = sources.join(", "),
            key = key.display().to_string(),
            cert = cert.display().to_string(),
            cache = d.join("www/cache").display().to_string(),
            apt = d.join("www/apt").display().to_string(),
            kmm = d.join("www/kmm").display().to_string(),
            farm = d.join("farm.asc").display().to_string(),
            registry = self.registry.host,
        );
        std::fs::write(&self.config, text).unwrap();
    }
}

fn setup() -> Setup {
    need("podman", "podman");
    let farm = Farm::new("CKMS_TEST_PODMAN_HOST");
    let dir = farm.dir.path().to_path_buf();
    farm_key(&dir);
    farm.key_pair("mok");
    let archive = Archive::start(&dir.join("archive"));
    let modules: Vec<String> = std::env::var("CKMS_FOLLOW_MODULES")
        .unwrap_or_else(|_| DEFAULT_MODULES.into())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let s = Setup {
        registry: registry::LocalRegistry::start(),
        config: dir.join("follow.toml"),
        log: dir.join("follow.log"),
        farm,
        archive,
        modules,
    };
    s.write_config("");
    s
}

#[test]
fn follow_publishes_a_new_kernels_modules_before_hosts_upgrade_and_survives_kill_9() {
    let s = setup();
    let store = s.farm.store();
    let (old, new) = (s.archive.old_kernel.clone(), s.archive.new_kernel.clone());
    eprintln!("the archive offers {old}; {new} is held back; modules: {:?}", s.modules);

    // The service, on the archive without the new kernel: it publishes the old one's modules.
    let mut service = s.follow(&[]).spawn_logged(&s.log);
    let started = Instant::now();
    wait_for(&store, &s.log, Duration::from_secs(40 * 60), "the first publication", |st| {
        st["last_publication"].is_u64()
    });
    assert!(ready(&state(&store), &old), "{old} is not ready: {}", state(&store)["kernels"]);
    eprintln!("MEASURED first publication ({old}, cold store): {:.0} s", started.elapsed().as_secs_f64());

    // Polls while nothing changes.
    let polls = state(&store)["polls"].as_u64().unwrap();
    let sent = s.archive.bytes_sent();
    wait_for(&store, &s.log, Duration::from_secs(120), "three more polls", |st| {
        st["polls"].as_u64() >= Some(polls + 3)
    });
    let st = state(&store);
    let n = st["polls"].as_u64().unwrap() - polls;
    eprintln!(
        "MEASURED polls while unchanged: {} bytes sent by the archive per poll (headers: 3 conditional GETs), \
         follow counted {} body bytes and {} s CPU for its last poll",
        (s.archive.bytes_sent() - sent) / n,
        st["last_poll_bytes"],
        st["last_poll_cpu_seconds"]
    );
    assert_eq!(st["last_poll_bytes"], 0, "nothing is downloaded while nothing changes: {st}");
    assert!(st["last_publication"].as_u64() < Some(epoch()), "no publication while nothing changes");

    // The mirror down for a while: said, counted, and followed again once it is back.
    let errors = state(&store)["mirror_errors"].as_u64().unwrap_or(0);
    s.archive.set_down(true);
    wait_for(&store, &s.log, Duration::from_secs(120), "three failed polls", |st| {
        st["consecutive_errors"].as_u64() >= Some(3)
    });
    s.archive.set_down(false);
    wait_for(&store, &s.log, Duration::from_secs(120), "polls again", |st| st["consecutive_errors"] == 0);
    let st = state(&store);
    assert!(st["mirror_errors"].as_u64() >= Some(errors + 3), "{st}");
    let said = std::fs::read_to_string(&s.log).unwrap();
    assert!(said.contains("the archive does not answer"), "{said}");
    eprintln!("the mirror down: {} failed polls counted, said, and polling resumed", st["mirror_errors"]);

    // The archive gains the kernel; its builder and verifier images are made in the window.
    s.farm.run(&["-q", "image", "rm", &new]);
    let before = epoch();
    let changed = s.archive.gain_kernel();
    let seen = |st: &serde_json::Value| {
        st["kernels"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kernel"] == new.as_str()))
    };
    wait_for(&store, &s.log, Duration::from_secs(30 * 60), "the new kernel published", |st| {
        st["last_publication"].as_u64() >= Some(before) && seen(st)
    });
    assert!(ready(&state(&store), &new), "{new} is not ready: {}", state(&store)["kernels"]);
    let took = changed.elapsed().as_secs_f64();
    eprintln!(
        "MEASURED index change to publication of {new} ({} modules; cache, apt, KMM; signed, proven): {took:.0} s \
         (follow's own latency from seeing the change: {} s)",
        s.modules.len(),
        state(&store)["last_latency_seconds"]
    );
    let _ = service.kill();
    let _ = service.wait();

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir().join("www/cache/index.json")).unwrap()).unwrap();
    let of_new: Vec<&serde_json::Value> =
        index["entries"].as_object().unwrap().values().filter(|e| e["kernel"] == new.as_str()).collect();
    assert_eq!(of_new.len(), s.modules.len(), "every module for {new} in the cache: {index}");
    assert!(of_new.iter().all(|e| e["loaded"] == true), "each proven to load: {index}");
    // Hosts that have not upgraded yet keep theirs (`latest=2`).
    let of_old = index["entries"].as_object().unwrap().values().filter(|e| e["kernel"] == old.as_str()).count();
    assert_eq!(of_old, s.modules.len(), "{old}'s modules stay published: {index}");

    let names: Vec<String> = of_new.iter().map(|e| e["module"].as_str().unwrap().to_string()).collect();
    consumers(&s, &new, &names);
    kill_9_during_publications(&s);
}

/// apt-get in a clean container, a ckms host asking `ready` and installing from the cache,
/// and the KMM image pulled by Podman: each gets the new kernel's modules.
/// `names`: the modules' dkms names (an apt package is `<name>-modules-<kernel>`).
fn consumers(s: &Setup, kernel: &str, names: &[String]) {
    let docker_host = support::engine_host("CKMS_TEST_DOCKER_HOST");
    let image = bookworm_image(&docker_host);
    // The kernel's image package is downloaded once per run; no initramfs (INITRD=No: the
    // kernel hook skips it), which no step here boots.
    let archives = shared_cache().join("apt-archives");
    std::fs::create_dir_all(archives.join("partial")).unwrap();
    let cache = format!("{}:/var/cache/apt/archives", archives.display());

    // apt: the repository next to the host's own Debian sources, which bring the kernel.
    let packages: Vec<String> = names.iter().map(|n| format!("{n}-modules-{kernel}")).collect();
    let script = format!(
        "set -eu\necho 'deb [signed-by=/repo/ckms-archive-keyring.gpg] file:/repo bookworm main' \
         >/etc/apt/sources.list.d/ckms.list\napt-get update -q >/dev/null\n\
         INITRD=No apt-get install -y -q --no-install-recommends {} >/dev/null\nls /lib/modules/{kernel}/updates/dkms\n",
        packages.join(" ")
    );
    let repo = format!("{}:/repo:ro", s.dir().join("www/apt").display());
    let started = Instant::now();
    let shown =
        run(docker(&docker_host).args(["run", "--rm", "-v", &repo, "-v", &cache, &image, "bash", "-c", &script]));
    eprintln!("MEASURED apt-get consumer: {:.0} s; installed:\n{shown}", started.elapsed().as_secs_f64());
    let installed = shown.lines().count();
    assert!(installed >= s.modules.len(), "apt installed the modules for {kernel}:\n{shown}");

    // A ckms host: no engine, no compiler; its gate's question, then the kernel and the modules.
    let cache_dir = s.dir().join("www/cache");
    let mut files = std::collections::HashMap::new();
    bookworm::served(&cache_dir, "/cache", &mut files);
    let server = HttpServer::start(files);
    let work = s.dir().join("host");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(cache_dir.join("farm.pub.asc"), work.join("farm.pub.asc")).unwrap();
    std::fs::write(
        work.join("config.toml"),
        format!(
            "[prebuilt]\nurls = [\"{}/cache/\"]\nkeys = [\"/work/farm.pub.asc\"]\nallow_http = true\n",
            server.base()
        ),
    )
    .unwrap();
    let adds: Vec<String> = s.modules.iter().map(|m| format!("ckms add deb:{m} >/dev/null")).collect();
    let script = format!(
        "set -eu\n{}\nckms ready -k {kernel} && echo READY\n\
         apt-get update -q >/dev/null\n\
         INITRD=No apt-get install -y -q --no-install-recommends linux-image-{kernel} >/dev/null\n\
         for d in /usr/src/*-*; do\n  mv=$(basename $d | sed 's,-\\([^-]*\\)$,/\\1,')\n\
           ckms -q install $mv -k {kernel} --prebuilt-only\ndone\nls /lib/modules/{kernel}/updates/dkms\n\
         command -v gcc make podman docker || echo NO-TOOLCHAIN\n",
        adds.join("\n")
    );
    let mut args: Vec<String> = ["run", "--rm", "--network", "host", "-v", &cache].map(String::from).to_vec();
    args.extend(["-e".into(), "CKMS_CONFIG=/work/config.toml".into()]);
    for (k, v) in s.archive.env() {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend(["-v".into(), format!("{}:/work", work.display())]);
    // At the same path: the test profile names its keyring by the host's path.
    args.extend(["-v".into(), format!("{0}:{0}:ro", s.archive.dir.display())]);
    args.extend(["-v".into(), format!("{}:/usr/local/bin/ckms:ro", env!("CARGO_BIN_EXE_ckms"))]);
    args.extend([image.clone(), "bash".into(), "-c".into(), script]);
    let started = Instant::now();
    let shown = run(docker(&docker_host).args(&args));
    eprintln!(
        "MEASURED ckms host (ready, kernel, install --prebuilt-only): {:.0} s\n{shown}",
        started.elapsed().as_secs_f64()
    );
    assert!(shown.contains("READY") && shown.contains("NO-TOOLCHAIN"), "{shown}");
    assert!(shown.lines().filter(|l| l.ends_with(".ko")).count() >= s.modules.len(), "{shown}");

    // KMM: the image for the new kernel, pulled by Podman, holds every module.
    let podman_host = support::engine_host("CKMS_TEST_PODMAN_HOST");
    let reference = format!("{}/ckms/fleet:{kernel}", s.registry.host);
    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--remote").arg("--url").arg(&podman_host);
        c
    };
    run(podman().args(["pull", "--quiet", "--tls-verify=false", &reference]));
    let listed = run(podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        &reference,
        "ls",
        &format!("/opt/lib/modules/{kernel}/updates/dkms"),
    ]));
    eprintln!("KMM image {reference}:\n{listed}");
    assert!(listed.lines().count() >= s.modules.len(), "{listed}");
    let _ = podman().args(["rmi", &reference]).output();
}

/// Publications killed with SIGKILL at points spread over a cycle, while a reader checks the
/// cache and the apt repository as consumers see them; then a run that is left to finish.
fn kill_9_during_publications(s: &Setup) {
    // Another publish option (same output): the configuration changed, so each run publishes.
    s.write_config("skip_damaged = true\n");
    let www = s.dir().join("www");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (www, stop) = (www.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                check_cache(&www.join("cache"));
                check_apt(&www.join("apt"));
                reads += 1;
            }
            reads
        })
    };
    let started = Instant::now();
    s.follow(&["--once"]).run().expect_code(0);
    let cycle = started.elapsed();
    s.write_config("");
    let mut killed = 0;
    for i in 1..=6 {
        let run = s.follow(&["--once"]).start();
        std::thread::sleep(cycle * i / 7);
        let _ = Command::new("kill").args(["-9", &run.pid().to_string()]).status();
        killed += u32::from(run.wait_status().is_none());
    }
    s.follow(&["--once"]).run().expect_code(0);
    stop.store(true, Ordering::SeqCst);
    let reads = reader.join().expect("the reader saw every publication whole");
    eprintln!(
        "MEASURED kill -9: a cycle takes {:.1} s; {killed} of 6 runs killed during it; {reads} whole reads, none torn",
        cycle.as_secs_f64()
    );
    assert!(killed >= 3, "most kills land inside a cycle");
    let staged: Vec<_> = std::fs::read_dir(&www)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(staged.is_empty(), "a staged publication left next to the outputs: {staged:?}");
}

/// A consumer's read of a cache: the index, then each file it names, whole and as named.
fn check_cache(dir: &Path) {
    let Ok(d) = std::fs::File::open(dir) else { return };
    let replaced = || replaced(dir, &d);
    // Through the directory as opened: a swap under the reader does not mix two publications.
    let root = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&d)));
    let index: serde_json::Value = match std::fs::read(root.join("index.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| panic!("a torn cache index: {e}")),
        Err(_) if replaced() => return,
        Err(e) => panic!("the cache has no index: {e}"),
    };
    for entry in index["entries"].as_object().unwrap().values() {
        for f in entry["files"].as_array().unwrap() {
            let path = root.join(f["path"].as_str().unwrap());
            match std::fs::read(&path) {
                Ok(b) => assert_eq!(sha256_hex(&b), f["sha256"].as_str().unwrap(), "{} torn", path.display()),
                Err(_) if replaced() => return,
                Err(e) => panic!("the cache's index names {} and it is missing: {e}", path.display()),
            }
        }
    }
}

/// A consumer's read of an apt repository: InRelease, the Packages it lists, each package.
fn check_apt(dir: &Path) {
    let Ok(d) = std::fs::File::open(dir) else { return };
    let replaced = || replaced(dir, &d);
    let root = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&d)));
    let Ok(release) = std::fs::read_to_string(root.join("dists/bookworm/InRelease")) else { return };
    let line = release.lines().find(|l| l.ends_with(" main/binary-amd64/Packages")).expect("InRelease lists Packages");
    let want = line.split_whitespace().next().unwrap();
    let Ok(packages) = std::fs::read(root.join("dists/bookworm/main/binary-amd64/Packages")) else { return };
    assert_eq!(sha256_hex(&packages), want, "Packages does not match its InRelease");
    let text = String::from_utf8(packages).unwrap();
    for stanza in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let field = |n: &str| stanza.lines().find_map(|l| l.strip_prefix(n)).unwrap().to_string();
        match std::fs::read(root.join(field("Filename: "))) {
            Ok(b) => assert_eq!(sha256_hex(&b), field("SHA256: "), "a torn package"),
            Err(_) if replaced() => return,
            Err(e) => panic!("Packages names {} and it is missing: {e}", field("Filename: ")),
        }
    }
}

/// Whether `dir` is no longer the directory `opened` (a publication swapped in since): what
/// was read through `opened` may be gone, removed with the old publication.
fn replaced(dir: &Path, opened: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).map(|m| m.ino()).ok() != opened.metadata().map(|m| m.ino()).ok()
}
