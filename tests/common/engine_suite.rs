//! The engine integration tests, shared by tests/engine_docker.rs and tests/engine_podman.rs:
//! each names the variable holding its endpoint and expands `engine_tests!`. A missing
//! variable or an engine that does not answer is a failure, never a skip.
#![allow(dead_code)]

use ckms::engine::{DockerApi, Engine, EngineError, EngineKind, Images, Limits, RunOutcome, RunSpec, Runner};
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LABEL: &str = "io.ckms.test";
pub const IMAGE: &str = "localhost/ckms-test/busybox:latest";

/// The fork-bomb test takes this exclusively: on rootless cgroup v1 the nproc rlimit counts
/// every process of the container uid, so a bomb starves concurrent runs of the same engine.
pub static FORK_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub fn endpoint(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: it must name the engine under test (ci/setup-engines.sh starts them; \
             e.g. {var}=unix:///var/run/docker.sock or unix:///run/user/1001/podman/podman.sock)"
        ),
    }
}

pub async fn api(var: &str) -> DockerApi {
    let host = endpoint(var);
    match DockerApi::connect(&host, Duration::from_secs(10)).await {
        Ok(api) => api,
        Err(why) => panic!("{var}={host} does not answer: {why} (run ci/setup-engines.sh)"),
    }
}

/// A docker-archive with one layer: static busybox, its applets as symlinks, and a user 1000.
/// Returns the archive path and the image id (sha256 of the config).
pub fn busybox_archive(dir: &Path, tag: &str, label_value: &str) -> (PathBuf, String) {
    let mut layer = tar::Builder::new(Vec::new());
    let dir_entry = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    for (d, mode) in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("proc", 0o755), ("sys", 0o755), ("dev", 0o755)]
    {
        dir_entry(&mut layer, d, mode);
    }
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: apt-get install -y busybox-static (a static build is needed)");
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    layer.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in ["sh", "cat", "id", "sleep", "wget", "ls", "echo", "touch", "mkdir", "true", "seq"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
    }
    for (name, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000:builder:/build:/bin/sh\n"),
        ("etc/group", "root:x:0:\nbuilder:x:1000:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        layer.append_data(&mut h, name, text.as_bytes()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Labels": { LABEL: label_value } },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    })
    .to_string();
    let config_hex = hex::encode(sha2::Sha256::digest(config.as_bytes()));
    let layer_name = format!("{}/layer.tar", &diff_id[7..]);
    let manifest =
        serde_json::json!([{ "Config": format!("{config_hex}.json"), "RepoTags": [tag], "Layers": [layer_name] }])
            .to_string();
    let path = dir.join(format!("{config_hex}.tar"));
    let mut out = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in [
        (layer_name.as_str(), &layer[..]),
        (&format!("{config_hex}.json"), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, data).unwrap();
    }
    out.finish().unwrap();
    (path, format!("sha256:{config_hex}"))
}

/// Loads the shared test image (once per test binary) and returns its id.
pub async fn image(api: &DockerApi) -> String {
    static ID: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ID.get_or_init(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (archive, id) = busybox_archive(dir.path(), IMAGE, "shared");
        api.load_image(&archive).await.unwrap();
        id
    })
    .await
    .clone()
}

pub fn spec(image: &str, script: &str) -> RunSpec {
    RunSpec {
        image: image.to_string(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        user: "1000:1000".into(),
        workdir: "/build".into(),
        scratch: "/build".into(),
        input: vec![],
        volumes: vec![],
        outputs: vec![],
        limits: Limits {
            memory_bytes: Some(256 << 20),
            pids: Some(64),
            nano_cpus: Some(1_000_000_000),
            tmpfs_bytes: 16 << 20,
            timeout: Duration::from_secs(60),
        },
        network: false,
        follow: None,
    }
}

pub fn log(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.log).into_owned()
}

async fn run_ok(api: &DockerApi, spec: &RunSpec) -> RunOutcome {
    let _g = FORK_LOCK.read().await;
    match api.run(spec).await {
        Ok(o) => o,
        Err(e) => panic!("run failed: {e}"),
    }
}

pub async fn sandbox(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    let script = "id -u; id -g; \
        touch /rootfs-write 2>/dev/null && echo ROOT_WRITABLE || echo ROOT_READONLY; \
        touch /build/x && echo SCRATCH_WRITABLE; \
        touch /tmp/x && echo TMP_WRITABLE; \
        echo NET: $(ls /sys/class/net); \
        wget -q -T 3 -O /dev/null http://1.1.1.1/ 2>/dev/null && echo NET_REACHABLE || echo NET_UNREACHABLE; \
        echo to-stderr >&2";
    let o = run_ok(&api, &spec(&image, script)).await;
    let text = log(&o);
    assert_eq!(o.exit_code, 0, "{text}");
    assert!(!o.timed_out);
    // Docker interleaves stdout and stderr as its two copiers deliver them: with the log
    // size-capped (max-size), the stderr line now and then comes first.
    let lines: Vec<&str> = text.lines().collect();
    let stdout: Vec<&str> = lines.iter().copied().filter(|l| *l != "to-stderr").collect();
    assert_eq!(&stdout[..2], ["1000", "1000"], "{text}");
    for want in ["ROOT_READONLY", "SCRATCH_WRITABLE", "TMP_WRITABLE", "NET: lo", "NET_UNREACHABLE", "to-stderr"] {
        assert!(lines.contains(&want), "{want:?} missing from log:\n{text}");
    }
}

fn entries(tar_bytes: &[u8]) -> Vec<(String, String)> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            (e.path().unwrap().display().to_string(), s)
        })
        .collect()
}

pub async fn input_and_outputs(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    // Owned by root in the tar: run must hand it to the build user.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "src", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    b.append_data(&mut h, "src/hello.txt", &b"hello\n"[..]).unwrap();
    let mut s = spec(
        &image,
        "cat src/hello.txt && echo again >> src/hello.txt && touch src/new && \
         mkdir -p out/sub && echo result > out/r.txt && echo deep > out/sub/d.txt && ls -ld /build",
    );
    s.input = vec![ckms::engine::Input::user(b.into_inner().unwrap())];
    s.workdir = "/build".into();
    s.outputs = vec!["/build/out/r.txt".into(), "/build/missing".into(), "/build/out".into()];
    let o = run_ok(&api, &s).await;
    let text = log(&o);
    assert_eq!(o.exit_code, 0, "{text}");
    assert!(text.starts_with("hello\n"), "{text}");
    let paths: Vec<&str> = o.outputs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/build/out/r.txt", "/build/out"], "a missing output is absent, not an error");
    assert_eq!(entries(&o.outputs[0].1), [("r.txt".to_string(), "result\n".to_string())]);
    let dir = entries(&o.outputs[1].1);
    assert!(dir.contains(&("sub/d.txt".to_string(), "deep\n".to_string())), "{dir:?}");
}

/// A second volume with inputs of both owners: the build user's entries writable, uid 0's
/// readable only; the volume root itself is the build user's.
pub async fn volumes_and_owners(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    let tar_of = |dir: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{dir}/f"), &b"in\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let mut s = spec(
        &image,
        "cd /srv/second && cat theirs/f && stat -c '%u %n' . mine/f theirs/f theirs; \
         echo x >> mine/f && echo MINE_WRITABLE; touch new && echo ROOT_OF_VOLUME_WRITABLE; \
         (echo x >> theirs/f) 2>/dev/null && echo THEIR_FILE_WRITABLE || echo THEIR_FILE_READONLY; \
         touch theirs/new 2>/dev/null && echo THEIR_DIR_WRITABLE || echo THEIR_DIR_READONLY; \
         touch /build/x && echo SCRATCH_WRITABLE",
    );
    s.volumes = vec![ckms::engine::Volume {
        path: "/srv/second".into(),
        input: vec![ckms::engine::Input::user(tar_of("mine")), ckms::engine::Input::root(tar_of("theirs"))],
    }];
    let o = run_ok(&api, &s).await;
    let text = log(&o);
    assert_eq!(o.exit_code, 0, "{text}");
    for want in [
        "in",
        "1000 .",
        "1000 mine/f",
        "0 theirs/f",
        "0 theirs",
        "MINE_WRITABLE",
        "ROOT_OF_VOLUME_WRITABLE",
        "THEIR_FILE_READONLY",
        "THEIR_DIR_READONLY",
        "SCRATCH_WRITABLE",
    ] {
        assert!(text.lines().any(|l| l == want), "{want:?} missing from log:\n{text}");
    }
}

pub async fn exit_code(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    let o = run_ok(&api, &spec(&image, "echo failing; exit 3")).await;
    assert_eq!((o.exit_code, o.timed_out), (3, false));
    assert_eq!(log(&o), "failing\n");
}

pub async fn timeout(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    let marker = format!("ckms-timeout-{}", std::process::id());
    let mut s = spec(&image, &format!("echo started; sleep 100; echo {marker}"));
    s.limits.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let o = run_ok(&api, &s).await;
    assert!(o.timed_out, "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(40), "took {:?}", t.elapsed());
    assert!(log(&o).contains("started"), "log is kept on timeout: {}", log(&o));
    let left = api.leftover_containers().await.unwrap();
    assert!(left.iter().all(|(_, cmd)| !cmd.contains(&marker)), "container left behind: {left:?}");
}

pub async fn fork_bomb(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    // Never bomb the host: first prove the limit is in force in this very configuration.
    let probe = run_ok(
        &api,
        &spec(&image, "grep 'Max processes' /proc/self/limits; cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; true"),
    )
    .await;
    let text = log(&probe);
    let nproc_ok = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| n <= 64);
    let pids_ok = text.lines().any(|l| l.trim() == "64");
    assert!(
        nproc_ok || pids_ok,
        "neither an nproc rlimit nor a pids cgroup limit of 64 is in force; not running the fork bomb:\n{text}"
    );
    let _g = FORK_LOCK.write().await;
    let mut s = spec(&image, "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived");
    s.limits.timeout = Duration::from_secs(15);
    let t = Instant::now();
    let o = api.run(&s).await.expect("fork bomb run returns");
    assert!(t.elapsed() < Duration::from_secs(90), "took {:?}", t.elapsed());
    eprintln!("fork bomb: exit {} timed_out {} after {:?}", o.exit_code, o.timed_out, t.elapsed());
    drop(_g);
    // The engine and host still work.
    let o = run_ok(&api, &spec(&image, "echo alive")).await;
    assert_eq!(log(&o), "alive\n");
}

pub async fn images(var: &str) {
    let api = api(var).await;
    let shared = image(&api).await;
    assert_eq!(api.image_id(IMAGE).await.unwrap().as_deref(), Some(shared.as_str()));
    assert_eq!(api.image_id("localhost/ckms-test/absent:1").await.unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    let tag = format!("localhost/ckms-test/removable:{}", std::process::id());
    let (archive, id) = busybox_archive(dir.path(), &tag, &format!("removable-{}", std::process::id()));
    api.load_image(&archive).await.unwrap();
    assert_eq!(api.image_id(&tag).await.unwrap().as_deref(), Some(id.as_str()));
    let layers = api.image_layers(&tag).await.unwrap();
    assert_eq!(layers.len(), 1);
    assert!(layers[0].starts_with("sha256:"));
    assert_eq!(api.image_layers(&shared).await.unwrap(), layers, "same layer, by id too");

    let listed = api.list_images(LABEL).await.unwrap();
    let mine = listed.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("{id} not in {listed:?}"));
    assert_eq!(mine.tags, std::slice::from_ref(&tag));
    assert!(mine.labels[LABEL].starts_with("removable-"));
    assert!(mine.size > 1_000_000 && mine.created == 1_704_067_200, "{mine:?}");
    assert!(api.list_images("io.ckms.no-such-label").await.unwrap().is_empty());

    api.remove_image(&tag).await.unwrap();
    assert_eq!(api.image_id(&id).await.unwrap(), None);
    assert!(matches!(api.remove_image(&tag).await, Err(EngineError::ImageNotFound { .. })));
    assert!(matches!(api.image_layers(&tag).await, Err(EngineError::ImageNotFound { .. })));
}

pub async fn load_errors(var: &str) {
    let api = api(var).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"this is not a tar archive at all, not even close").unwrap();
    let err = api.load_image(&bad).await.unwrap_err();
    assert!(matches!(err, EngineError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains(api.endpoint()), "{err}");
    let missing = api.load_image(&dir.path().join("missing.tar")).await.unwrap_err();
    assert!(matches!(missing, EngineError::Io { .. }), "{missing:?}");
}

pub async fn refusals(var: &str) {
    let api = api(var).await;
    let image = image(&api).await;
    let err = api.run(&spec("localhost/ckms-test/absent:1", "true")).await.unwrap_err();
    assert!(matches!(err, EngineError::ImageNotFound { .. }), "{err:?}");
    let mut s = spec(&image, "true");
    s.user = "0:0".into();
    assert!(matches!(api.run(&s).await, Err(EngineError::BadSpec(_))));
}

pub async fn info(var: &str, kind: EngineKind, rootless: bool) {
    let api = api(var).await;
    let info = api.info().await.unwrap();
    assert_eq!((info.kind, info.rootless), (kind, rootless), "{info:?}");
    assert_eq!(info.endpoint, endpoint(var));
    assert!(!info.version.is_empty() && !info.api_version.is_empty(), "{info:?}");
    // Explicit setting: connect uses exactly this endpoint.
    let settings = ckms::engine::EngineSettings { host: Some(endpoint(var)), rootless_user: None };
    let conn = ckms::engine::connect(&settings, &ckms::report::Silent).await.unwrap();
    assert_eq!((conn.info.kind, conn.info.endpoint.as_str()), (kind, endpoint(var).as_str()));
}

#[macro_export]
macro_rules! engine_tests {
    ($var:expr, $kind:expr, $rootless:expr) => {
        #[tokio::test]
        async fn info() {
            suite::info($var, $kind, $rootless).await
        }
        #[tokio::test]
        async fn sandbox() {
            suite::sandbox($var).await
        }
        #[tokio::test]
        async fn input_and_outputs() {
            suite::input_and_outputs($var).await
        }
        #[tokio::test]
        async fn volumes_and_owners() {
            suite::volumes_and_owners($var).await
        }
        #[tokio::test]
        async fn exit_code() {
            suite::exit_code($var).await
        }
        #[tokio::test]
        async fn timeout() {
            suite::timeout($var).await
        }
        #[tokio::test]
        async fn fork_bomb() {
            suite::fork_bomb($var).await
        }
        #[tokio::test]
        async fn images() {
            suite::images($var).await
        }
        #[tokio::test]
        async fn load_errors() {
            suite::load_errors($var).await
        }
        #[tokio::test]
        async fn refusals() {
            suite::refusals($var).await
        }
    };
}
