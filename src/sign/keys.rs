//! The Machine Owner Key: where it is (command line, dkms's framework.conf, dkms's own pair,
//! ckms's pair), making a new one (`ckms generate-mok`), loading it, and enrolling it.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::lib_ctx::LibCtxRef;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::token::{self, TokenKey};
use super::{first_reason, SignError};
use crate::framework::Framework;

/// RSA modulus size of a generated key: dkms's (the kernel and shim take larger ones too).
pub const KEY_BITS: u32 = 2048;
/// The generated certificate's subject (dkms's says "DKMS module signing key").
pub const COMMON_NAME: &str = "ckms module signing key";
/// Validity of a generated certificate: 100 years, as dkms (the kernel ignores expiry).
const VALID_DAYS: u32 = 36500;
/// File names of a pair in a directory, as dkms names them.
pub const KEY_FILE: &str = "mok.key";
pub const CERT_FILE: &str = "mok.pub";

/// Where keys may be, in the order they are looked for.
#[derive(Debug, Clone)]
pub struct Locations {
    /// dkms's configuration directory (framework.conf, framework.conf.d/*.conf).
    pub conf_dir: PathBuf,
    /// Where dkms keeps its pair (/var/lib/dkms): used when both files exist there.
    pub dkms_dir: PathBuf,
    /// ckms's own pair (`<dkms_tree>`), made on first use.
    pub own_dir: PathBuf,
    /// The kernel the modules are for, for framework.conf's `$kernelver`.
    pub kernel: Option<String>,
}

/// Where the key and certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// --key/--cert, or framework.conf's mok_signing_key/mok_certificate.
    Configured,
    /// dkms's /var/lib/dkms pair (already enrolled by a dkms user).
    Dkms,
    /// ckms's own pair: may be generated.
    Own,
}

/// A private key file and its certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyPaths {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub origin: Origin,
}

impl KeyPaths {
    /// The key's name for messages: its path, or its token URI without a PIN.
    pub fn key_shown(&self) -> String {
        match token::uri(&self.key) {
            Some(uri) => token::shown(uri),
            None => self.key.display().to_string(),
        }
    }
}

impl Locations {
    /// The key pair to use: `key`/`cert` given explicitly win, then framework.conf's
    /// settings (each on its own, as dkms reads them), then dkms's pair if both files
    /// exist, else ckms's own pair (which may not exist yet).
    pub fn resolve(&self, key: Option<&Path>, cert: Option<&Path>) -> KeyPaths {
        let conf = Framework::read(&self.conf_dir);
        let kernel = self.kernel.as_deref();
        let key = key.map(Path::to_path_buf).or_else(|| conf.path("mok_signing_key", kernel));
        let cert = cert.map(Path::to_path_buf).or_else(|| conf.path("mok_certificate", kernel));
        let dkms = (self.dkms_dir.join(KEY_FILE), self.dkms_dir.join(CERT_FILE));
        let (default, origin) = if dkms.0.is_file() && dkms.1.is_file() {
            (dkms, Origin::Dkms)
        } else {
            ((self.own_dir.join(KEY_FILE), self.own_dir.join(CERT_FILE)), Origin::Own)
        };
        let origin = if key.is_some() || cert.is_some() { Origin::Configured } else { origin };
        KeyPaths { key: key.unwrap_or(default.0), cert: cert.unwrap_or(default.1), origin }
    }
}

/// A private key: read from a file, or held in a PKCS#11 token.
pub enum PrivateKey {
    File(PKey<Private>),
    Token(TokenKey),
}

impl PrivateKey {
    pub fn pkey(&self) -> &PKey<Private> {
        match self {
            PrivateKey::File(key) => key,
            PrivateKey::Token(token) => &token.pkey,
        }
    }

    /// The library context signing must use: the token provider's, or the process-wide one.
    pub fn ctx(&self) -> Option<&LibCtxRef> {
        match self {
            PrivateKey::File(_) => None,
            PrivateKey::Token(token) => Some(token.ctx()),
        }
    }
}

/// A loaded key pair, checked to belong together.
pub struct Signer {
    pub key: PrivateKey,
    pub cert: X509,
    pub paths: KeyPaths,
}

impl Signer {
    /// Loads `paths`; `pin` unlocks a passphrase-protected key or logs in to the key's token
    /// (KBUILD_SIGN_PIN, as for sign-file).
    pub fn load(paths: &KeyPaths, pin: Option<&str>) -> Result<Signer, SignError> {
        let cert = load_cert(&paths.cert)?;
        let key = match token::uri(&paths.key) {
            Some(uri) => PrivateKey::Token(
                TokenKey::open(uri, pin).map_err(|detail| SignError::Token { uri: token::shown(uri), detail })?,
            ),
            None => PrivateKey::File(load_key_file(&paths.key, pin)?),
        };
        let matches = cert.public_key().is_ok_and(|public| public.public_eq(key.pkey()));
        if !matches {
            return Err(SignError::Mismatch { key: paths.key_shown(), cert: paths.cert.clone() });
        }
        Ok(Signer { key, cert, paths: paths.clone() })
    }

    /// SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256` shows it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

/// A PEM private key file; `pin` unlocks it when it is encrypted.
fn load_key_file(path: &Path, pin: Option<&str>) -> Result<PKey<Private>, SignError> {
    let pem = read(path, SignError::KeyMissing { path: path.to_path_buf() })?;
    let encrypted = pem.windows(9).any(|w| w == b"ENCRYPTED");
    let path = path.to_path_buf();
    match (encrypted, pin) {
        (true, None) => Err(SignError::NeedsPassphrase { path }),
        (true, Some(pin)) => {
            PKey::private_key_from_pem_passphrase(&pem, pin.as_bytes()).map_err(|_| SignError::WrongPassphrase { path })
        }
        (false, _) => {
            PKey::private_key_from_pem(&pem).map_err(|e| SignError::BadKey { path, detail: first_reason(&e) })
        }
    }
}

pub fn fingerprint(cert: &X509) -> String {
    cert.digest(MessageDigest::sha256()).map(|d| hex::encode(&*d)).unwrap_or_default()
}

/// The certificate subject's common name (CN), as the report names a signer.
pub fn common_name(cert: &X509) -> Option<String> {
    let entry = cert.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
    entry.data().to_string().ok()
}

/// A certificate, DER (as dkms writes mok.pub) or PEM.
pub fn load_cert(path: &Path) -> Result<X509, SignError> {
    let bytes = read(path, SignError::CertMissing { path: path.to_path_buf() })?;
    X509::from_der(&bytes)
        .or_else(|_| X509::from_pem(&bytes))
        .map_err(|e| SignError::BadCert { path: path.to_path_buf(), detail: first_reason(&e) })
}

fn read(path: &Path, missing: SignError) -> Result<Vec<u8>, SignError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing),
        Err(source) => Err(SignError::Unreadable { path: path.to_path_buf(), source }),
    }
}

/// Makes a new pair at `paths` (refused when either file exists unless `force`): RSA
/// [`KEY_BITS`], a self-signed code-signing certificate (DER) and the key (PEM, mode 0600).
pub fn generate(paths: &KeyPaths, force: bool) -> Result<Signer, SignError> {
    for existing in [&paths.key, &paths.cert] {
        if !force && (existing.exists() || existing.is_symlink()) {
            return Err(SignError::Exists { path: existing.clone() });
        }
    }
    let ssl = |e: openssl::error::ErrorStack| SignError::Generate { detail: first_reason(&e) };
    let key = PKey::from_rsa(Rsa::generate(KEY_BITS).map_err(ssl)?).map_err(ssl)?;
    let cert = certificate(&key).map_err(ssl)?;
    let pem = key.private_key_to_pem_pkcs8().map_err(ssl)?;
    let der = cert.to_der().map_err(ssl)?;
    // The key first: a certificate without its key is useless, a key alone is regenerated.
    write_atomic(&paths.key, &pem, 0o600)?;
    write_atomic(&paths.cert, &der, 0o644)?;
    Ok(Signer { key: PrivateKey::File(key), cert, paths: paths.clone() })
}

fn certificate(key: &PKey<Private>) -> Result<X509, openssl::error::ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(openssl::nid::Nid::COMMONNAME, COMMON_NAME)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    // 159 random bits, like `openssl req -x509`: serials must differ between keys, since
    // the kernel finds a module's key by issuer and serial.
    let mut serial = BigNum::new()?;
    serial.rand(159, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(Asn1Integer::from_bn(&serial)?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(VALID_DAYS)?.as_ref())?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().code_signing().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(None, None))?;
    b.append_extension(aki)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// Writes `path` through a temporary file in its directory, created with `mode` (so a
/// private key is never readable by others, whatever the umask), then renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    let err = |source| SignError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".ckms-key-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err)?;
    // The umask may have narrowed the mode; set it exactly.
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// `mokutil --import <cert>`: what enrolls the certificate at next boot.
pub fn enroll_command(cert: &Path) -> Vec<String> {
    vec!["mokutil".into(), "--import".into(), cert.display().to_string()]
}

/// What the user does after `mokutil --import`, and how to check it worked.
pub fn enroll_instructions(cert: &Path) -> String {
    format!(
        "mokutil asks for a one-time password. At the next boot, shim's MokManager (blue screen) \
         starts: choose \"Enroll MOK\", \"Continue\", \"Yes\", type that password, then \"Reboot\". \
         Afterwards `mokutil --test-key {}` says the key is enrolled, and modules signed with it \
         load with Secure Boot on.",
        cert.display()
    )
}

/// Runs [`enroll_command`] with the terminal attached (mokutil prompts for the password).
pub fn enroll(cert: &Path) -> Result<(), SignError> {
    load_cert(cert)?;
    let argv = enroll_command(cert);
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| SignError::Enroll { detail: format!("cannot run mokutil: {e}") })?;
    if !status.success() {
        return Err(SignError::Enroll { detail: format!("mokutil --import returned {status}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locations(dir: &Path) -> Locations {
        Locations { conf_dir: dir.join("etc"), dkms_dir: dir.join("dkms"), own_dir: dir.join("ckms"), kernel: None }
    }

    #[test]
    fn precedence_cli_then_framework_then_dkms_then_own() {
        let dir = tempfile::tempdir().unwrap();
        let loc = locations(dir.path());
        let own = loc.resolve(None, None);
        assert_eq!((own.key.clone(), own.origin), (dir.path().join("ckms/mok.key"), Origin::Own));

        std::fs::create_dir_all(dir.path().join("dkms")).unwrap();
        std::fs::write(dir.path().join("dkms/mok.key"), "k").unwrap();
        assert_eq!(loc.resolve(None, None).origin, Origin::Own, "dkms's pair counts only when whole");
        std::fs::write(dir.path().join("dkms/mok.pub"), "c").unwrap();
        let dkms = loc.resolve(None, None);
        assert_eq!((dkms.cert, dkms.origin), (dir.path().join("dkms/mok.pub"), Origin::Dkms));

        std::fs::create_dir_all(dir.path().join("etc/framework.conf.d")).unwrap();
        std::fs::write(dir.path().join("etc/framework.conf"), "mok_signing_key=/a.key\nmok_certificate=/a.der\n")
            .unwrap();
        std::fs::write(dir.path().join("etc/framework.conf.d/z.conf"), "mok_certificate=/z.der\n").unwrap();
        let conf = loc.resolve(None, None);
        assert_eq!((conf.key, conf.cert), (PathBuf::from("/a.key"), PathBuf::from("/z.der")));
        assert_eq!(conf.origin, Origin::Configured);

        let cli = loc.resolve(Some(Path::new("/cli.key")), None);
        assert_eq!((cli.key, cli.cert), (PathBuf::from("/cli.key"), PathBuf::from("/z.der")));
    }

    #[test]
    fn a_generated_pair_loads_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = locations(dir.path()).resolve(None, None);
        let made = generate(&paths, false).unwrap();
        let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Signer::load(&paths, None).unwrap();
        assert_eq!(loaded.fingerprint(), made.fingerprint());
        let cert = &loaded.cert;
        assert_eq!(cert.public_key().unwrap().bits(), KEY_BITS);
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        for wanted in ["Code Signing", "CA:FALSE", "Digital Signature", "Subject Key Identifier", COMMON_NAME] {
            assert!(text.contains(wanted), "{wanted} missing from\n{text}");
        }
        assert!(matches!(generate(&paths, false), Err(SignError::Exists { .. })));
        let again = generate(&paths, true).unwrap();
        assert_ne!(again.fingerprint(), made.fingerprint());
    }

    #[test]
    fn broken_keys_say_which_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let paths = locations(dir.path()).resolve(None, None);
        assert!(matches!(Signer::load(&paths, None), Err(SignError::CertMissing { .. })));
        let made = generate(&paths, false).unwrap();

        std::fs::remove_file(&paths.key).unwrap();
        assert!(matches!(Signer::load(&paths, None), Err(SignError::KeyMissing { .. })));
        std::fs::create_dir(&paths.key).unwrap();
        assert!(matches!(Signer::load(&paths, None), Err(SignError::Unreadable { .. })));
        std::fs::remove_dir(&paths.key).unwrap();
        std::fs::write(&paths.key, "-----BEGIN PRIVATE KEY-----\nMIIE\n").unwrap();
        assert!(matches!(Signer::load(&paths, None), Err(SignError::BadKey { .. })));

        let other = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        std::fs::write(&paths.key, other.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let err = Signer::load(&paths, None).err().unwrap();
        assert!(matches!(err, SignError::Mismatch { .. }), "{err}");

        let locked = made
            .key
            .pkey()
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
            .unwrap();
        std::fs::write(&paths.key, locked).unwrap();
        assert!(matches!(Signer::load(&paths, None), Err(SignError::NeedsPassphrase { .. })));
        assert!(matches!(Signer::load(&paths, Some("nope")), Err(SignError::WrongPassphrase { .. })));
        assert!(Signer::load(&paths, Some("secret")).is_ok());
    }
}
