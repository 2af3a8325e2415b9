//! What the tests of published output share: running tools that must be there, the farm's
//! OpenPGP key made with gpg and module signing pair made with openssl, serving a published
//! cache, and a clean bookworm with the kernel's image package (made with mmdebstrap from the
//! host's Debian sources, no registry), as a Docker image.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{ckms, shared_cache, Outcome};

pub const KERNEL: &str = "6.1.0-56-amd64";
const IMAGE: &str = "ckms-test/publish-bookworm";

pub fn need(tool: &str, package: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is needed by this test: apt-get install {package} (ci/setup-build-deps.sh does)");
}

/// Runs `cmd`, panicking with its output unless it succeeds; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    stdout.into_owned()
}

/// A farm key made with gpg, as an operator would: `dir/farm.asc`.
pub fn farm_key(dir: &Path) -> PathBuf {
    need("gpg", "gnupg");
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    run(Command::new("chmod").arg("700").arg(&home));
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--batch").arg("--homedir").arg(&home);
        c
    };
    run(gpg().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        "ckms farm <farm@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]));
    let armored = run(gpg().args(["--armor", "--export-secret-keys", "farm@example.invalid"]));
    let path = dir.join("farm.asc");
    std::fs::write(&path, armored).unwrap();
    path
}

pub fn docker(host: &str) -> Command {
    let mut c = Command::new("docker");
    c.arg("--host").arg(host);
    c
}

/// A clean bookworm with the kernel's image package, from Debian's packages (the host's apt
/// sources; no registry): made once with mmdebstrap, kept as a tarball in the test cache and
/// as an image in the engine.
pub fn bookworm_image(host: &str) -> String {
    let tag = format!("{IMAGE}:{KERNEL}");
    if docker(host).args(["image", "inspect", &tag]).output().is_ok_and(|o| o.status.success()) {
        return tag;
    }
    run(docker(host).arg("import").arg(bookworm_root("amd64", KERNEL)).arg(&tag));
    tag
}

/// A clean bookworm of the Debian architecture `arch` with `kernel`'s image package, as an
/// image of that architecture in the Podman at `host` (Podman's import records the
/// architecture it is given, Docker 20.10's ignores it), for `podman run --arch`: another
/// architecture than this machine's runs under qemu-user ([`need_emulation`]).
pub fn bookworm_image_in_podman(host: &str, arch: &str, kernel: &str) -> String {
    let tag = format!("{IMAGE}:{kernel}");
    if podman(host).args(["image", "exists", &tag]).output().is_ok_and(|o| o.status.success()) {
        return tag;
    }
    run(podman(host).arg("import").arg(format!("--arch={arch}")).arg(bookworm_root(arch, kernel)).arg(&tag));
    tag
}

/// The Podman CLI talking to the service at `host`.
pub fn podman(host: &str) -> Command {
    let mut c = Command::new("podman");
    c.arg("--remote").arg("--url").arg(host);
    c
}

/// A bookworm root of the Debian architecture `arch` holding `kernel`'s image package and kmod,
/// as a tarball in the test cache (made once, with mmdebstrap from the host's apt sources).
/// Another architecture than this machine's is made and run under qemu-user
/// ([`need_emulation`]); its kernel's postinst does not make an initramfs there (INITRD=No:
/// nothing boots it, and under emulation it would take minutes).
pub fn bookworm_root(arch: &str, kernel: &str) -> PathBuf {
    let dir = shared_cache().join("publish");
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join(format!("bookworm-{kernel}.tar"));
    if tar.is_file() {
        return tar;
    }
    need("mmdebstrap", "mmdebstrap");
    let foreign = arch != "amd64";
    if foreign {
        need("arch-test", "arch-test");
    }
    let targets = run(Command::new("apt-get").args(["indextargets", "--format", "$(REPO_URI) $(RELEASE)"]));
    let mut sources: Vec<String> = targets
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, suite)| suite.starts_with("bookworm"))
        .map(|(uri, suite)| format!("deb {uri} {suite} main"))
        .collect();
    sources.sort();
    sources.dedup();
    assert!(!sources.is_empty(), "the host's apt sources name no bookworm suite:\n{targets}");
    // The host's settings on index freshness (a snapshot mirror needs Check-Valid-Until off).
    let aptopts: Vec<String> = run(Command::new("apt-config").arg("dump"))
        .lines()
        .filter(|l| l.starts_with("Acquire::Check-Valid-Until ") || l.starts_with("Acquire::Check-Date "))
        .map(|l| format!("--aptopt={l}"))
        .collect();
    let partial = tar.with_extension("partial");
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", "mmdebstrap", "--quiet", "--variant=apt", "--format=tar", "--components=main"]);
    if foreign {
        cmd.arg(format!("--arch={arch}")).env("INITRD", "No");
    }
    run(cmd
        .arg(format!("--include=linux-image-{kernel},kmod"))
        .args(&aptopts)
        .arg("bookworm")
        .arg(&partial)
        .args(&sources));
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// Programs of the machine `machine` (`uname -m`, e.g. aarch64) run here under qemu-user:
/// its interpreter registered with binfmt_misc with the F flag (opened at registration, so it
/// also runs in chroots and containers). Missing, the test fails.
pub fn need_emulation(machine: &str) {
    let entry = Path::new("/proc/sys/fs/binfmt_misc").join(format!("qemu-{machine}"));
    let text = std::fs::read_to_string(&entry).unwrap_or_default();
    let fixed = text.lines().any(|l| l.strip_prefix("flags:").is_some_and(|f| f.contains('F')));
    assert!(
        text.starts_with("enabled") && fixed,
        "{machine} programs must run here under qemu-user, registered with binfmt_misc with the F flag \
         ({} reads {text:?}): apt-get install qemu-user-static, then register it (ci/setup-build-deps.sh does both)",
        entry.display()
    );
}

/// A module's Debian package, the version the farm built (from the host's apt sources, kept
/// in the test cache).
pub fn source_deb(package: &str, version: &str) -> PathBuf {
    need("apt-get", "apt");
    let dir = shared_cache().join("publish");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{package}_{}_all.deb", version.replace(':', "%3a")));
    if !file.is_file() {
        run(Command::new("apt-get").current_dir(&dir).arg("download").arg(format!("{package}={version}")));
    }
    assert!(file.is_file(), "apt-get download left no {}", file.display());
    file
}

/// The farm's module signing pair (made once, kept beside the store: the store's entries are
/// signed with it).
pub fn module_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join("farm-mok.key"), dir.join("farm-mok.der"));
    if !cert.is_file() {
        need("openssl", "openssl");
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "36500"])
            .args(["-subj", "/CN=ckms farm test module key/", "-outform", "DER", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
    }
    (key, cert)
}

/// A farm's store kept between runs (`<target tmp>/<name>-store`: a re-run builds nothing),
/// signed with a module pair kept beside it: `farm build` on `engine` with `args` (kernels,
/// sources). The store, the module certificate and the run.
pub fn kept_store(name: &str, engine: &str, args: &[&str]) -> (PathBuf, PathBuf, Outcome) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("{name}-store"));
    let (key, cert) = module_key(&tmp.join(format!("{name}-keys")));
    let (cache, store) = (shared_cache().to_string_lossy().into_owned(), dir.to_string_lossy().into_owned());
    let (key_s, cert_s) = (key.to_string_lossy(), cert.to_string_lossy());
    let mut all = vec!["--engine", engine, "--cache-dir", &cache, "farm", "build", "--store", &store];
    all.extend(["--key", &key_s, "--cert", &cert_s]);
    all.extend_from_slice(args);
    let out = ckms(all).run();
    (dir, cert, out)
}

/// Every file of the published cache, served under `prefix`.
pub fn served(out: &Path, prefix: &str, files: &mut HashMap<String, Vec<u8>>) {
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(out).unwrap().to_string_lossy().into_owned();
                files.insert(format!("{prefix}/{rel}"), std::fs::read(&path).unwrap());
            }
        }
    }
}
