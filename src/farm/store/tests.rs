use super::check::Damage;
use super::*;
use std::path::PathBuf;

pub(crate) fn record(key: &str, files: Vec<StoredFile>) -> Record {
    Record {
        format: FORMAT,
        key: key.into(),
        module: "hello".into(),
        version: "1.0".into(),
        kernel: "6.1.0-56-amd64".into(),
        arch: "x86_64".into(),
        profile: "debian-bookworm".into(),
        source: SourceInfo { given: "./hello".into(), package: None, package_version: None, digest: "d".into() },
        status: Status::Built,
        exit_code: 0,
        reason: None,
        modules: files
            .into_iter()
            .map(|f| StoredModule { name: "hello".into(), dest: "/updates/dkms".into(), unsigned: f, signed: None })
            .collect(),
        make_log: None,
        signer: None,
        image: "img".into(),
        image_lock: "lock".into(),
        extra_packages: vec![],
        seconds: 1.0,
        make_seconds: Some(0.5),
        built_at: "2026-12-05T00:00:00Z".into(),
        engine: "Podman 4.3.1".into(),
        ckms_version: "0.1.0".into(),
        proof: None,
    }
}

pub(crate) fn stage(store: &Store, key: &str, ko: &[u8]) -> (Staging, Record) {
    let staged = store.staging(key).unwrap();
    std::fs::create_dir_all(staged.path().join("modules")).unwrap();
    std::fs::write(staged.path().join("modules/hello.ko"), ko).unwrap();
    let f = stored_file(staged.path(), "modules/hello.ko").unwrap();
    (staged, record(key, vec![f]))
}

#[test]
fn an_entry_is_found_after_commit_and_damage_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert!(matches!(store.get("k1"), Lookup::Missing));
    let (staged, rec) = stage(&store, "k1", b"\x7fELF one");
    store.commit(staged, &rec).unwrap();
    let Lookup::Found(found) = store.get("k1") else { panic!("not found") };
    assert_eq!(*found, rec);
    assert_eq!(store.records(), vec![rec]);
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "nothing left in tmp");

    std::fs::write(store.entry_dir("k1").join("modules/hello.ko"), b"\x7fELF tampered").unwrap();
    assert!(matches!(store.get("k1"), Lookup::Damaged(d) if d.why.contains("its record says") && d.pair.is_some()));
    // A new build of the same key replaces the damaged entry.
    let (staged, rec) = stage(&store, "k1", b"\x7fELF two");
    store.commit(staged, &rec).unwrap();
    assert!(matches!(store.get("k1"), Lookup::Found(_)));
}

#[test]
fn an_uncommitted_entry_is_not_there_and_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (staged, _rec) = stage(&store, "k2", b"x");
    let left = killed(staged);
    assert!(matches!(store.get("k2"), Lookup::Missing));
    store.clean_staging();
    assert!(!left.exists());
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_record_cannot_point_outside_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (staged, mut rec) = stage(&store, "k3", b"x");
    rec.modules[0].unsigned.file = "../../ckms-store.json".into();
    assert!(store.commit(staged, &rec).is_err());
}

#[test]
fn a_directory_holding_something_else_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "x").unwrap();
    assert!(matches!(Store::open(dir.path()), Err(FarmError::NotAStore(_))));
    std::fs::write(dir.path().join(MARKER), "{\"format\": 99}").unwrap();
    assert!(matches!(Store::open(dir.path()), Err(FarmError::StoreFormat { .. })));
}

/// As if the writer of `staged` were killed: its directory stays, its lock goes.
fn killed(mut staged: Staging) -> PathBuf {
    staged.placed = true;
    staged.dir.clone()
}

#[test]
fn creators_of_one_new_store_all_open_it() {
    for _ in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let start = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            let opened: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        Store::open(&root).map(|_| ())
                    })
                })
                .collect();
            for o in opened {
                o.join().unwrap().unwrap();
            }
        });
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(MARKER_TMP)), "{left:?}");
    }
    // A creator killed before its marker was in place left only its temporary marker.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{MARKER_TMP}abc")), "").unwrap();
    Store::open(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_waits_for_the_first_and_takes_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store.lock("k").unwrap();
    let (staged, rec) = stage(&store, "k", b"first");
    // Measured from before the spawn: a loaded machine may start the task late.
    let started = std::time::Instant::now();
    let second = {
        let store = store.clone();
        tokio::spawn(async move {
            let status = once(&store, "k", |_| true, || async { panic!("built a second time") }).await;
            (status.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the second writer waits for the lock");
    store.commit(staged, &rec).unwrap();
    drop(first);
    let (status, waited) = second.await.unwrap();
    assert_eq!(status, Status::Built, "it takes the first's entry");
    assert!(waited >= std::time::Duration::from_millis(200));
    // A damaged entry is not taken: it is built again.
    std::fs::write(store.entry_dir("k").join("modules/hello.ko"), b"flipped").unwrap();
    let built = once(&store, "k", |_| true, || async { Ok(stage(&store, "k", b"again")) }).await.unwrap();
    assert_eq!(built, Status::Built);
    assert!(matches!(store.get("k"), Lookup::Found(_)));
}

#[test]
fn a_running_writers_staging_is_never_cleaned_a_dead_ones_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (alive, rec) = stage(&store, "k", b"x");
    let dead = killed(stage(&store, "k", b"y").0);
    std::fs::write(store.root().join("tmp/stray"), "").unwrap();
    std::os::unix::fs::symlink("/etc", store.root().join("tmp/link")).unwrap();
    store.clean_staging();
    assert!(alive.path().join("modules/hello.ko").is_file(), "a live writer's entry stays");
    assert!(!dead.exists(), "a dead writer's entry goes");
    let left: Vec<_> = std::fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert_eq!(left.len(), 1, "only the live entry: {left:?}");
    assert!(std::path::Path::new("/etc/passwd").exists(), "a link is removed, not followed");
    store.commit(alive, &rec).unwrap();
    assert!(matches!(store.get("k"), Lookup::Found(_)));
}

#[test]
fn replacing_an_entry_leaves_no_moment_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (staged, rec) = stage(&store, "k", b"v0");
    store.commit(staged, &rec).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match store.get("k") {
                    Lookup::Found(_) => reads += 1,
                    other => panic!("a reader saw {other:?}"),
                }
            }
            reads
        });
        for i in 0..100 {
            let _lock = store.lock("k").unwrap();
            let (staged, rec) = stage(&store, "k", format!("v{i}").as_bytes());
            store.commit(staged, &rec).unwrap();
            // A writer replaces an entry once per build; hundreds a second here still.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "old entries removed");
}

#[test]
fn damage_is_named_with_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let commit = |key: &str, change: &dyn Fn(&mut Record)| {
        let (staged, mut rec) = stage(&store, key, b"\x7fELF");
        std::fs::write(staged.path().join("make.log"), "log").unwrap();
        rec.make_log = Some(stored_file(staged.path(), "make.log").unwrap());
        change(&mut rec);
        store.commit(staged, &rec).unwrap();
    };
    let damaged = |key: &str| match store.get(key) {
        Lookup::Damaged(d) => d,
        other => panic!("{key}: {other:?}"),
    };
    commit("unparseable", &|_| {});
    std::fs::write(store.entry_dir("unparseable").join(RESULT), "{\"format\": 1, ").unwrap();
    let d = damaged("unparseable");
    assert!(d.pair.is_none() && d.why.contains("result.json"), "{d}");

    commit("flipped", &|_| {});
    std::fs::write(store.entry_dir("flipped").join("modules/hello.ko"), b"\x7fELG").unwrap();
    let d = damaged("flipped");
    assert_eq!(d.pair.as_deref(), Some("hello/1.0 for 6.1.0-56-amd64"));
    assert!(d.why.contains("modules/hello.ko") && d.why.contains("its record says"), "{d}");

    // A record rewritten to name a file outside its entry, or a link inside it.
    commit("leaves", &|_| {});
    let path = store.entry_dir("leaves").join(RESULT);
    let text = std::fs::read_to_string(&path).unwrap().replace("\"make.log\"", "\"../../ckms-store.json\"");
    std::fs::write(&path, text).unwrap();
    assert!(damaged("leaves").why.contains("refused"));
    commit("link", &|_| {});
    let log = store.entry_dir("link").join("make.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(store.root().join(MARKER), &log).unwrap();
    assert!(damaged("link").why.contains("link"), "{}", damaged("link"));

    assert!(damaged("../pairs/flipped").why.contains("not a store key"));
    std::os::unix::fs::symlink(store.entry_dir("flipped"), store.entry_dir("linked")).unwrap();
    assert!(matches!(store.get("linked"), Lookup::Damaged(_)), "an entry that is a link");
    assert!(store.lock("../x").is_err());
    assert_eq!(Damage { key: "k".into(), pair: None, why: "w".into() }.to_string(), "k: w");
}
