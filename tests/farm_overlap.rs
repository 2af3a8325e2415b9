//! Two overlapping `farm build`s on one new store, on each engine (fails when it is missing),
//! with a stream of readers during them: `farm build --dry-run`, `farm status` and `farm
//! publish --format sysext`, each over and over on its own thread until both builds are done. Both builds exit
//! 0; the engine's live event stream shows one container created per pair (4 pairs, 3 + 3 in the two
//! matrices, 2 shared); no reader fails, none reports a damaged entry, nothing stays staged; a
//! third run has nothing to do and publish ships every pair.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use farm::{module, Farm, C};

#[path = "support/farm.rs"]
mod farm;

/// What the readers did while the builds ran.
#[derive(Debug, Default)]
struct Reads {
    dry_runs: usize,
    statuses: usize,
    /// Publishes that shipped something, and those that found no built pair yet.
    published: usize,
    nothing_yet: usize,
}

fn overlap(var: &str) {
    let farm = Farm::new(var);
    let src = farm.dir.path().join("src");
    // Each build sleeps in make: the two runs are at their shared pairs at the same time.
    let mods: Vec<PathBuf> = (1..=4)
        .map(|i| module(&src, &format!("fov{i}"), "", &format!("obj-m := fov{i}.o\n$(shell sleep 2)\n"), C))
        .collect();
    let all: Vec<&Path> = mods.iter().map(PathBuf::as_path).collect();
    farm.key_pair("mok");
    let watch = Creations::watch(&farm.engine, farm.dir.path());
    let started = Instant::now();
    let start = |sources: &[&Path]| {
        let args = farm.build_args(true, sources, &[]);
        farm.ckms(&args.iter().map(String::as_str).collect::<Vec<_>>()).start()
    };
    let (first, second) = (start(&all[..3]), start(&all[1..]));
    let pids = [first.pid(), second.pid()];
    let done = AtomicBool::new(false);
    let (first, second, reads) = std::thread::scope(|s| {
        let readers = s.spawn(|| readers(&farm, &all, &done));
        let (first, second) = (first.wait(), second.wait());
        done.store(true, Ordering::Relaxed);
        (first, second, readers.join().unwrap())
    });
    let seconds = started.elapsed().as_secs_f64();
    for run in [&first, &second] {
        run.expect_code(0);
        assert!(!run.stderr.contains("damaged"), "{run}");
        assert_eq!(run.json_result()["pairs"], 3, "{run}");
    }
    let created = watch.stop();
    let by_run: Vec<usize> =
        pids.iter().map(|pid| created.iter().filter(|n| n.starts_with(&format!("ckms-run-{pid}-"))).count()).collect();
    println!("overlapping builds ({var}): {seconds:.1} s; containers created by run: {by_run:?}; reads during them: {reads:?}");
    assert_eq!(by_run.iter().sum::<usize>(), 4, "every pair built once: {created:?}{first}{second}");
    assert!(reads.dry_runs > 0 && reads.statuses > 0 && reads.published + reads.nothing_yet > 0, "{reads:?}");

    let store = farm.store();
    assert_eq!(support::entries(&store.join("pairs")).len(), 4);
    assert!(support::entries(&store.join("tmp")).is_empty(), "something stayed staged");
    let again = farm.build(true, &all);
    again.expect_code(77);
    assert_eq!(again.json_result()["built_now"], 0, "{again}");
    let out = farm.dir.path().join("published");
    publish(&farm, &out).expect_code(0);
    assert_eq!(support::entries(&out).iter().filter(|f| f.ends_with(".raw")).count(), 4);
}

/// Dry runs, statuses and publishes, each kind on its own thread, one after the other (with a
/// pause, leaving the builds some CPU), from the moment the store exists until `done`.
fn readers(farm: &Farm, sources: &[&Path], done: &AtomicBool) -> Reads {
    let store = farm.store();
    // Before its marker is there, there is no store to read (publish says so, exit 2).
    while !store.join("ckms-store.json").exists() && !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let until_done = |read: &dyn Fn()| {
        let mut n = 0;
        while !done.load(Ordering::Relaxed) {
            read();
            n += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        n
    };
    let dry_run = || {
        let args = farm.build_args(false, sources, &["--dry-run"]);
        let dry = farm.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        dry.expect_code(0);
        assert!(!dry.stderr.contains("damaged"), "{dry}");
    };
    let status = || {
        let status = farm.run(&["--json", "farm", "status", "--store", store.to_str().unwrap()]);
        status.expect_code(0);
        assert!(!status.stderr.contains("damaged"), "{status}");
        for line in status.stdout.lines() {
            let pair: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}{status}"));
            assert_eq!(pair["status"], "built", "{status}");
        }
    };
    let nothing_yet = AtomicUsize::new(0);
    let publish = || {
        let published = publish(farm, &farm.dir.path().join("published-meanwhile"));
        match published.code {
            0 => {}
            2 if published.stderr.contains("has no built module") => _ = nothing_yet.fetch_add(1, Ordering::Relaxed),
            _ => panic!("publish failed during the builds{published}"),
        }
        assert!(!published.stderr.contains("damaged"), "{published}");
    };
    std::thread::scope(|s| {
        let dry_runs = s.spawn(|| until_done(&dry_run));
        let statuses = s.spawn(|| until_done(&status));
        let publishes = until_done(&publish);
        let nothing_yet = nothing_yet.load(Ordering::Relaxed);
        Reads {
            dry_runs: dry_runs.join().unwrap(),
            statuses: statuses.join().unwrap(),
            published: publishes - nothing_yet,
            nothing_yet,
        }
    })
}

fn publish(farm: &Farm, out: &Path) -> support::Outcome {
    let (store, cert) = (farm.store(), farm.dir.path().join("mok.pub"));
    let mut args = vec!["farm", "publish", "--store", store.to_str().unwrap(), "--format", "sysext"];
    args.extend(["--out", out.to_str().unwrap(), "--cert", cert.to_str().unwrap()]);
    farm.run(&args)
}

/// The engine's live event stream of container creations, from `watch` to `stop`. Live, since
/// past events are bounded on both engines: Docker replays only the last 256 events of every
/// kind, and Podman 4.3's file reader gives up at `until` wherever it is in a long log.
struct Creations {
    curl: Child,
    out: PathBuf,
}

impl Creations {
    fn watch(engine: &str, dir: &Path) -> Self {
        let socket = engine.strip_prefix("unix://").unwrap_or(engine);
        let (out, headers) = (dir.join("events.json"), dir.join("events.headers"));
        let curl = Command::new("curl")
            .args(["-sfN", "--unix-socket", socket, "-D", headers.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .args(["-G", "http://d/events", "--data-urlencode", r#"filters={"type":["container"],"event":["create"]}"#])
            .spawn()
            .expect("curl is needed by this test: apt-get install curl");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&headers).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "the engine at {engine} did not open its event stream in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The engine subscribes just around answering; give it a moment before anything happens.
        std::thread::sleep(Duration::from_secs(1));
        Creations { curl, out }
    }

    /// The names of the containers created while watching.
    fn stop(mut self) -> Vec<String> {
        // Podman polls its event file (every 250 ms): let the last creations reach the stream.
        std::thread::sleep(Duration::from_secs(2));
        assert!(self.curl.try_wait().unwrap().is_none(), "the engine's event stream ended early");
        self.curl.kill().unwrap();
        self.curl.wait().unwrap();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let events = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
        events.map(|e| e.unwrap()["Actor"]["Attributes"]["name"].as_str().unwrap_or_default().to_string()).collect()
    }
}

#[test]
fn overlapping_builds_on_docker() {
    overlap("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn overlapping_builds_on_podman() {
    overlap("CKMS_TEST_PODMAN_HOST");
}
