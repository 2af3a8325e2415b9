//! A PKCS#11 token for the signing tests: Debian's SoftHSM2 in a temporary directory, an RSA key
//! generated inside it (never extractable) by OpenSC's pkcs11-tool, and its certificate made by
//! `openssl req` through the pkcs11 provider. Every tool missing is a failure that names the
//! package (ci/setup-build-deps.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PIN of the test token.
pub const PIN: &str = "1234";
/// The key in the token, as dkms's mok_signing_key would name it.
pub const URI: &str = "pkcs11:token=ckms-test;object=mok;type=private";
/// SoftHSM2's PKCS#11 module, where Debian's softhsm2 package puts it.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub struct Token {
    pub dir: tempfile::TempDir,
    /// The key's certificate, DER.
    pub cert: PathBuf,
}

impl Token {
    /// A token with one key and its certificate.
    pub fn new() -> Token {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!("directories.tokendir = {}\nobjectstore.backend = file\n", dir.path().join("tokens").display()),
        )
        .expect("softhsm2.conf");
        // The kernel's sign-file and openssl load the pkcs11 provider into OpenSSL's process-wide
        // context, where SoftHSM2 computes too: with the provider first it calls itself back and
        // hangs (pkcs11-provider#634). Loading the default provider first, and keeping digests
        // away from the token, avoids that. ckms does not need this (it loads the provider into
        // a context of its own).
        std::fs::write(
            dir.path().join("openssl.cnf"),
            format!(
                "openssl_conf = init\n[init]\nproviders = providers\n[providers]\ndefault = default_sect\n\
                 pkcs11 = pkcs11_sect\n[default_sect]\nactivate = 1\n[pkcs11_sect]\nmodule = {}\npkcs11-module-path = {MODULE}\n\
                 pkcs11-module-block-operations = digest\nactivate = 1\n",
                provider_module().display()
            ),
        )
        .expect("openssl.cnf");
        let token = Token { cert: dir.path().join("token.der"), dir };
        token.tool(
            "softhsm2-util",
            "softhsm2",
            &["--init-token", "--free", "--label", "ckms-test", "--pin", PIN, "--so-pin", "5678"],
        );
        token.tool(
            "pkcs11-tool",
            "opensc",
            &[
                "--module",
                MODULE,
                "--token-label",
                "ckms-test",
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--label",
                "mok",
                "--id",
                "01",
            ],
        );
        let uri = format!("{URI}?pin-value={PIN}");
        let cert = token.cert.display().to_string();
        // openssl req writes the certificate, then may die of SIGSEGV while SoftHSM2 is unloaded
        // at exit (openssl#22508); the certificate is checked instead of its exit status.
        let _ = token.run(
            "openssl",
            "openssl",
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                &uri,
                "-subj",
                "/CN=ckms token key",
                "-days",
                "3650",
                "-sha256",
                "-outform",
                "DER",
                "-out",
                &cert,
            ],
        );
        token.tool("openssl", "openssl", &["x509", "-inform", "DER", "-in", &cert, "-noout"]);
        token
    }

    /// The environment a process needs to reach the token: SoftHSM2's configuration and, for
    /// ckms and the pkcs11 provider, the PKCS#11 module to load.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf").display().to_string()),
            ("PKCS11_PROVIDER_MODULE", MODULE.to_string()),
        ]
    }

    /// The environment for sign-file and openssl (see `new`).
    pub fn openssl_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.push(("OPENSSL_CONF", self.dir.path().join("openssl.cnf").display().to_string()));
        env
    }

    /// What pkcs11-tool says of the token's objects.
    pub fn objects(&self) -> String {
        self.tool(
            "pkcs11-tool",
            "opensc",
            &["--module", MODULE, "--token-label", "ckms-test", "--login", "--pin", PIN, "--list-objects"],
        )
    }

    fn tool(&self, tool: &str, package: &str, args: &[&str]) -> String {
        let (status, text) = self.run(tool, package, args);
        assert!(status.success(), "{tool} {args:?} failed:\n{text}");
        text
    }

    fn run(&self, tool: &str, package: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
        // Only openssl needs the provider configuration; SoftHSM2's tools would load it too.
        let env = if tool == "openssl" { self.openssl_env() } else { self.env() };
        let out = Command::new(tool)
            .args(args)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {tool} (apt-get install {package}): {e}"));
        (out.status, String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    }
}

/// OpenSSL's pkcs11 provider (Debian's pkcs11-provider): a failure that says so when missing.
fn provider_module() -> PathBuf {
    let out = Command::new("openssl").args(["version", "-m"]).output().expect("running openssl version");
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.split('"').nth(1).unwrap_or("/usr/lib/x86_64-linux-gnu/ossl-modules");
    let module = Path::new(dir).join("pkcs11.so");
    assert!(
        module.is_file(),
        "{} is missing: apt-get install pkcs11-provider (bookworm: from bookworm-backports)",
        module.display()
    );
    module
}
