//! Two overlapping farm runs and a stream of readers (status, dry run, publish) on one new
//! store, with a fake build (no engine) behind the real schedule and the real store protocol
//! ([`crate::farm::store::once`]): both runs finish, every pair is built once, and no reader
//! sees a damaged or half-written entry. Here rather than in `farm`: publishing reads the farm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::farm::report;
use crate::farm::schedule::{self, Capacity, Executor, Outcome, Task};
use crate::farm::store::tests::record;
use crate::farm::store::{once, stored_file, Lookup, Record, Staging, Status, Store};
use crate::farm::FarmError;
use crate::profile::Catalog;

use super::{pairs, PublishError};

const PAIRS: usize = 18;

/// A run's executor: pairs `keys[i]`, each "built" by writing a module named after its key.
struct FakeRun<'a> {
    store: Store,
    keys: Vec<String>,
    builds: &'a Mutex<HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl Executor for FakeRun<'_> {
    async fn provision(&self, _image: usize) -> Result<(), FarmError> {
        Ok(())
    }

    async fn build(&self, index: usize, _task: &Task, _jobs: u32) -> Result<Status, FarmError> {
        let key = &self.keys[index];
        once(&self.store, key, |_| true, || self.fake_build(key)).await
    }
}

impl FakeRun<'_> {
    async fn fake_build(&self, key: &str) -> Result<(Staging, Record), FarmError> {
        *self.builds.lock().unwrap().entry(key.to_string()).or_default() += 1;
        let staged = self.store.staging(key)?;
        std::fs::create_dir_all(staged.path().join("modules")).unwrap();
        std::fs::write(staged.path().join("modules/hello.ko"), key.as_bytes()).unwrap();
        // Staged long enough for readers and other writers' cleaning to run meanwhile.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut r = record(key, vec![stored_file(staged.path(), "modules/hello.ko")?]);
        r.module = format!("m-{key}");
        Ok((staged, r))
    }
}

/// One `farm build` of `keys`, as a process would run it: its own store handle, cleaning.
async fn farm_build(root: &std::path::Path, keys: &[String], builds: &Mutex<HashMap<String, usize>>) -> Vec<Outcome> {
    let store = Store::open(root).unwrap();
    store.clean_staging();
    let tasks: Vec<Task> =
        keys.iter().map(|k| Task { label: k.clone(), image: 0, after: vec![], estimate: None, size: 1 }).collect();
    let run = FakeRun { store, keys: keys.to_vec(), builds };
    let capacity = Capacity { slots: 3, cores: 3, provisioners: 1 };
    schedule::run(&tasks, &run, capacity, &|_| {}).await
}

/// Status, report, dry-run and publish as they read the store, until `done`; how many reads.
fn readers(root: &std::path::Path, done: &AtomicBool, keys: &[String]) -> usize {
    let catalog = Catalog::load(&[]).unwrap();
    let mut reads = 0;
    while !done.load(Ordering::Relaxed) {
        let store = Store::open(root).unwrap();
        let m = report::matrix(&store);
        assert!(m.damaged.is_empty(), "status saw damage: {:?}", m.damaged);
        for k in keys {
            assert!(!matches!(store.get(k), Lookup::Damaged(_)), "a dry run saw {k} damaged");
        }
        match pairs::read(&store, &catalog, &[], &[], false) {
            Ok(_) | Err(PublishError::NothingBuilt { .. }) => {}
            Err(e) => panic!("publish: {e}"),
        }
        // Another writer starting: it cleans up after the dead only.
        store.clean_staging();
        reads += 1;
    }
    reads
}

/// `farm_build` on a thread and a runtime of its own, as another process would.
fn on_its_own(root: &std::path::Path, keys: &[String], builds: &Mutex<HashMap<String, usize>>) -> Vec<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(farm_build(root, keys, builds))
}

#[test]
fn two_overlapping_builds_and_readers_build_every_pair_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("new-store");
    let keys: Vec<String> = (0..PAIRS).map(|i| format!("key{i:02}")).collect();
    // Overlapping matrices: 0..12 and 6..18.
    let (first, second) = (keys[..12].to_vec(), keys[6..].to_vec());
    let builds = Mutex::new(HashMap::new());
    let done = AtomicBool::new(false);
    let (a, b, reads) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2).map(|_| s.spawn(|| readers(&root, &done, &keys))).collect();
        let a = s.spawn(|| on_its_own(&root, &first, &builds));
        let b = s.spawn(|| on_its_own(&root, &second, &builds));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        done.store(true, Ordering::Relaxed);
        let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
        (a, b, reads)
    });
    assert!(a.iter().chain(&b).all(|o| matches!(o, Outcome::Done(Status::Built))), "{a:?} {b:?}");
    let builds = builds.into_inner().unwrap();
    assert_eq!(builds.len(), PAIRS, "every pair built: {builds:?}");
    assert!(builds.values().all(|&n| n == 1), "each once: {builds:?}");
    assert!(reads > 0);
    let store = Store::open(&root).unwrap();
    let (published, _) = pairs::read(&store, &Catalog::load(&[]).unwrap(), &[], &[], false).unwrap();
    assert_eq!(published.len(), PAIRS);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0, "nothing left staged");
}
