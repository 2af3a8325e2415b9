//! The man pages and shell completions that `ckms generate-docs DIR` writes for the Debian
//! package (ci/package-deb), made from the clap definitions: each file where the package
//! takes it from and not trivial, each page read by man(1) without a warning, each completion
//! file parsed by its own shell, and the bash ones loaded. bash, zsh, fish and man must be
//! installed (ci/setup-build-deps.sh installs them): a missing one fails, it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the generator into a fresh directory.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ckms"))
        .arg("generate-docs")
        .arg(dir.path())
        // Not needed at packaging time: no settings, no cache.
        .env("HOME", "/nonexistent")
        .env_remove("CKMS_CACHE_DIR")
        .output()
        .expect("run ckms generate-docs");
    assert!(out.status.success(), "ckms generate-docs failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// `program` on PATH, or a failure that says how to get it.
fn needs(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{program} is not installed: ci/setup-build-deps.sh installs it (this test checks the package's files with it)")
    })
}

fn run(program: &Path, args: &[&str], file: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(file)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// `file`'s text, which must be there and more than a header.
fn text(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(text.len() > 400, "{} is only {} bytes", file.display(), text.len());
    text
}

#[test]
fn man_pages_for_ckms_its_subcommands_and_dkms_read_without_warnings() {
    let man = needs("man");
    let dir = generated();
    let pages = dir.path().join("man/man8");
    for (page, says) in [
        ("ckms.8", "farm"),
        ("ckms-farm.8", "build"),
        ("ckms-farm-build.8", "--store"),
        ("ckms-build.8", "--kernelver"),
        ("ckms-install.8", "--kernelver"),
        ("dkms.8", "autoinstall"),
        ("dkms-build.8", "--kernelver"),
        ("dkms-generate_mok.8", "generate_mok"),
    ] {
        let file = pages.join(page);
        text(&file);
        let out = run(&man, &["--warnings", "-l"], &file);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stderr.trim().is_empty(), "man -l {page}: {}\n{stderr}", out.status);
        assert!(stdout.contains("NAME") && stdout.contains("SYNOPSIS") && stdout.contains(says), "{page}:\n{stdout}");
    }
    // dkms's page lists dkms's verbs only; hidden commands have none.
    let dkms = text(&pages.join("dkms.8"));
    assert!(!dkms.contains("dkms\\-farm") && !dkms.contains("dkms-farm"), "{dkms}");
    for hidden in ["ckms-generate-docs.8", "ckms-kernel_prerm.8", "dkms-kernel_prerm.8", "dkms-farm.8"] {
        assert!(!pages.join(hidden).exists(), "{hidden}");
    }
}

/// Each completion file under `sub` holds `holds` and parses with `shell flag`; the directory.
fn parses(shell: &str, flag: &str, sub: &str, files: [(&str, &str); 2]) -> tempfile::TempDir {
    let shell = needs(shell);
    let dir = generated();
    for (name, holds) in files {
        let file = dir.path().join(sub).join(name);
        assert!(text(&file).contains(holds), "{name}: no {holds:?}");
        let out = run(&shell, &[flag], &file);
        assert!(out.status.success(), "{} {flag} {name}: {}", shell.display(), String::from_utf8_lossy(&out.stderr));
    }
    dir
}

#[test]
fn bash_completions_parse_and_register_for_ckms_and_dkms() {
    let sub = "bash-completion/completions";
    let dir = parses("bash", "-n", sub, [("ckms", "install"), ("dkms", "autoinstall")]);
    for name in ["ckms", "dkms"] {
        let script = format!("source {} && complete -p {name}", dir.path().join(sub).join(name).display());
        let out = Command::new(needs("bash")).args(["--norc", "-c", &script]).output().expect("bash");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains(name), "{name} not registered: {said}");
    }
}

#[test]
fn zsh_completions_parse() {
    parses("zsh", "-n", "zsh/vendor-completions", [("_ckms", "#compdef ckms"), ("_dkms", "#compdef dkms")]);
}

#[test]
fn fish_completions_parse() {
    let files = [("ckms.fish", "complete -c ckms"), ("dkms.fish", "complete -c dkms")];
    parses("fish", "--no-execute", "fish/vendor_completions.d", files);
}
