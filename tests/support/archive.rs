//! A Debian archive that a kernel appears in: the host mirror's bookworm, bookworm-updates and
//! bookworm-security indexes, re-signed by a test key and served on loopback, with the newest
//! 6.1 kernel's packages held back until [`Archive::gain_kernel`]. Package files (`pool/`)
//! are redirected to the host's mirror, so every package is the real one, checked against the
//! served indexes' hashes as any client checks them.
//!
//! A test profile trusts the key: `debian-bookworm` as the repository ships it, with the test
//! keyring and one kernel series and flavour (`6.1.0-N-amd64`), written to a data directory
//! that `CKMS_DATA_DIR` names ([`Archive::env`]).
//!
//! The server answers conditional requests (If-None-Match) with 304, as Debian's mirrors do.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ckms::cache::sha256_hex;

use crate::bookworm::{need, run};
use crate::support::{HttpServer, Response};

/// The suites the profile reads, each with the mirror role it comes from.
const SUITES: [(&str, &str); 3] =
    [("debian", "bookworm"), ("debian", "bookworm-updates"), ("debian-security", "bookworm-security")];
const PACKAGES: &str = "main/binary-amd64/Packages.xz";

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

pub struct Archive {
    pub dir: PathBuf,
    /// The kernel release held back until [`Archive::gain_kernel`], e.g. `6.1.0-57-amd64`.
    pub new_kernel: String,
    /// The newest 6.1 kernel offered before it.
    pub old_kernel: String,
    server: HttpServer,
    files: Files,
    /// While set, the archive answers 503 to everything (a mirror that is down).
    down: Arc<AtomicBool>,
    /// bookworm-security's Packages, whole and without the new kernel's packages.
    security_full: Vec<u8>,
    gnupg: PathBuf,
}

impl Archive {
    /// Fetches the host mirror's indexes (the host's apt sources name it) and serves them,
    /// without the newest 6.1 kernel, signed by a key made here.
    pub fn start(dir: &Path) -> Archive {
        need("gpg", "gnupg");
        need("curl", "curl");
        std::fs::create_dir_all(dir).unwrap();
        let gnupg = dir.join("archive-gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        run(Command::new("chmod").arg("700").arg(&gnupg));
        run(gpg(&gnupg)
            .args(["--passphrase", "", "--quick-gen-key", "ckms test archive <archive@example.invalid>"])
            .args(["ed25519", "sign", "never"]));
        let keyring = dir.join("archive-keyring.gpg");
        run(gpg(&gnupg).arg("--output").arg(&keyring).args(["--export", "archive@example.invalid"]));
        write_profile(dir, &keyring);

        let upstream = upstream_mirrors();
        let mut packages = HashMap::new();
        for (role, suite) in SUITES {
            let url = format!("{}/dists/{suite}/{PACKAGES}", upstream[role]);
            let file = dir.join(format!("{suite}.Packages.xz"));
            run(Command::new("curl").args(["-fsSL", "--retry", "3", "-o"]).arg(&file).arg(&url));
            packages.insert(suite, std::fs::read(&file).unwrap());
        }
        let security_full = packages["bookworm-security"].clone();
        let (old_kernel, new_kernel, held_back) = hold_back_newest(&unxz(&security_full));
        let files: Files = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let server = {
            let (files, upstream, down) = (files.clone(), upstream.clone(), down.clone());
            HttpServer::serve(move |req| match down.load(Ordering::SeqCst) {
                true => Response { status: "503 Service Unavailable", headers: Vec::new(), body: Vec::new() },
                false => answer(&files, &upstream, &req.path, req.headers.get("if-none-match")),
            })
        };
        let archive =
            Archive { dir: dir.to_path_buf(), new_kernel, old_kernel, server, files, down, security_full, gnupg };
        for (role, suite) in SUITES {
            let body = if suite == "bookworm-security" { xz(&held_back) } else { packages[suite].clone() };
            archive.publish(role, suite, body);
        }
        archive
    }

    /// The environment of a ckms that reads this archive with the test profile.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CKMS_DATA_DIR".into(), self.dir.join("data").display().to_string()),
            ("CKMS_MIRROR_DEBIAN".into(), format!("{}/debian", self.server.base())),
            ("CKMS_MIRROR_DEBIAN_SECURITY".into(), format!("{}/debian-security", self.server.base())),
        ]
    }

    /// The whole bookworm-security, with the new kernel, signed anew: what a mirror does when
    /// the distribution publishes a kernel.
    pub fn gain_kernel(&self) -> std::time::Instant {
        self.publish("debian-security", "bookworm-security", self.security_full.clone());
        std::time::Instant::now()
    }

    /// The mirror down (503 to every request) or back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Bytes sent so far, headers included.
    pub fn bytes_sent(&self) -> u64 {
        self.server.bytes_sent()
    }

    /// Serves `packages` as the suite's Packages.xz under a new InRelease listing it. The
    /// InRelease goes in last, so that a client never sees it before what it lists.
    fn publish(&self, role: &str, suite: &str, packages: Vec<u8>) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now()).replace("GMT", "UTC");
        let release = format!(
            "Origin: ckms-test\nLabel: ckms-test\nSuite: {suite}\nCodename: {suite}\nDate: {date}\n\
             Architectures: amd64\nComponents: main\nSHA256:\n {} {} {PACKAGES}\n",
            sha256_hex(&packages),
            packages.len()
        );
        let plain = self.dir.join(format!("{suite}.Release"));
        std::fs::write(&plain, release).unwrap();
        let signed = self.dir.join(format!("{suite}.InRelease"));
        let _ = std::fs::remove_file(&signed);
        run(gpg(&self.gnupg)
            .args(["--local-user", "archive@example.invalid", "--clearsign", "--output"])
            .arg(&signed)
            .arg(&plain));
        let mut files = self.files.lock().unwrap();
        files.insert(format!("/{role}/dists/{suite}/{PACKAGES}"), packages);
        files.insert(format!("/{role}/dists/{suite}/InRelease"), std::fs::read(&signed).unwrap());
    }
}

fn gpg(home: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.arg("--batch").arg("--quiet").arg("--homedir").arg(home);
    c
}

/// Index files from memory (304 when the client has them), package files from the host's
/// mirror by redirection.
fn answer(files: &Files, upstream: &HashMap<&'static str, String>, path: &str, etag_seen: Option<&String>) -> Response {
    if let Some(body) = files.lock().unwrap().get(path) {
        let etag = format!("\"{}\"", &sha256_hex(body)[..16]);
        if etag_seen == Some(&etag) {
            return Response { status: "304 Not Modified", headers: vec![("ETag".into(), etag)], body: Vec::new() };
        }
        return Response { status: "200 OK", headers: vec![("ETag".into(), etag)], body: body.clone() };
    }
    for (role, base) in upstream {
        if let Some(rest) = path.strip_prefix(&format!("/{role}/pool/")) {
            let to = format!("{base}/pool/{rest}");
            return Response { status: "302 Found", headers: vec![("Location".into(), to)], body: Vec::new() };
        }
    }
    Response::not_found()
}

/// The host's mirror for each role, as its apt sources name it.
fn upstream_mirrors() -> HashMap<&'static str, String> {
    let targets = run(Command::new("apt-get").args(["indextargets", "--format", "$(REPO_URI) $(RELEASE)"]));
    let mut found = HashMap::new();
    for (role, suite) in SUITES {
        let uri = targets
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(_, s)| s.trim() == suite)
            .map(|(u, _)| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| panic!("the host's apt sources name no {suite} suite:\n{targets}"));
        found.insert(role, uri);
    }
    found
}

/// `debian-bookworm` with the test keyring and one kernel series and flavour.
fn write_profile(dir: &Path, keyring: &Path) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/debian-bookworm.toml")).unwrap();
    let keyrings = "keyrings = [\"/usr/share/keyrings/debian-archive-keyring.gpg\", \"/usr/share/keyrings/debian-archive-keyring.pgp\"]";
    let headers = r"headers = '^linux-headers-(?P<kver>\d+\.\d+\.\d+\S*-(?:{arch}|cloud-{arch}|rt-{arch}))$'";
    assert!(shipped.contains(keyrings) && shipped.contains(headers), "profiles/debian-bookworm.toml changed");
    let text = shipped
        .replace(keyrings, &format!("keyrings = [{:?}]", keyring.display().to_string()))
        .replace(headers, r"headers = '^linux-headers-(?P<kver>6\.1\.0-\d+-amd64)$'");
    let profiles = dir.join("data/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(profiles.join("debian-bookworm.toml"), text).unwrap();
}

/// The newest `6.1.0-N-amd64` in `packages`: (the one before it, it, `packages` without the
/// packages named for it).
fn hold_back_newest(packages: &[u8]) -> (String, String, Vec<u8>) {
    let text = String::from_utf8_lossy(packages);
    let stanzas: Vec<&str> = text.split("\n\n").filter(|s| !s.trim().is_empty()).collect();
    let field = |s: &str, name: &str| {
        s.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string)).unwrap_or_default()
    };
    let abi = |s: &str| {
        field(s, "Package")
            .strip_prefix("linux-headers-6.1.0-")
            .and_then(|r| r.strip_suffix("-amd64"))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let mut abis: Vec<u32> = stanzas.iter().filter_map(|s| abi(s)).collect();
    abis.sort_unstable();
    abis.dedup();
    let [.., old, new] = abis[..] else { panic!("bookworm-security offers fewer than two 6.1 kernels: {abis:?}") };
    // Only what the ABI names: the suite keeps one version of linux-kbuild-6.1 and such, the
    // newest, which the older kernels' headers depend on too.
    let named = format!("6.1.0-{new}-");
    let kept: Vec<&str> = stanzas.into_iter().filter(|s| !field(s, "Package").contains(&named)).collect();
    let mut out = kept.join("\n\n").into_bytes();
    out.extend_from_slice(b"\n\n");
    (format!("6.1.0-{old}-amd64"), format!("6.1.0-{new}-amd64"), out)
}

fn unxz(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    liblzma::read::XzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    liblzma::read::XzEncoder::new(bytes, 1).read_to_end(&mut out).unwrap();
    out
}
