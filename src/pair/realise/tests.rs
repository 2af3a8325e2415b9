//! Every way one pair's realisation ends, on the fake engine: no container, no index.

use std::time::Duration;

use super::*;
use crate::build::{BuiltView, CONTAINER_TREE};
use crate::diagnose::Diagnose;
use crate::engine::fake::{Call, FakeEngine};
use crate::engine::{RunOutcome, RunSpec};
use crate::profile::Catalog;
use crate::report::Recorder;
use crate::sign::{keys, Locations};
use crate::testutil::{input_entries, tar_of};

const KERNEL: &str = "6.1.0-56-amd64";
const OUT: &str = "/var/lib/dkms/.ckms/out";

/// What bash printed of a conf: `hello` (or `name`) builds `<name>.ko`, plus `extra` directives.
fn conf_json(name: &str, extra: &str) -> String {
    format!(
        r#"{{"context":{{"kernel_source_dir":"/k","dkms_tree":"/var/lib/dkms"}},
        "directives":{{"PACKAGE_NAME":{{"0":"{name}"}},"PACKAGE_VERSION":{{"0":"1"}},"BUILT_MODULE_NAME":{{"0":"{name}"}}{extra}}}}}"#
    )
}

fn outcome(exit_code: i64, timed_out: bool, files: &[(&str, &[u8])]) -> RunOutcome {
    RunOutcome { exit_code, timed_out, log: b"driver says hi\n".to_vec(), outputs: vec![(OUT.into(), tar_of(files))] }
}

/// A host with module sources, a key pair, and what a realisation needs around them.
struct Host {
    dir: tempfile::TempDir,
    catalog: Catalog,
    signer: Signer,
    report: Recorder,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let loc = Locations {
            conf_dir: dir.path().join("etc/dkms"),
            dkms_dir: dir.path().join("var/lib/dkms"),
            own_dir: dir.path().join("var/lib/ckms"),
            kernel: None,
        };
        let signer = keys::generate(&loc.resolve(None, None), false).unwrap();
        for m in ["hello", "base"] {
            let src = dir.path().join(format!("src/{m}-1"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("dkms.conf"), format!("PACKAGE_NAME={m}\n")).unwrap();
            std::fs::write(src.join(format!("{m}.c")), "int x;").unwrap();
        }
        Host { dir, catalog: Catalog::load(&[]).unwrap(), signer, report: Recorder::default() }
    }

    fn source(&self, module: &str) -> PathBuf {
        self.dir.path().join(format!("src/{module}-1"))
    }

    /// Realises `module` for the kernel (which signs and compresses with xz) on `engine`.
    async fn realise(
        &self,
        engine: &FakeEngine,
        module: &str,
        siblings: &[Sibling],
        depends: &CheckDepends<'_>,
    ) -> (Result<Realised, PairError>, tempfile::TempDir) {
        let mv = ModuleVersion { module: module.into(), version: "1".into() };
        let source = self.source(module);
        let r = Realise {
            mv: &mv,
            source: &source,
            siblings,
            overrides: &[],
            recipe: self.catalog.recipe("builder").unwrap(),
            image: "localhost/ckms/builder:k",
            profile: self.catalog.profile("debian-bookworm").unwrap(),
            kernel: KernelFacts {
                release: KERNEL.into(),
                arch: "x86_64".into(),
                config: Some("CONFIG_MODULE_SIG_HASH=\"sha256\"\nCONFIG_MODULE_COMPRESS_XZ=y\n".into()),
            },
            jobs: 2,
            limits: Limits {
                timeout: Duration::from_secs(60),
                space_bytes: 64 << 20,
                memory_bytes: 1 << 30,
                pids: 512,
            },
            follow: None,
            signing: Some(SignWith { hash: "sha256".into(), key: Key::Loaded(&self.signer) }),
            report: &self.report,
        };
        let work = tempfile::tempdir().unwrap();
        (realise(engine, &r, depends, work.path()).await, work)
    }
}

fn met(_: &BuildPlan) -> Depends {
    Depends::Met
}

/// The files the driver was answered with (`abort`, or the plan ending in `ready`).
fn replies(engine: &FakeEngine) -> Vec<Vec<String>> {
    engine
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Reply(files) => Some(files.into_iter().map(|(n, _)| n).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_built_pair_is_staged_signed_compressed_and_unsigned_beside() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", ""));
    engine.push_run(Ok(outcome(0, false, &[("make.log", b"cc hello.c\n"), ("modules/hello.ko", b"\x7fELF")])));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Built(staged) = done.unwrap() else { panic!("not built") };
    let m = &staged.manifest;
    assert_eq!(m.modules[0].file, Path::new("module/hello.ko.xz"));
    assert_eq!(m.sig_hash.as_deref(), Some("sha256"));
    assert_eq!(m.signed_by, Some(host.signer.fingerprint()));
    assert_eq!(std::fs::read(staged.dir.join("unsigned/hello.ko")).unwrap(), b"\x7fELF", "as the build made it");
    let packed = std::fs::read(staged.dir.join("module/hello.ko.xz")).unwrap();
    let signed = Compression::Xz.decompress(&packed).unwrap();
    sign::verify(&signed, &host.signer.cert, Path::new("hello.ko"), Path::new("mok.pub")).unwrap();
    assert_eq!(std::fs::read(staged.dir.join("log/make.log")).unwrap(), b"cc hello.c\n");
    assert_eq!(Manifest::read(&staged.dir).unwrap(), *m);
    assert_eq!(
        replies(&engine),
        [["make", "patches", "post_add", "pre_build", "post_build", "modules", "header", "ready"]]
    );
}

#[tokio::test]
async fn a_make_failure_is_a_value_with_dkms_code_and_the_whole_log() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", ""));
    engine.push_run(Ok(outcome(status::MAKE_FAILED, false, &[("make.log", b"hello.c:1: error: expected ';'\n")])));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Failed(failed) = done.unwrap() else { panic!("not a failure") };
    assert_eq!((failed.what.as_str(), failed.code), ("Bad return status for module build", code::BUILD_FAILED));
    let log = String::from_utf8_lossy(&failed.log);
    assert!(log.starts_with("hello.c:1: error") && log.contains("driver says hi"), "{log}");
    assert_eq!(failed.first_error.as_ref().map(ToString::to_string).as_deref(), Some("hello.c:1: expected ';'"));
    let mv = ModuleVersion { module: "hello".into(), version: "1".into() };
    let err = failed.into_error(&mv, KERNEL, "x86_64", "/x/make.log".into());
    assert_eq!(err.exit_code(), code::BUILD_FAILED);
    // ckms's hint quotes it; dkms's words (the dialect's build_failed) stay its own.
    assert_eq!(
        err.hint().as_deref(),
        Some("First error: hello.c:1: expected ';'\nConsult /x/make.log for more information.")
    );
    assert_eq!(err.dkms().map(|s| s.key), Some("build_failed"));
}

#[tokio::test]
async fn a_timeout_is_a_failure_that_says_how_to_raise_the_limit() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", ""));
    engine.push_run(Ok(outcome(137, true, &[])));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Failed(failed) = done.unwrap() else { panic!("not a failure") };
    assert_eq!(failed.code, code::TIMEOUT);
    assert!(failed.what.contains("did not finish in 60 s"), "{}", failed.what);
    assert!(failed.advice.unwrap().contains("CKMS_BUILD_TIMEOUT"));
}

#[tokio::test]
async fn a_module_that_does_not_come_back_is_missing_not_built() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", ""));
    // The driver said it copied the module; what came back is not a regular file of that name.
    engine.push_run(Ok(outcome(0, false, &[("make.log", b"ok\n"), ("modules/other.ko", b"\x7fELF")])));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Failed(failed) = done.unwrap() else { panic!("not a failure") };
    assert_eq!(failed.code, code::MODULE_MISSING);
    assert!(failed.what.contains("hello.ko did not come back"), "{}", failed.what);
}

#[tokio::test]
async fn a_conf_that_does_not_evaluate_or_resolve_is_refused_before_any_build() {
    let host = Host::new();
    // bash could not evaluate it: no question was asked.
    let engine = FakeEngine::new();
    engine.push_run(Ok(outcome(8, false, &[("eval.err", b"dkms.conf: line 2: syntax error near `fi'\n")])));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Refused(e) = done.unwrap() else { panic!("not refused") };
    assert_eq!(e.exit_code(), code::BAD_CONF);
    assert!(e.to_string().contains("syntax error") && e.about_inputs(), "{e}");
    // It evaluated, but sets no PACKAGE_VERSION: resolved on the host, and the driver told to stop.
    let engine = FakeEngine::new();
    engine.push_request(r#"{"context":{},"directives":{"PACKAGE_NAME":{"0":"hello"}}}"#);
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    assert!(matches!(done.unwrap(), Realised::Refused(PairError::Conf(_))));
    assert_eq!(replies(&engine), [["abort"]]);
}

#[tokio::test]
async fn build_exclusive_skips_the_kernel_as_a_value() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", r#","BUILD_EXCLUSIVE_KERNEL":{"0":"^5\\."}"#));
    let (done, _work) = host.realise(&engine, "hello", &[], &met).await;
    let Realised::Skipped { reason } = done.unwrap() else { panic!("not skipped") };
    assert!(reason.contains("does not match kernel 6.1.0-56-amd64"), "{reason}");
    assert_eq!(replies(&engine), [["abort"]]);
}

#[tokio::test]
async fn a_dependency_is_built_first_and_then_seen_by_the_dependant() {
    let host = Host::new();
    let engine = FakeEngine::new();
    let deps = r#","BUILD_DEPENDS":{"0":"base"}"#;
    // The tree has base, not built yet: the dependant stops before building anything.
    let unbuilt = |plan: &BuildPlan| {
        assert_eq!(plan.build_depends, ["base"]);
        Depends::Unbuilt(vec!["base".into()])
    };
    engine.push_request(conf_json("hello", deps));
    let (first, _w) = host.realise(&engine, "hello", &[], &unbuilt).await;
    assert!(matches!(first.unwrap(), Realised::NeedsDependencies(d) if d == ["base"]));
    // base is built...
    engine.push_request(conf_json("base", ""));
    engine.push_run(Ok(outcome(0, false, &[("make.log", b"ok\n"), ("modules/base.ko", b"\x7fELF base")])));
    let (base, base_work) = host.realise(&engine, "base", &[], &met).await;
    let Realised::Built(base) = base.unwrap() else { panic!("base not built") };
    // ...and the dependant, built again, sees its modules where dkms shows them.
    let sibling = Sibling {
        module: "base".into(),
        version: "1".into(),
        source: host.source("base"),
        built: Some(BuiltView::of_built_dir(&base.dir)),
    };
    engine.push_request(conf_json("hello", deps));
    engine.push_run(Ok(outcome(0, false, &[("make.log", b"ok\n"), ("modules/hello.ko", b"\x7fELF")])));
    let (second, _w) = host.realise(&engine, "hello", std::slice::from_ref(&sibling), &met).await;
    assert!(matches!(second.unwrap(), Realised::Built(_)));
    drop(base_work);
    assert_eq!(replies(&engine).iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["abort", "make", "make"]);
    let runs: Vec<Box<RunSpec>> =
        engine.calls().into_iter().filter_map(|c| if let Call::Run(s) = c { Some(s) } else { None }).collect();
    let last = input_entries(&runs[2].input);
    let shown = format!("base/1/{KERNEL}/x86_64/module/base.ko.xz");
    assert!(last.iter().any(|(p, _, _)| *p == shown), "{last:?}");
    assert!(runs[2].scratch == CONTAINER_TREE);
}

#[tokio::test]
async fn unmet_build_depends_are_refused_as_the_host_says() {
    let host = Host::new();
    let engine = FakeEngine::new();
    engine.push_request(conf_json("hello", r#","BUILD_DEPENDS":{"0":"nowhere"}"#));
    let missing = |_: &BuildPlan| {
        Depends::Refused(PairError::MissingDepends {
            module: "hello".into(),
            version: "1".into(),
            dependency: "nowhere".into(),
        })
    };
    let (done, _w) = host.realise(&engine, "hello", &[], &missing).await;
    let Realised::Refused(e) = done.unwrap() else { panic!("not refused") };
    assert_eq!(e.exit_code(), code::MISSING_DEPENDS);
    assert_eq!(replies(&engine), [["abort"]]);
}

#[test]
fn the_advice_names_what_the_sandbox_stopped() {
    let network = sandbox_advice(b"bash: connect: Network is unreachable\n", 4096).unwrap();
    assert!(network.contains("network"), "{network}");
    let ro = sandbox_advice(b"touch: cannot touch '/etc/x': Read-only file system\n", 4096).unwrap();
    assert!(ro.contains("outside its build directory"), "{ro}");
    let bomb = sandbox_advice(b"bash: fork: retry: Resource temporarily unavailable\n", 256).unwrap();
    assert!(bomb.contains("limit of 256 processes"), "{bomb}");
    assert_eq!(sandbox_advice(b"hello.c:3: error: expected ';'\n", 4096), None);
}

#[test]
fn a_patch_must_be_a_plain_path_to_a_file_under_patches() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("patches/sub")).unwrap();
    std::fs::write(src.path().join("patches/sub/fix.patch"), "").unwrap();
    let mv = ModuleVersion { module: "m".into(), version: "1".into() };
    assert!(bad_patch(&mv, src.path(), &["sub/fix.patch".into()]).is_none());
    for (patch, dotdot) in [("missing.patch", false), ("../fix.patch", true), ("sub/../sub/fix.patch", true)] {
        match bad_patch(&mv, src.path(), &["sub/fix.patch".into(), patch.into()]) {
            Some(PairError::BadPatch { patch: p, dotdot: d, .. }) => assert_eq!((p.as_str(), d), (patch, dotdot)),
            other => panic!("{patch}: {other:?}"),
        }
    }
    let e = bad_patch(&mv, src.path(), &["missing.patch".into()]).unwrap();
    assert_eq!(e.exit_code(), code::REFUSED);
}
