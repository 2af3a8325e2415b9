//! What the farm's tests share: module sources written for a test, a store in a temporary
//! directory driven through the binary on one engine, its status, a module signing key pair.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::support::{ckms, engine_host, shared_cache, Ckms, Outcome};

pub const KERNEL: &str = "6.1.0-56-amd64";

pub const C: &str =
    "#include <linux/module.h>\nstatic int __init i(void) { return 0; }\nmodule_init(i);\nMODULE_LICENSE(\"GPL\");\n";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A module source written for the test: `conf` lines after the names, and a Kbuild.
pub fn module(dir: &Path, name: &str, conf: &str, kbuild: &str, c: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let head = format!("PACKAGE_NAME=\"{name}\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"{name}\"\n");
    std::fs::write(d.join("dkms.conf"), format!("{head}DEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n{conf}")).unwrap();
    std::fs::write(d.join("Kbuild"), kbuild).unwrap();
    std::fs::write(d.join(format!("{name}.c")), c).unwrap();
    d
}

/// `count` plain modules `<prefix>1..`, each one C file.
pub fn modules(dir: &Path, prefix: &str, count: usize) -> Vec<PathBuf> {
    (1..=count).map(|i| module(dir, &format!("{prefix}{i}"), "", &format!("obj-m := {prefix}{i}.o\n"), C)).collect()
}

/// A store in a temporary directory, and the engine its builds run on.
pub struct Farm {
    pub engine: String,
    pub dir: tempfile::TempDir,
}

impl Farm {
    /// A farm on the engine `var` names (CKMS_TEST_DOCKER_HOST, CKMS_TEST_PODMAN_HOST).
    pub fn new(var: &str) -> Farm {
        Farm { engine: engine_host(var), dir: tempfile::tempdir().unwrap() }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// ckms with this farm's engine and the shared download cache.
    pub fn ckms(&self, args: &[&str]) -> Ckms {
        let cache = shared_cache();
        let mut all = vec!["--engine", &self.engine, "--cache-dir", cache.to_str().unwrap()];
        all.extend_from_slice(args);
        ckms(all)
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        self.ckms(args).run()
    }

    /// A module signing pair made by `generate-mok`: (key, certificate (DER)). The farm's
    /// default pair is "mok".
    pub fn key_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, cert) = (self.dir.path().join(format!("{name}.key")), self.dir.path().join(format!("{name}.pub")));
        self.run(&["generate-mok", "--key", key.to_str().unwrap(), "--cert", cert.to_str().unwrap()]).expect_code(0);
        (key, cert)
    }

    /// `farm build` of `sources` for [`KERNEL`] with two jobs, signed with the "mok" pair.
    pub fn build_args(&self, json: bool, sources: &[&Path], extra: &[&str]) -> Vec<String> {
        let key = self.dir.path().join("mok.key");
        let cert = self.dir.path().join("mok.pub");
        let mut args: Vec<String> = if json { vec!["--json".into()] } else { vec![] };
        let store = self.store();
        for a in ["farm", "build", "--store", store.to_str().unwrap(), "-k", KERNEL, "--jobs", "2"] {
            args.push(a.into());
        }
        for a in ["--key", key.to_str().unwrap(), "--cert", cert.to_str().unwrap()] {
            args.push(a.into());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(sources.iter().map(|s| s.to_str().unwrap().to_string()));
        args
    }

    pub fn build(&self, json: bool, sources: &[&Path]) -> Outcome {
        self.build_with(json, sources, &[])
    }

    pub fn build_with(&self, json: bool, sources: &[&Path], extra: &[&str]) -> Outcome {
        let args = self.build_args(json, sources, extra);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `farm status --json`, one object per pair (it must exit 0: nothing damaged).
    pub fn status(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["--json", "farm", "status", "--store", self.store().to_str().unwrap()]);
        run.expect_code(0);
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}{run}"))).collect()
    }

    /// `farm status` as a table (it must exit 0).
    pub fn status_text(&self) -> String {
        let run = self.run(&["farm", "status", "--store", self.store().to_str().unwrap()]);
        run.expect_code(0);
        run.stdout
    }
}

pub fn by_module<'a>(status: &'a [serde_json::Value], module: &str) -> &'a serde_json::Value {
    status.iter().find(|l| l["module"] == module).unwrap_or_else(|| panic!("no {module} in {status:?}"))
}

/// The signer each line of `status` names: its certificate's SHA-256 (`None` when unsigned).
pub fn signers(status: &[serde_json::Value]) -> Vec<Option<String>> {
    status.iter().map(|l| l["signer"]["fingerprint"].as_str().map(str::to_string)).collect()
}
