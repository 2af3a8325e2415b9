//! Key rotation end to end, on each engine (fails when it is missing): four pairs built and
//! signed with module key A; `farm build` with key B signs every stored pair again from its
//! unsigned module with no engine at all (a dead endpoint; timed), and a second run has nothing
//! to do; `farm status` names B as each pair's signer; every module verifies with B and no
//! longer with A; `farm publish --format cache` ships B's signatures and refuses to ship with A
//! configured. Then two hosts install from that cache, each a `--root` tree of this machine
//! with the modules' sources in its /usr/src, the farm's OpenPGP key and no engine: one that
//! trusts only B's certificate (`[prebuilt] module_certs`) installs the four modules (the
//! store's bytes, each signature verified, depmod's index), one that trusts only A's refuses
//! each (exit 51) and installs nothing.
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use farm::{signers, Farm, KERNEL};
use support::{ckms, shared_cache};

#[path = "support/bookworm.rs"]
mod bookworm;
#[path = "support/farm.rs"]
mod farm;

const DEAD_ENGINE: &str = "unix:///nonexistent/ckms-rotation.sock";
const MODULES: usize = 4;

fn rotation(var: &str) {
    let farm = Farm::new(var);
    let src = farm.dir.path().join("src");
    let mods = farm::modules(&src, "frot", MODULES);
    let sources: Vec<&Path> = mods.iter().map(PathBuf::as_path).collect();
    let (_, cert_a) = farm.key_pair("mok");
    let (key_b, cert_b) = farm.key_pair("b");
    let (fpr_a, fpr_b) = (support::sha256_file(&cert_a), support::sha256_file(&cert_b));

    let built = farm.build(true, &sources);
    built.expect_code(0);
    assert_eq!(built.json_result()["built_now"], MODULES, "{built}");
    assert_eq!(signers(&farm.status()), vec![Some(fpr_a.clone()); MODULES]);

    // Key B: every stored pair signed again, no container (no engine to start one with).
    let store = farm.store();
    let cache = shared_cache();
    let mut rotate = vec!["--engine", DEAD_ENGINE, "--cache-dir", cache.to_str().unwrap(), "farm", "build"];
    rotate.extend(["--store", store.to_str().unwrap(), "-k", KERNEL]);
    rotate.extend(["--key", key_b.to_str().unwrap(), "--cert", cert_b.to_str().unwrap()]);
    rotate.extend(sources.iter().map(|s| s.to_str().unwrap()));
    // The same command as a dry run first: what evaluating the plan costs of the whole.
    let started = Instant::now();
    ckms([rotate.as_slice(), &["--dry-run"]].concat()).run().expect_code(0);
    let planned = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let rotated = ckms(&rotate).run();
    let seconds = started.elapsed().as_secs_f64();
    rotated.expect_code(0);
    assert!(rotated.stderr.contains(&format!("re-signed {MODULES} stored pair(s)")), "{rotated}");
    println!(
        "key rotation ({var}): {MODULES} pairs signed again in {seconds:.2} s, no engine (its dry run: {planned:.2} s)"
    );
    ckms(&rotate).run().expect_code(77);
    assert_eq!(signers(&farm.status()), vec![Some(fpr_b.clone()); MODULES]);
    let table = farm.status_text();
    assert_eq!(table.matches(&format!(" {} ", &fpr_b[..16])).count(), MODULES, "{table}");
    assert!(!table.contains(&fpr_a[..16]), "{table}");
    for module in stored_modules(&store) {
        let module = module.to_str().unwrap();
        farm.run(&["verify-signature", module, "--cert", cert_b.to_str().unwrap()]).expect_code(0);
        farm.run(&["verify-signature", module, "--cert", cert_a.to_str().unwrap()]).expect_code(51);
    }

    // Published with B's certificate; with A's configured, refused (exit 51), nothing written.
    let farm_key = bookworm::farm_key(farm.dir.path());
    let published = farm.dir.path().join("cache");
    let publish = |out: &Path, cert: &Path| {
        let mut args = vec!["farm", "publish", "--store", store.to_str().unwrap(), "--format", "cache"];
        args.extend(["--out", out.to_str().unwrap(), "--key", farm_key.to_str().unwrap()]);
        args.extend(["--cert", cert.to_str().unwrap()]);
        ckms(&args).run()
    };
    publish(&published, &cert_b).expect_code(0);
    let refused_out = farm.dir.path().join("cache-a");
    let refused = publish(&refused_out, &cert_a);
    refused.expect_code(51);
    assert!(refused.stderr.contains(&fpr_b), "{refused}");
    assert!(!refused_out.exists(), "{refused}");

    // The hosts: one trusts B only, one A only.
    let trusts_b = Host::new(&farm, &published, &cert_b, &src, "host-b");
    let trusts_a = Host::new(&farm, &published, &cert_a, &src, "host-a");
    for i in 1..=MODULES {
        let name = format!("frot{i}");
        let run = trusts_b.install(&name);
        run.expect_code(0);
        assert!(run.stderr.contains(&format!("Signature of {name}.ko verified")), "{run}");
        let installed = trusts_b.installed(&name);
        let stored = stored_modules(&store).into_iter().find(|m| m.ends_with(format!("{name}.ko"))).unwrap();
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&stored).unwrap(), "not the store's {name}");
        let refused = trusts_a.install(&name);
        refused.expect_code(51);
        assert!(refused.stderr.contains("module_certs") && refused.stderr.contains(&fpr_b), "{refused}");
        assert!(!trusts_a.installed(&name).exists(), "{refused}");
    }
    let dep = std::fs::read_to_string(trusts_b.root.join(format!("lib/modules/{KERNEL}/modules.dep"))).unwrap();
    assert_eq!(dep.lines().filter(|l| l.starts_with("updates/dkms/frot")).count(), MODULES, "{dep}");
    assert!(support::entries(&trusts_a.root.join(format!("lib/modules/{KERNEL}/updates"))).is_empty());
}

/// Every signed module file of the store.
fn stored_modules(store: &Path) -> Vec<PathBuf> {
    let pairs = store.join("pairs");
    let mut files = Vec::new();
    for entry in support::entries(&pairs) {
        let dir = pairs.join(entry).join("modules");
        files.extend(support::entries(&dir).into_iter().map(|m| dir.join(m)));
    }
    assert_eq!(files.len(), MODULES, "{files:?}");
    files
}

/// A host installing from the farm's cache: a `--root` tree holding the modules' sources in
/// /usr/src, configured with the cache (a directory), the farm's OpenPGP key and one module
/// certificate it trusts; no engine.
struct Host {
    root: PathBuf,
    config: PathBuf,
}

impl Host {
    fn new(farm: &Farm, cache: &Path, trusted: &Path, sources: &Path, name: &str) -> Host {
        let root = farm.dir.path().join(name);
        for i in 1..=MODULES {
            let to = root.join(format!("usr/src/frot{i}-1.0"));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            farm::copy_dir(&sources.join(format!("frot{i}")), &to);
        }
        let etc = root.join("etc/ckms");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::copy(trusted, etc.join("module.der")).unwrap();
        std::fs::copy(cache.join("farm.pub.asc"), etc.join("farm.pub.asc")).unwrap();
        let config = etc.join("config.toml");
        let text = format!(
            "[prebuilt]\nurls = [\"{}\"]\nkeys = [\"{}\"]\nmodule_certs = [\"{}\"]\n",
            cache.display(),
            etc.join("farm.pub.asc").display(),
            etc.join("module.der").display()
        );
        std::fs::write(&config, text).unwrap();
        Host { root, config }
    }

    fn install(&self, module: &str) -> support::Outcome {
        let cache = shared_cache();
        let mut args = vec!["--engine", DEAD_ENGINE, "--cache-dir", cache.to_str().unwrap(), "install"];
        let mv = format!("{module}/1.0");
        args.extend([mv.as_str(), "-k", KERNEL, "--prebuilt-only", "--root", self.root.to_str().unwrap()]);
        ckms(&args).env("CKMS_CONFIG", &self.config).run()
    }

    fn installed(&self, module: &str) -> PathBuf {
        self.root.join(format!("lib/modules/{KERNEL}/updates/dkms/{module}.ko"))
    }
}

#[test]
fn key_rotation_on_docker() {
    rotation("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn key_rotation_on_podman() {
    rotation("CKMS_TEST_PODMAN_HOST");
}
