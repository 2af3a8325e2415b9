//! The `Module` that `ckms farm publish --format kmm` writes (module.yaml) validates against
//! KMM's CRD: tests/fixtures/kmm-module.schema.json, our transcription of the constraints of
//! the CRD's openAPIV3Schema on the fields ckms writes (and, stricter than the API server, no
//! field it does not know). The manifests are written by the library's own `kmm::write`, read
//! back from disk by python3's yaml and checked by python3's jsonschema; a missing python3,
//! yaml or jsonschema fails the test, it never skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ckms::k8s::to_yaml;
use ckms::publish::kmm::{self, manifest, Depmod, KmmImages};
use ckms::publish::pairs::{BuiltPair, ModuleFile, OsRelease, Target};
use ckms::publish::PublishError;
use serde_json::{json, Value};

const K1: &str = "6.1.0-56-amd64";
/// Debian 13's release: `+` is no OCI tag character, so its mapping names its tag literally.
const K2: &str = "6.12.48+deb13-amd64";
const K3: &str = "6.1.0-56-arm64";

const INSTALL: &str = "apt-get install python3-jsonschema python3-yaml (ci/setup-build-deps.sh does)";

/// Validates every YAML file named after the schema; one line per file (PASS, or a FAIL per
/// error with its path in the document), exit 1 when any failed.
const VALIDATOR: &str = r#"
import json, sys
import jsonschema, yaml
with open(sys.argv[1]) as f:
    schema = json.load(f)
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
validator = cls(schema)
bad = False
for path in sys.argv[2:]:
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    if len(docs) != 1:
        print(f"FAIL {path}: {len(docs)} YAML documents")
        bad = True
        continue
    errors = sorted(validator.iter_errors(docs[0]), key=lambda e: list(map(str, e.absolute_path)))
    for e in errors:
        print(f"FAIL {path}: /{'/'.join(map(str, e.absolute_path))}: {e.message}")
    if errors:
        bad = True
    else:
        print(f"PASS {path}")
sys.exit(1 if bad else 0)
"#;

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kmm-module.schema.json")
}

/// Panics with the install hint unless python3 has both modules.
fn need() {
    let out = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}; {INSTALL}"));
    assert!(
        out.status.success(),
        "python3's jsonschema and yaml are needed by this test: {INSTALL}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The validator's output per file: Ok when it accepted them all, Err when it refused any.
/// Anything else (a crash, a file it did not report on) panics, so that a refusal is never
/// mistaken for a broken validator.
fn check(files: &[PathBuf]) -> Result<String, String> {
    need();
    assert!(!files.is_empty(), "no manifests to validate");
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATOR)
        .arg(schema())
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for f in files {
        let pass = format!("PASS {}", f.display());
        let fail = format!("FAIL {}:", f.display());
        assert!(
            stdout.lines().any(|l| l == pass || l.starts_with(&fail)),
            "{} was not reported as validated:\n{text}",
            f.display()
        );
    }
    match out.status.code() {
        Some(0) => Ok(text),
        Some(1) => Err(text),
        _ => panic!("the validator failed ({}):\n{text}", out.status),
    }
}

/// Writes a modules.dep naming nothing: the images are not what this test looks at.
struct NoDepmod;

impl Depmod for NoDepmod {
    fn index(&self, base: &Path, kernel: &str) -> Result<(), PublishError> {
        let path = base.join("lib/modules").join(kernel).join("modules.dep");
        std::fs::write(&path, b"").map_err(|e| PublishError::Io { path, source: e })
    }
}

/// A built pair of `module` for `kernel` shipping `files` (module files, stored under `dir`).
fn pair(dir: &Path, module: &str, kernel: &str, files: &[&str]) -> BuiltPair {
    let deb_arch = if kernel.ends_with("arm64") { "arm64" } else { "amd64" };
    BuiltPair {
        key: format!("key-{module}-{kernel}"),
        module: module.into(),
        version: "1.0".into(),
        kernel: kernel.into(),
        arch: if deb_arch == "arm64" { "aarch64" } else { "x86_64" }.into(),
        profile: "debian-bookworm".into(),
        epoch: 1_764_892_800,
        source_package: Some(format!("{module}-dkms")),
        signer: None,
        loaded: None,
        files: files
            .iter()
            .map(|file| {
                let path = dir.join(format!("{module}-{kernel}")).join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("MODULE {file} {kernel}")).unwrap();
                ModuleFile {
                    name: file.split(".ko").next().unwrap().into(),
                    dest: "/updates/dkms".into(),
                    file_name: (*file).into(),
                    path,
                }
            })
            .collect(),
        target: Target {
            suite: "bookworm".into(),
            deb_arch: deb_arch.into(),
            oci_arch: deb_arch.into(),
            image_package: format!("linux-image-{kernel}"),
            os: Some(OsRelease { id: "debian".into(), version_id: Some("12".into()), architecture: "x86-64".into() }),
        },
    }
}

/// Publishes `plan` into `<dir>/<variant>` with ckms's own writer: the module.yaml written.
fn publish(dir: &Path, variant: &str, plan: &KmmImages) -> PathBuf {
    let out = dir.join(variant);
    std::fs::create_dir_all(&out).unwrap();
    let busybox = BTreeMap::from([("debian-bookworm".to_string(), b"\x7fELF busybox".to_vec())]);
    kmm::write(&out, plan, &busybox, &NoDepmod).unwrap();
    out.join("module.yaml")
}

/// The manifests of the variants ckms writes, each checked to be the variant it is meant to be.
fn variants(dir: &Path) -> Vec<PathBuf> {
    let v4l2 = |kernel: &str| pair(dir, "v4l2loopback", kernel, &["v4l2loopback.ko.xz"]);
    let tp = |kernel: &str| pair(dir, "tp_smapi", kernel, &["thinkpad_ec.ko", "hdaps.ko", "tp_smapi.ko"]);
    let mut files = Vec::new();

    // Default: one kernel, the default repository, the tag through ${KERNEL_FULL_VERSION}.
    let default = kmm::plan(&[v4l2(K1)], None, None).unwrap();
    let f = publish(dir, "default", &default);
    let yaml = std::fs::read_to_string(&f).unwrap();
    assert!(yaml.contains("\"localhost/ckms/v4l2loopback:${KERNEL_FULL_VERSION}\""), "{yaml}");
    assert!(!yaml.contains("registryTLS"), "{yaml}");
    files.push(f);

    // A release holding `+`: its mapping names the `_` tag literally.
    let plus = kmm::plan(&[v4l2(K2)], None, Some("registry.example.org/kmods/v4l2loopback")).unwrap();
    let f = publish(dir, "plus", &plus);
    let yaml = std::fs::read_to_string(&f).unwrap();
    assert!(yaml.contains("\"registry.example.org/kmods/v4l2loopback:6.12.48_deb13-amd64\""), "{yaml}");
    assert!(yaml.contains(&format!("literal: \"{K2}\"")), "{yaml}");
    files.push(f);

    // --registry ... --insecure: registryTLS.insecure.
    let mut insecure = kmm::plan(&[v4l2(K1)], None, Some("127.0.0.1:5000/ckms/v4l2loopback")).unwrap();
    insecure.insecure_registry = true;
    let f = publish(dir, "insecure", &insecure);
    let yaml = std::fs::read_to_string(&f).unwrap();
    assert!(yaml.contains("registryTLS:\n        insecure: true\n"), "{yaml}");
    files.push(f);

    // Several kernels (two architectures, one `+` release) and several modules under a
    // --name that is no Kubernetes name as given.
    let pairs = [v4l2(K1), v4l2(K2), v4l2(K3), tp(K1), tp(K3)];
    let multi = kmm::plan(&pairs, Some("Farm_Modules"), None).unwrap();
    let f = publish(dir, "multi", &multi);
    let yaml = std::fs::read_to_string(&f).unwrap();
    assert_eq!(yaml.matches("- containerImage: ").count(), 3, "{yaml}");
    assert!(yaml.contains("name: \"farm-modules\""), "{yaml}");
    files.push(f);

    // A --name longer than a label, cut where its `_` became `-`: no trailing `-` in the name.
    let long = format!("{}_modules", "x".repeat(62));
    let long = kmm::plan(&[v4l2(K1)], Some(&long), None).unwrap();
    let f = publish(dir, "long-name", &long);
    let yaml = std::fs::read_to_string(&f).unwrap();
    assert!(yaml.contains(&format!("name: \"{}\"\n", "x".repeat(62))), "{yaml}");
    files.push(f);
    files
}

#[test]
fn every_module_ckms_writes_validates_against_the_kmm_crd_schema() {
    let dir = tempfile::tempdir().unwrap();
    let files = variants(dir.path());
    if let Err(text) = check(&files) {
        panic!("module.yaml does not meet KMM's CRD schema:\n{text}");
    }
}

#[test]
fn the_validator_refuses_wrong_modules() {
    let dir = tempfile::tempdir().unwrap();
    let plan = kmm::plan(&[pair(dir.path(), "v4l2loopback", K1, &["v4l2loopback.ko.xz"])], None, None).unwrap();
    let good = manifest::module(&plan);
    // (case, mutation, what the validator must say about it)
    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation, &str); 10] = [
        (
            "no-selector",
            |m| {
                m["spec"].as_object_mut().unwrap().remove("selector");
            },
            "/spec: 'selector' is a required property",
        ),
        (
            "misspelled-field",
            |m| {
                let modprobe = m["spec"]["moduleLoader"]["container"]["modprobe"].as_object_mut().unwrap();
                let name = modprobe.remove("moduleName").unwrap();
                modprobe.insert("modulename".into(), name);
            },
            "'modulename' was unexpected",
        ),
        (
            "literal-and-regexp",
            |m| m["spec"]["moduleLoader"]["container"]["kernelMappings"][0]["regexp"] = json!("^6\\.1\\."),
            "/kernelMappings/0: ",
        ),
        ("not-a-k8s-name", |m| m["metadata"]["name"] = json!("tp_smapi"), "/metadata/name: 'tp_smapi' does not match"),
        ("unknown-top-level", |m| m["status"] = json!({}), "'status' was unexpected"),
        (
            "string-for-boolean",
            |m| m["spec"]["moduleLoader"]["container"]["registryTLS"] = json!({"insecure": "true"}),
            "/registryTLS/insecure: 'true' is not of type 'boolean'",
        ),
        (
            "no-mappings",
            |m| m["spec"]["moduleLoader"]["container"]["kernelMappings"] = json!([]),
            "/kernelMappings: []",
        ),
        (
            "mapping-without-image",
            |m| m["spec"]["moduleLoader"]["container"]["kernelMappings"][0] = json!({"literal": K1}),
            "'containerImage' is a required property",
        ),
        (
            "no-modprobe",
            |m| {
                m["spec"]["moduleLoader"]["container"].as_object_mut().unwrap().remove("modprobe");
            },
            "'modprobe' is a required property",
        ),
        ("wrong-version", |m| m["apiVersion"] = json!("kmm.sigs.x-k8s.io/v1alpha1"), "/apiVersion: "),
    ];
    let mut files = Vec::new();
    for (case, mutate, _) in &cases {
        let mut m = good.clone();
        mutate(&mut m);
        let path = dir.path().join(format!("{case}.yaml"));
        std::fs::write(&path, to_yaml(&m)).unwrap();
        files.push(path);
    }
    // The unchanged Module passes in the same run: each refusal is the mutation's.
    let base = dir.path().join("good.yaml");
    std::fs::write(&base, to_yaml(&good)).unwrap();
    files.push(base.clone());
    let text = check(&files).expect_err("every mutated Module must be refused");
    assert!(text.lines().any(|l| l == format!("PASS {}", base.display())), "{text}");
    for ((case, _, said), path) in cases.iter().zip(&files) {
        let fail = format!("FAIL {}:", path.display());
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&fail)).collect();
        assert!(lines.iter().any(|l| l.contains(said)), "{case}: expected {said:?} in {lines:#?}\n{text}");
    }
}
