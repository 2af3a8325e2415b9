//! A pod's result written by an attacker: each refused before anything of it is used, and
//! nothing stored. No engine: the result is refused before its image or its kernel is needed
//! (the plan here has neither, so a result that got further would fail the test).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::cache::sha256_hex;
use crate::farm::plan::Work;
use crate::kube::plan::{JobPlan, PodPair, FORMAT};
use crate::kube::transcript::{self, Transcript};
use crate::pair::inputs::KeyedPair;

const JOB: &str = "j";
/// Collect must answer within this, whatever the result holds (a FIFO, a device).
const WITHIN: Duration = Duration::from_secs(30);

fn key(index: usize) -> String {
    format!("{index}").repeat(64)
}

fn index_dir(root: &Path, index: usize) -> PathBuf {
    root.join("results").join(JOB).join(index.to_string())
}

/// Index 0 with an honest result; index 1 with the same files but no `result.json` (its pod
/// "failed"), so that only index 0 is read.
fn honest(root: &Path) {
    for index in [0, 1] {
        let dir = index_dir(root, index);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Transcript { asked: true, ..Default::default() };
        t.put(&dir, transcript::REQUEST, b"{}").unwrap();
        t.put(&dir, &transcript::reply_file("make"), b"make").unwrap();
        t.replies.push("make".into());
        t.put(&dir, "output-0.tar", &crate::testutil::tar_of(&[("make.log", b"ok")])).unwrap();
        t.outputs.push(("/var/lib/dkms/.ckms/out".into(), "output-0.tar".into()));
        t.put(&dir, transcript::LOG, b"log").unwrap();
        t.finish(&dir).unwrap();
    }
    let claim =
        Claim { job: JOB.into(), index: 0, key: key(0), module: "m".into(), version: "1".into(), kernel: "k".into() };
    std::fs::write(index_dir(root, 0).join(RESULT), serde_json::to_vec(&claim).unwrap()).unwrap();
}

/// Changes index 0's transcript.
fn edit(root: &Path, change: impl FnOnce(&mut Transcript)) {
    let dir = index_dir(root, 0);
    let mut t = Transcript::read(&dir).unwrap();
    change(&mut t);
    t.finish(&dir).unwrap();
}

/// Lists `name` in index 0's transcript as its build's output, with `sha256`.
fn output_named(root: &Path, name: &str, sha256: &str) {
    edit(root, |t| {
        t.outputs = vec![("/var/lib/dkms/.ckms/out".into(), name.into())];
        t.sha256.insert(name.into(), sha256.into());
    });
}

fn replace_output(root: &Path) -> PathBuf {
    let path = index_dir(root, 0).join("output-0.tar");
    std::fs::remove_file(&path).unwrap();
    path
}

/// `collect` of the results under `root` into the store there, in a thread of its own: a
/// result that makes it hang fails the test instead of hanging it.
fn collect_at(root: &Path) -> Collected {
    let root = root.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ctx = crate::lifecycle::testing::context(&root.join("ctx"));
        let store = Store::open(&root.join("store")).unwrap();
        let work = Work::for_store(&ctx, store.root());
        let pair = |i: usize| KeyedPair {
            source: 0,
            kernel: 0,
            arch: "x86_64".into(),
            image: 0,
            key: key(i),
            after: vec![],
            visible: vec![],
        };
        let plan = FarmPlan { sources: vec![], kernels: vec![], images: vec![], pairs: vec![pair(0), pair(1)] };
        let job = JobPlan {
            name: JOB.into(),
            kernel: "k".into(),
            profile: "debian-bookworm".into(),
            builder: "b".into(),
            builder_id: "sha256:0".into(),
            image: "i".into(),
            make_jobs: 1,
            timeout_secs: 60,
            space_bytes: 1 << 30,
            memory_bytes: 1 << 30,
            pids: 100,
            kernel_config: None,
            module_location: "/updates/dkms".into(),
            image_sources: None,
            pairs: vec![pair_of(0), pair_of(1)],
        };
        let kube = KubePlan { format: FORMAT, sources: vec![], kernels: vec![], profile: None, jobs: vec![job] };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let done = rt.block_on(collect(&ctx, &plan, &work, &store, &kube, &root.join("results"), None));
        let _ = tx.send(done.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(WITHIN).expect("collect answers in time").unwrap()
}

/// Index 0 refused with `words` in the reason, index 1 reported without a result, and nothing
/// stored: no entry, nothing staged, so nothing signed either. Returns the reason.
fn refused(root: &Path, words: &str) -> String {
    let started = Instant::now();
    let done = collect_at(root);
    assert!(done.stored.is_empty(), "{done:?}");
    assert_eq!(done.refused.len(), 1, "{done:?}");
    assert_eq!(done.missing.len(), 1, "{done:?}");
    let why = done.refused[0].clone();
    assert!(why.contains("index 0") && why.contains(words), "{why}");
    for sub in ["pairs", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(root.join("store").join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    // Refused from its name, type or size: never read whole.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    why
}

/// The digest of a file outside the result: never told.
fn digest_of(path: &str) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn the_honest_fixture_passes_the_checks() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    let dir = index_dir(root.path(), 0);
    claimed(&dir, JOB, 0, &pair_of(0)).unwrap();
    Transcript::read(&dir).unwrap().verify(&dir).unwrap();
}

fn pair_of(i: usize) -> PodPair {
    PodPair {
        key: key(i),
        module: "m".into(),
        version: "1".into(),
        arch: "x86_64".into(),
        visible: vec![],
        overrides: vec![],
    }
}

#[test]
fn an_absolute_name_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    output_named(root.path(), "/etc/passwd", &"0".repeat(64));
    let why = refused(root.path(), "not a plain relative path");
    assert!(!why.contains(&digest_of("/etc/passwd")), "{why}");
}

#[test]
fn a_name_with_dot_dot_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    output_named(root.path(), "../../../../../../../../etc/passwd", &"0".repeat(64));
    let why = refused(root.path(), "not a plain relative path");
    assert!(!why.contains(&digest_of("/etc/passwd")), "{why}");
}

#[test]
fn a_link_to_etc_shadow_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    std::os::unix::fs::symlink("/etc/shadow", replace_output(root.path())).unwrap();
    let why = refused(root.path(), "a symbolic link");
    if let Ok(shadow) = std::fs::read("/etc/shadow") {
        assert!(!why.contains(&sha256_hex(&shadow)), "{why}");
    }
}

#[test]
fn a_fifo_is_refused_without_waiting() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    let fifo = replace_output(root.path());
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap();
    refused(root.path(), "not a regular file");
}

#[test]
fn a_fifo_as_the_result_file_is_refused_without_waiting() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    let result = index_dir(root.path(), 0).join(RESULT);
    std::fs::remove_file(&result).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &result, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0)
        .unwrap();
    refused(root.path(), "not a regular file");
}

#[test]
fn dev_zero_is_refused_as_a_link_and_as_a_device() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    std::os::unix::fs::symlink("/dev/zero", replace_output(root.path())).unwrap();
    refused(root.path(), "a symbolic link");

    // A device node of its own: only root can make one (else the link above stands for it).
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    let node = replace_output(root.path());
    let zero = rustix::fs::makedev(1, 5);
    let mode = rustix::fs::Mode::from(0o600);
    if rustix::fs::mknodat(rustix::fs::CWD, &node, rustix::fs::FileType::CharacterDevice, mode, zero).is_ok() {
        refused(root.path(), "not a regular file");
    }
}

#[test]
fn a_10_gb_output_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    // Sparse: 10 GB that take no disk, and would take minutes to hash.
    let file = std::fs::File::create(replace_output(root.path())).unwrap();
    file.set_len(10 << 30).unwrap();
    refused(root.path(), "holds more than");
}

#[test]
fn a_name_in_another_pairs_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    // The other index's output, with its true digest: still not index 0's to name.
    let theirs = index_dir(root.path(), 1).join("output-0.tar");
    let digest = sha256_hex(&std::fs::read(&theirs).unwrap());
    output_named(root.path(), "../1/output-0.tar", &digest);
    refused(root.path(), "not a plain relative path");

    // The same through a link to the other index's directory.
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    std::os::unix::fs::symlink("../1", index_dir(root.path(), 0).join("sibling")).unwrap();
    output_named(root.path(), "sibling/output-0.tar", &digest);
    refused(root.path(), "a link or no directory");
}

#[test]
fn a_100_mb_transcript_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    honest(root.path());
    let file = std::fs::File::create(index_dir(root.path(), 0).join(transcript::FILE)).unwrap();
    file.set_len(100 << 20).unwrap();
    refused(root.path(), "holds more than");
}
