//! `ckms sign` against the kernel's own `scripts/sign-file`, from Debian's linux-kbuild-6.1
//! package (fetched through ckms's verified index and shared cache; no package, no test: it
//! fails). Same module, key, certificate and hash give the same bytes; `openssl cms -verify`
//! accepts them; signing twice replaces the signature; passphrase keys work through
//! KBUILD_SIGN_PIN for both; and broken keys fail with a message naming the file.
//!
//! The modules are a deterministic ELF-looking blob (sign-file signs any bytes) and a real one
//! from Debian's linux-image package, which Debian signed: ckms replaces that signature.
mod support;

#[path = "support/token.rs"]
mod token;

#[path = "support/dkms_packages.rs"]
mod dkms_packages;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ckms::diagnose::code;
use support::{ckms, Ckms};

const KBUILD: &str = "linux-kbuild-6.1";

/// Debian's sign-file, unpacked from linux-kbuild-6.1 into `dir`.
async fn debian_sign_file(dir: &Path) -> PathBuf {
    let ctx = dkms_packages::context();
    let index = dkms_packages::index(&ctx, "debian-bookworm").await;
    let pkg =
        index.candidate(KBUILD).unwrap_or_else(|| panic!("the bookworm index does not offer {KBUILD}")).to_package();
    ckms::repo::fetch_packages(&ctx.cache, std::slice::from_ref(&pkg), &ckms::report::Silent)
        .await
        .unwrap_or_else(|e| panic!("fetching {KBUILD} {}: {e}", pkg.version));
    let deb = std::fs::File::open(ctx.cache.blob_path(&pkg.sha256)).expect("the fetched package is in the cache");
    let data = ckms::deb::data_tar(deb, KBUILD).unwrap_or_else(|e| panic!("reading {KBUILD}: {e}"));
    let wanted = format!("usr/lib/{KBUILD}/scripts/sign-file");
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries().expect("the data tar reads") {
        let mut entry = entry.expect("a tar entry");
        if entry.path().is_ok_and(|p| p.ends_with(&wanted)) {
            let out = dir.join("sign-file");
            entry.unpack(&out).expect("unpacking sign-file");
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).expect("chmod sign-file");
            return out;
        }
    }
    panic!("{KBUILD} {} has no {wanted}", pkg.version);
}

/// The bytes of the first `.ko` in a package's data tar, and its path.
fn first_module(deb: &Path, origin: &str) -> (String, Vec<u8>) {
    let file = std::fs::File::open(deb).expect("the fetched package is in the cache");
    let data = ckms::deb::data_tar(file, origin).unwrap_or_else(|e| panic!("reading {origin}: {e}"));
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries().expect("the data tar reads") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("a tar path").display().to_string();
        if path.ends_with(".ko") && entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("reading the module");
            return (path, bytes);
        }
    }
    panic!("{origin} holds no .ko");
}

/// Something module-like and deterministic, larger than OpenSSL's I/O buffers.
fn module_bytes() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0\x3e\0".to_vec();
    let mut x: u32 = 2_463_534_242;
    for i in 0..300_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(if i % 5 == 0 { (x >> 24) as u8 } else { b"init_module\0"[i as usize % 12] });
    }
    v
}

/// A scratch machine: ckms's tree, dkms's conf dir and key dir, all under one temp dir.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host { dir: tempfile::tempdir().expect("temp dir") }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn ckms<const N: usize>(&self, args: [&str; N]) -> Ckms {
        self.ckms_args(&args)
    }
    fn ckms_args(&self, args: &[&str]) -> Ckms {
        ckms(args)
            .env("CKMS_CACHE_DIR", self.path("cache"))
            .env("CKMS_DKMS_TREE", self.path("tree"))
            .env("CKMS_CONF_DIR", self.path("etc-dkms"))
            .env("CKMS_DKMS_MOK_DIR", self.path("var-lib-dkms"))
    }
    /// A new pair made by `ckms generate-mok` at `<name>.key` / `<name>.der`.
    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, cert) = (self.path(&format!("{name}.key")), self.path(&format!("{name}.der")));
        let (k, c) = (key.display().to_string(), cert.display().to_string());
        let run = self.ckms(["generate-mok", "--key", &k, "--cert", &c]).run();
        run.expect_code(0);
        let mode = std::fs::metadata(&key).expect("the key exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key must be private{run}");
        (key, cert)
    }
    fn module(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, module_bytes()).expect("writing the module");
        path
    }
}

fn sign_file(tool: &Path, hash: &str, key: &Path, cert: &Path, module: &Path, pin: Option<&str>) {
    let mut cmd = Command::new(tool);
    cmd.args([hash.as_ref(), key.as_os_str(), cert.as_os_str(), module.as_os_str()]);
    cmd.env_remove("KBUILD_SIGN_PIN");
    if let Some(pin) = pin {
        cmd.env("KBUILD_SIGN_PIN", pin);
    }
    let out = cmd.output().expect("running sign-file");
    assert!(out.status.success(), "sign-file failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn ckms_sign(host: &Host, hash: &str, key: &Path, cert: &Path, module: &Path) -> Ckms {
    let (k, c, m) = (key.display().to_string(), cert.display().to_string(), module.display().to_string());
    host.ckms(["sign", &m, "--key", &k, "--cert", &c, "--hash", hash])
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().expect("running openssl (apt-get install openssl)")
}

/// The CMS blob of a module signed by sign-file or ckms: between the module and the trailer.
fn cms_of(signed: &[u8], unsigned_len: usize) -> Vec<u8> {
    signed[unsigned_len..signed.len() - 12 - 28].to_vec()
}

#[tokio::test]
async fn signatures_are_byte_identical_to_sign_file() {
    let host = Host::new();
    let tool = debian_sign_file(host.dir.path()).await;
    let (key, cert) = host.pair("mok");
    let cert_pem = host.path("mok.pem");
    let conv = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        &cert.display().to_string(),
        "-out",
        &cert_pem.display().to_string(),
    ]);
    assert!(conv.status.success(), "openssl x509: {}", String::from_utf8_lossy(&conv.stderr));
    let unsigned = module_bytes();

    for hash in ["sha256", "sha512"] {
        let reference = host.module(&format!("ref-{hash}.ko"));
        sign_file(&tool, hash, &key, &cert, &reference, None);
        let ours = host.module(&format!("ours-{hash}.ko"));
        let run = ckms_sign(&host, hash, &key, &cert, &ours).run();
        run.expect_code(0);
        let (expected, got) = (std::fs::read(&reference).unwrap(), std::fs::read(&ours).unwrap());
        assert!(got.len() > unsigned.len(), "nothing was appended{run}");
        assert!(expected == got, "{hash}: ckms's signed module differs from sign-file's{run}");

        // Re-signing replaces the signature: the same bytes as signing once.
        ckms_sign(&host, hash, &key, &cert, &ours).run().expect_code(0);
        assert!(std::fs::read(&ours).unwrap() == expected, "{hash}: signing twice is not signing once");

        // OpenSSL's own verifier accepts the detached signature over the module.
        let sig = host.path(&format!("{hash}.p7s"));
        std::fs::write(&sig, cms_of(&got, unsigned.len())).unwrap();
        let content = host.module("content.ko");
        let check = openssl(&[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &sig.display().to_string(),
            "-content",
            &content.display().to_string(),
            "-certfile",
            &cert_pem.display().to_string(),
            "-nointern",
            "-noverify",
            "-out",
            "/dev/null",
        ]);
        assert!(check.status.success(), "openssl cms -verify refused it: {}", String::from_utf8_lossy(&check.stderr));

        // And ckms names the signer and hash.
        let verify = host
            .ckms(["--json", "verify-signature", &ours.display().to_string(), "--cert", &cert.display().to_string()])
            .run();
        verify.expect_code(0);
        let result = verify.json_result();
        assert_eq!(result["hash"], hash, "{verify}");
        assert_eq!(result["signer"], "ckms module signing key", "{verify}");
    }
}

/// A real module, signed by Debian's kernel build: `ckms sign` replaces Debian's signature
/// with ours, giving exactly what sign-file gives for the module without any signature.
#[tokio::test]
async fn a_debian_signed_module_is_re_signed_like_sign_file_signs_it_unsigned() {
    const IMAGE: &str = "linux-image-6.1.0-56-amd64";
    let host = Host::new();
    let tool = debian_sign_file(host.dir.path()).await;
    let ctx = dkms_packages::context();
    let index = dkms_packages::index(&ctx, "debian-bookworm").await;
    let pkg =
        index.candidate(IMAGE).unwrap_or_else(|| panic!("the bookworm index does not offer {IMAGE}")).to_package();
    ckms::repo::fetch_packages(&ctx.cache, std::slice::from_ref(&pkg), &ckms::report::Silent)
        .await
        .unwrap_or_else(|e| panic!("fetching {IMAGE} {}: {e}", pkg.version));
    let (name, debian_signed) = first_module(&ctx.cache.blob_path(&pkg.sha256), IMAGE);
    // The trailer, read here independently of ckms: the CMS length, big-endian, before the magic.
    let magic = b"~Module signature appended~\n";
    assert!(debian_signed.ends_with(magic), "{name} from {IMAGE} is not signed by Debian");
    let at = debian_signed.len() - magic.len() - 4;
    let sig_len = u32::from_be_bytes(debian_signed[at..at + 4].try_into().unwrap()) as usize;
    let unsigned = &debian_signed[..debian_signed.len() - magic.len() - 12 - sig_len];

    let (key, cert) = host.pair("mok");
    // Checked against our certificate, Debian's signature fails and is named.
    let debian = host.path("debian.ko");
    std::fs::write(&debian, &debian_signed).unwrap();
    let theirs =
        host.ckms(["verify-signature", &debian.display().to_string(), "--cert", &cert.display().to_string()]).run();
    theirs.expect_code(code::BAD_MODULE_SIGNATURE);
    assert!(theirs.error_message().contains("signed by \""), "the signer is not named{theirs}");
    let reference = host.path("reference.ko");
    std::fs::write(&reference, unsigned).unwrap();
    sign_file(&tool, "sha256", &key, &cert, &reference, None);
    let ours = host.path("ours.ko");
    std::fs::write(&ours, &debian_signed).unwrap();
    let run = ckms_sign(&host, "sha256", &key, &cert, &ours).run();
    run.expect_code(0);
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&reference).unwrap(),
        "{name}: re-signing Debian's module differs from sign-file on the unsigned module{run}"
    );
    let verify =
        host.ckms(["verify-signature", &ours.display().to_string(), "--cert", &cert.display().to_string()]).run();
    verify.expect_code(0);
}

#[tokio::test]
async fn passphrase_keys_through_kbuild_sign_pin() {
    let host = Host::new();
    let tool = debian_sign_file(host.dir.path()).await;
    let (key, cert) = host.pair("mok");
    let locked = host.path("locked.key");
    let enc = openssl(&[
        "pkey",
        "-in",
        &key.display().to_string(),
        "-aes256",
        "-passout",
        "pass:s3cret",
        "-out",
        &locked.display().to_string(),
    ]);
    assert!(enc.status.success(), "openssl pkey: {}", String::from_utf8_lossy(&enc.stderr));

    let reference = host.module("ref.ko");
    sign_file(&tool, "sha256", &locked, &cert, &reference, Some("s3cret"));
    let ours = host.module("ours.ko");
    let run = ckms_sign(&host, "sha256", &locked, &cert, &ours).env("KBUILD_SIGN_PIN", "s3cret").run();
    run.expect_code(0);
    assert!(std::fs::read(&reference).unwrap() == std::fs::read(&ours).unwrap(), "differs from sign-file{run}");

    let before = std::fs::read(&ours).unwrap();
    let wrong = ckms_sign(&host, "sha256", &locked, &cert, &ours).env("KBUILD_SIGN_PIN", "wrong").run();
    wrong.expect_code(code::SIGNING_FAILED);
    let message = wrong.error_message();
    assert!(message.contains(&locked.display().to_string()) && message.contains("passphrase"), "{wrong}");
    assert!(wrong.hint().contains("KBUILD_SIGN_PIN"), "{wrong}");
    let none = ckms_sign(&host, "sha256", &locked, &cert, &ours).run();
    none.expect_code(code::SIGNING_FAILED);
    assert!(none.error_message().contains("passphrase"), "{none}");
    assert!(std::fs::read(&ours).unwrap() == before, "a failed signing changed the module");
}

#[test]
fn broken_keys_fail_clearly_and_leave_the_module_alone() {
    let host = Host::new();
    let (key, cert) = host.pair("mok");
    let (other_key, _) = host.pair("other");
    let module = host.module("m.ko");
    let dir_key = host.path("a-directory.key");
    std::fs::create_dir(&dir_key).unwrap();
    let corrupt = host.path("corrupt.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    std::fs::write(&corrupt, &pem[..pem.len() / 2]).unwrap();
    let missing = host.path("missing.key");

    let cases: [(&str, &Path, &Path, &str); 5] = [
        ("missing key", &missing, &cert, "does not exist"),
        ("missing certificate", &key, &missing, "does not exist"),
        ("unreadable key (a directory)", &dir_key, &cert, "cannot read"),
        ("corrupt key", &corrupt, &cert, "not a usable PEM private key"),
        ("key of another certificate", &other_key, &cert, "does not belong to the certificate"),
    ];
    for (what, k, c, says) in cases {
        let run = ckms_sign(&host, "sha256", k, c, &module).run();
        run.expect_code(code::SIGNING_FAILED);
        let message = run.error_message();
        assert!(message.contains(says), "{what}: {message}{run}");
        assert!(
            message.contains(&k.display().to_string()) || message.contains(&c.display().to_string()),
            "{what}: the message must name the file{run}"
        );
        assert!(!run.hint().is_empty(), "{what}: no hint{run}");
        assert_eq!(std::fs::read(&module).unwrap(), module_bytes(), "{what}: the module changed");
    }
}

#[test]
fn verify_signature_refuses_unsigned_and_foreign_modules_and_reads_compressed_ones() {
    let host = Host::new();
    let (key, cert) = host.pair("mok");
    let (_, other_cert) = host.pair("other");
    let module = host.module("m.ko");
    let verify = |file: &Path, cert: &Path| {
        host.ckms(["verify-signature", &file.display().to_string(), "--cert", &cert.display().to_string()]).run()
    };
    verify(&module, &cert).expect_code(code::BAD_MODULE_SIGNATURE);
    ckms_sign(&host, "sha256", &key, &cert, &module).run().expect_code(0);
    verify(&module, &cert).expect_code(0);
    let foreign = verify(&module, &other_cert);
    foreign.expect_code(code::BAD_MODULE_SIGNATURE);
    assert!(foreign.error_message().contains("does not verify"), "{foreign}");

    let xz = host.path("m.ko.xz");
    std::fs::write(&xz, ckms::install::Compression::Xz.compress(&module_bytes()).unwrap()).unwrap();
    ckms_sign(&host, "sha512", &key, &cert, &xz).run().expect_code(0);
    let run = verify(&xz, &cert);
    run.expect_code(0);
    assert!(run.stdout.contains("sha512"), "{run}");
}

#[test]
fn generate_mok_refuses_to_overwrite_without_force() {
    let host = Host::new();
    let (key, cert) = host.pair("mok");
    let first = std::fs::read(&cert).unwrap();
    let (k, c) = (key.display().to_string(), cert.display().to_string());
    let again = host.ckms(["generate-mok", "--key", &k, "--cert", &c]).run();
    again.expect_code(code::SIGNING_FAILED);
    assert!(again.hint().contains("--force"), "{again}");
    host.ckms(["generate-mok", "--key", &k, "--cert", &c, "--force"]).run().expect_code(0);
    assert_ne!(std::fs::read(&cert).unwrap(), first, "--force made no new certificate");

    // Without --key/--cert: ckms's own pair in its tree, then `mok enroll` prints the import.
    host.ckms(["generate-mok"]).run().expect_code(0);
    assert!(host.path("tree/mok.key").is_file() && host.path("tree/mok.pub").is_file());
    let enroll = host.ckms(["mok", "enroll"]).run();
    enroll.expect_code(0);
    let tree_cert = host.path("tree/mok.pub").display().to_string();
    assert!(enroll.stdout.contains(&format!("mokutil --import {tree_cert}")), "{enroll}");
    assert!(enroll.stdout.contains("Enroll MOK") && enroll.stdout.contains("--test-key"), "{enroll}");
}

/// A key held in a PKCS#11 token (SoftHSM2), named by a `pkcs11:` URI as dkms's
/// mok_signing_key names one: ckms's signature is byte for byte sign-file's with the same URI,
/// whether the key comes from --key or framework.conf and the PIN from KBUILD_SIGN_PIN or the
/// URI; no PIN or a wrong one fails without a prompt and leaves the module alone; and the key is
/// one the token never lets out.
#[tokio::test]
async fn a_token_key_signs_exactly_as_sign_file_does() {
    let host = Host::new();
    let tool = debian_sign_file(host.dir.path()).await;
    let token = token::Token::new();
    let with_pin = format!("{}?pin-value={}", token::URI, token::PIN);
    let cert = token.cert.display().to_string();

    // Debian's sign-file (OpenSSL 3: the pkcs11 provider) takes the PIN from the URI.
    let reference = host.module("ref.ko");
    let out = Command::new(&tool)
        .args(["sha256", &with_pin, &cert, &reference.display().to_string()])
        .envs(token.openssl_env())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running sign-file");
    assert!(out.status.success(), "sign-file with the token failed: {}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read(&reference).unwrap();
    assert!(expected.len() > module_bytes().len(), "sign-file appended nothing");

    let sign = |module: &Path, key: Option<&str>, pin: Option<&str>| {
        let m = module.display().to_string();
        let mut args = vec!["sign", m.as_str()];
        if let Some(key) = key {
            args.extend(["--key", key, "--cert", &cert]);
        }
        let mut run = host.ckms_args(&args);
        for (k, v) in token.env() {
            run = run.env(k, v);
        }
        if let Some(pin) = pin {
            run = run.env("KBUILD_SIGN_PIN", pin);
        }
        run.run()
    };
    // --key with the PIN in KBUILD_SIGN_PIN, then with the PIN in the URI.
    for (n, (key, pin)) in [(token::URI, Some(token::PIN)), (with_pin.as_str(), None)].into_iter().enumerate() {
        let ours = host.module(&format!("ours-{n}.ko"));
        let run = sign(&ours, Some(key), pin);
        run.expect_code(0);
        assert!(std::fs::read(&ours).unwrap() == expected, "ckms's token signature differs from sign-file's{run}");
        assert!(!run.stdout.contains(token::PIN) && !run.stderr.contains(token::PIN), "the PIN is shown{run}");
    }
    // framework.conf names the token, as for dkms.
    let conf_dir = host.path("etc-dkms");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("framework.conf"),
        format!("mok_signing_key=\"{}\"\nmok_certificate=\"{cert}\"\n", token::URI),
    )
    .unwrap();
    let ours = host.module("ours-conf.ko");
    let run = sign(&ours, None, Some(token::PIN));
    run.expect_code(0);
    assert!(std::fs::read(&ours).unwrap() == expected, "signed through framework.conf, it differs{run}");

    // No PIN, a wrong PIN: refused, nothing prompted, the module untouched.
    for pin in [None, Some("9999")] {
        let module = host.module("refused.ko");
        let run = sign(&module, Some(token::URI), pin);
        run.expect_code(code::SIGNING_FAILED);
        assert!(run.stderr.contains("KBUILD_SIGN_PIN") && !run.stderr.contains("Enter PIN"), "{run}");
        assert!(std::fs::read(&module).unwrap() == module_bytes(), "a refused signing changed the module{run}");
    }
    // The key was made in the token and can never leave it.
    let objects = token.objects();
    assert!(objects.contains("never extractable"), "the token key is extractable:\n{objects}");
}
