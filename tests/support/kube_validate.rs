//! Validating Kubernetes manifests against the API's own OpenAPI schemas with
//! kubernetes-validate (PyPI), in strict mode (an unknown field is an error), for the
//! Kubernetes version ckms targets and the newest one the validator ships. A missing
//! validator fails the test, it never skips.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The Kubernetes version ckms's manifests target (k8s-openapi's feature v1_35).
pub const KUBERNETES: &str = "1.35.0";
const INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0 (ci/setup-build-deps.sh does)";

/// Runs `python3 -c script`: the module, not the `kubernetes-validate` script, because pip
/// may put the script in a directory not on PATH while the module is always importable.
fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3").args(args).output().unwrap_or_else(|e| panic!("cannot run python3: {e}; {INSTALL}"))
}

/// Panics with the install hint unless the validator is there.
pub fn need() {
    let out = python(&["-c", "import kubernetes_validate"]);
    assert!(
        out.status.success(),
        "kubernetes-validate is needed by this test: {INSTALL}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`KUBERNETES`] and the newest version the installed validator knows.
pub fn versions() -> Vec<String> {
    need();
    let out = python(&["-c", "import kubernetes_validate.utils as u; print(u.latest_version())"]);
    assert!(out.status.success(), "kubernetes-validate's newest version: {}", String::from_utf8_lossy(&out.stderr));
    let latest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!latest.is_empty(), "kubernetes-validate names no newest version");
    let mut v = vec![KUBERNETES.to_string()];
    if latest != KUBERNETES {
        v.push(latest);
    }
    v
}

/// Validates `files` against `version`: the validator's output, as Err if it refused any.
pub fn check(files: &[PathBuf], version: &str) -> Result<String, String> {
    need();
    let mut args = vec!["-m".to_string(), "kubernetes_validate".into(), "--strict".into(), "-k".into(), version.into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = Command::new("python3").args(&args).output().unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(text);
    }
    // A validator that checked nothing would also exit 0: every file must be reported passed.
    for f in files {
        let passed = format!("INFO {} passed", f.display());
        if !text.lines().any(|l| l.starts_with(&passed)) {
            return Err(format!("{} was not reported as validated:\n{text}", f.display()));
        }
    }
    Ok(text)
}

/// Panics unless every file is valid for every one of [`versions`].
pub fn validate(files: &[PathBuf]) {
    assert!(!files.is_empty(), "no manifests to validate");
    for version in versions() {
        if let Err(text) = check(files, &version) {
            panic!("kubernetes-validate --strict -k {version} refused the manifests:\n{text}");
        }
    }
}
