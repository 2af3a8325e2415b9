//! Module signing for Secure Boot, on the host (the key never enters a container), in the
//! kernel's own format: byte for byte what the kernel's `scripts/sign-file` appends (see
//! docs/signing.md). Also the reverse: finding, checking and naming a module's signature.
//!
//! - [`format`]: the trailer (`struct module_signature`, magic), strip and append;
//! - [`cms`]: the CMS SignedData, made and verified with OpenSSL as sign-file does;
//! - [`keys`]: where the key pair is, generating one, loading it, enrolling it as a MOK;
//! - [`token`]: keys held in a PKCS#11 token, named by a `pkcs11:` URI.

pub mod cms;
pub mod format;
pub mod keys;
pub mod token;

use openssl::hash::MessageDigest;
use openssl::x509::X509;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};
use crate::install::Compression;
use crate::report::Reporter;
pub use keys::{KeyPaths, Locations, Origin, Signer};

/// The environment variable sign-file reads a key's passphrase from.
pub const PIN_ENV: &str = "KBUILD_SIGN_PIN";

#[derive(Debug, Error)]
pub enum SignError {
    #[error("the module signing key {path} does not exist")]
    KeyMissing { path: PathBuf },
    #[error("the module signing certificate {path} does not exist")]
    CertMissing { path: PathBuf },
    #[error("{path}: cannot read it: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a usable PEM private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path} is not a usable X.509 certificate (DER or PEM): {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("the signing key {path} is protected by a passphrase")]
    NeedsPassphrase { path: PathBuf },
    #[error("the passphrase in {PIN_ENV} does not unlock the signing key {path}")]
    WrongPassphrase { path: PathBuf },
    #[error("the signing key {key} does not belong to the certificate {}", cert.display())]
    Mismatch { key: String, cert: PathBuf },
    #[error("{path} exists already")]
    Exists { path: PathBuf },
    #[error("cannot generate a signing key: {detail}")]
    Generate { detail: String },
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("unknown hash algorithm {hash:?} for module signatures")]
    UnknownHash { hash: String },
    #[error("{path}: signing failed: {detail}")]
    Sign { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Module { path: PathBuf, source: std::io::Error },
    #[error("the modules must be checked against the certificate {path}, which does not exist")]
    NoCertToVerify { path: PathBuf, signed_by: Option<String> },
    #[error("{path} is not signed")]
    NotSigned { path: PathBuf },
    #[error("{path}: malformed signature: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: the signature does not verify against {cert}: {detail}")]
    Invalid { path: PathBuf, cert: PathBuf, detail: String },
    #[error("the signing key {uri} in a PKCS#11 token: {detail}")]
    Token { uri: String, detail: String },
    #[error("enrolling the certificate failed: {detail}")]
    Enroll { detail: String },
}

impl Diagnose for SignError {
    fn exit_code(&self) -> i32 {
        match self {
            SignError::UnknownHash { .. } => code::USAGE,
            SignError::NotSigned { .. } | SignError::Malformed { .. } | SignError::Invalid { .. } => {
                code::BAD_MODULE_SIGNATURE
            }
            _ => code::SIGNING_FAILED,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            SignError::KeyMissing { .. } | SignError::CertMissing { .. } => {
                "`ckms generate-mok` makes a pair (then `ckms mok enroll`); or name yours with --key/--cert, or \
                 mok_signing_key=/mok_certificate= in /etc/dkms/framework.conf"
                    .into()
            }
            SignError::NoCertToVerify { signed_by, .. } => format!(
                "copy the certificate (mok.pub) of the key that signed them{} to that path, or name it with \
                 mok_certificate= in /etc/dkms/framework.conf; the kernel loads them only once it is enrolled",
                signed_by.as_ref().map(|s| format!(" (SHA-256 {s})")).unwrap_or_default(),
            ),
            SignError::Unreadable { path, .. } => format!("{} must be a readable file (run as root?)", path.display()),
            SignError::BadKey { .. } => "it must be the PEM private key of the certificate (mok.key)".into(),
            SignError::BadCert { .. } => "it must be the certificate enrolled as a MOK (mok.pub, DER)".into(),
            SignError::NeedsPassphrase { .. } | SignError::WrongPassphrase { .. } => {
                format!("set {PIN_ENV} to the key's passphrase, as for the kernel's sign-file")
            }
            SignError::Mismatch { .. } => {
                "use the certificate made with that key (`ckms generate-mok --force` makes a new pair, which must \
                 then be enrolled again)"
                    .into()
            }
            SignError::Exists { .. } => "pass --force to replace the pair (the new one must be enrolled again)".into(),
            SignError::Generate { .. } => "OpenSSL could not make the key; check its installation".into(),
            SignError::Write { .. } | SignError::Module { .. } => "check the path, free space and permissions".into(),
            SignError::UnknownHash { .. } => {
                "use one the kernel knows: sha256, sha384, sha512 (or sha224, sha1)".into()
            }
            SignError::Sign { .. } => "check the key (e.g. `openssl pkey -in <key> -check`)".into(),
            SignError::NotSigned { .. } => {
                "sign it with `ckms sign`, or build it again (`ckms build --force`): ckms signs what it builds when the kernel has module signing".into()
            }
            SignError::Malformed { .. } => "sign the module again: `ckms sign` replaces the signature".into(),
            SignError::Invalid { .. } => {
                "it was signed with another key, or changed after signing: sign it again with the key of this \
                 certificate"
                    .into()
            }
            SignError::Token { .. } => format!(
                "ckms reaches tokens as the kernel's sign-file does, through OpenSSL's pkcs11 provider (Debian's \
                 pkcs11-provider; bookworm has it in bookworm-backports), which loads the PKCS#11 module named by \
                 PKCS11_PROVIDER_MODULE or else p11-kit's; check the URI with `p11tool --list-all` or \
                 `pkcs11-tool --list-objects`, and give the PIN in {PIN_ENV}"
            ),
            SignError::Enroll { .. } => "install mokutil (apt-get install mokutil) and run as root".into(),
        })
    }
}

/// OpenSSL's first reason, enough to tell "not PEM" from "bad ASN.1".
fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors().first().and_then(|e| e.reason().map(str::to_string)).unwrap_or_else(|| e.to_string())
}

/// The hash the kernel signs its modules with (`CONFIG_MODULE_SIG_HASH`), from its config
/// text; `None` when the kernel has no module signing.
pub fn kernel_hash(config_text: &str) -> Option<String> {
    config_text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("CONFIG_MODULE_SIG_HASH=")?;
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The digest named as the kernel's config (and sign-file's argument) names it.
pub fn digest(hash: &str) -> Result<MessageDigest, SignError> {
    MessageDigest::from_name(hash).ok_or_else(|| SignError::UnknownHash { hash: hash.to_string() })
}

/// The passphrase of the key, from [`PIN_ENV`].
pub fn pin() -> Option<String> {
    std::env::var(PIN_ENV).ok().filter(|p| !p.is_empty())
}

/// `module` (uncompressed) signed with `signer` and `hash`; a signature it already has is
/// replaced. `path` names the module in errors.
pub fn sign(module: &[u8], signer: &Signer, hash: &str, path: &Path) -> Result<Vec<u8>, SignError> {
    let md = digest(hash)?;
    let unsigned =
        format::strip(module).map_err(|m| SignError::Malformed { path: path.to_path_buf(), what: m.to_string() })?;
    let cms = cms::sign(unsigned, signer.key.pkey(), signer.key.ctx(), &signer.cert, md)
        .map_err(|e| SignError::Sign { path: path.to_path_buf(), detail: first_reason(&e) })?;
    Ok(format::append(unsigned, &cms))
}

/// What a valid signature says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    #[serde(flatten)]
    pub signer: cms::SignerId,
    /// SHA-256 of the certificate that verified it.
    pub cert_sha256: String,
}

/// Checks `module`'s (uncompressed) signature against `cert`; `path` and `cert_path` name
/// them in errors.
pub fn verify(module: &[u8], cert: &X509, path: &Path, cert_path: &Path) -> Result<Verified, SignError> {
    let malformed = |what: String| SignError::Malformed { path: path.to_path_buf(), what };
    let signed = format::parse(module)
        .map_err(|m| malformed(m.to_string()))?
        .ok_or_else(|| SignError::NotSigned { path: path.to_path_buf() })?;
    let signer = cms::signer_id(signed.cms).ok_or_else(|| malformed("the signature is not a CMS SignedData".into()))?;
    if signer.signed_attributes {
        return Err(malformed("the signature has signed attributes, which the kernel refuses".into()));
    }
    cms::verify(signed.module, signed.cms, cert).map_err(|e| SignError::Invalid {
        path: path.to_path_buf(),
        cert: cert_path.to_path_buf(),
        detail: format!("{} (signed by {signer})", first_reason(&e)),
    })?;
    Ok(Verified { signer, cert_sha256: keys::fingerprint(cert) })
}

/// A module file's bytes, decompressed by its name's suffix (`.ko.xz`, ...).
pub fn read_module(path: &Path) -> Result<(Vec<u8>, Compression), SignError> {
    let err = |source| SignError::Module { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(err)?;
    let compression = compression_of(path);
    Ok((compression.decompress(&raw).map_err(err)?, compression))
}

fn compression_of(path: &Path) -> Compression {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Compression::split_file_name(&name).map_or(Compression::None, |(_, c)| c)
}

/// Signs the file at `path` in place (decompressed, signed, compressed again as it was),
/// through a temporary file and a rename that keep its mode.
pub fn sign_file(path: &Path, signer: &Signer, hash: &str) -> Result<(), SignError> {
    let (module, compression) = read_module(path)?;
    let signed = sign(&module, signer, hash, path)?;
    let err = |source| SignError::Module { path: path.to_path_buf(), source };
    let packed = compression.compress(&signed).map_err(err)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).map_err(err)?.permissions());
    keys::write_atomic(path, &packed, mode & 0o7777)
}

/// Whether [`signer`] would make the pair: ckms's own, and neither file exists.
pub fn needs_generating(paths: &KeyPaths) -> bool {
    paths.origin == Origin::Own && !paths.key.exists() && !paths.cert.exists()
}

/// The key pair for signing: loaded, or (only ckms's own, and only when neither file exists)
/// generated first, which `report` says along with the enrolment step that must follow.
pub fn signer(paths: &KeyPaths, pin: Option<&str>, report: &dyn Reporter) -> Result<Signer, SignError> {
    if needs_generating(paths) {
        let made = keys::generate(paths, false)?;
        // dkms's line (both releases), then ckms's account of it.
        report.info("Certificate or key are missing, generating self signed certificate for MOK...");
        report.detail(format!(
            "Created the module signing key {} and certificate {} (SHA-256 {}). Modules signed with it load \
             with Secure Boot once it is enrolled: run `ckms mok enroll`",
            paths.key.display(),
            paths.cert.display(),
            made.fingerprint()
        ));
        return Ok(made);
    }
    Signer::load(paths, pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_comes_from_the_kernel_config() {
        let cfg = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_SHA256=y\nCONFIG_MODULE_SIG_HASH=\"sha256\"\n";
        assert_eq!(kernel_hash(cfg), Some("sha256".into()));
        assert_eq!(kernel_hash("CONFIG_MODULE_SIG_HASH=\"sha512\"\r\n"), Some("sha512".into()));
        assert_eq!(kernel_hash("# CONFIG_MODULE_SIG is not set\n"), None);
        assert_eq!(kernel_hash("CONFIG_MODULE_SIG_HASH=\"\"\n"), None);
        assert!(digest("sha512").is_ok());
        assert!(matches!(digest("md17"), Err(SignError::UnknownHash { .. })));
    }

    fn pair(dir: &Path) -> Signer {
        let loc =
            Locations { conf_dir: dir.join("etc"), dkms_dir: dir.join("dkms"), own_dir: dir.join("own"), kernel: None };
        keys::generate(&loc.resolve(None, None), false).unwrap()
    }

    #[test]
    fn signed_modules_verify_and_name_their_signer() {
        let dir = tempfile::tempdir().unwrap();
        let s = pair(dir.path());
        let module = b"\x7fELF pretend module".to_vec();
        let p = Path::new("m.ko");
        for hash in ["sha256", "sha512"] {
            let signed = sign(&module, &s, hash, p).unwrap();
            let v = verify(&signed, &s.cert, p, &s.paths.cert).unwrap();
            assert_eq!(v.signer.hash, hash);
            assert_eq!(v.signer.signer, keys::COMMON_NAME);
            assert!(!v.signer.serial.is_empty() && v.signer.key_id.is_none());
            assert_eq!(v.cert_sha256, s.fingerprint());
            // Signing again replaces the signature.
            assert_eq!(sign(&signed, &s, hash, p).unwrap(), signed);
        }
    }

    #[test]
    fn tampered_unsigned_and_foreign_signatures_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = pair(dir.path());
        let other = pair(&dir.path().join("other"));
        let p = Path::new("m.ko");
        let signed = sign(b"\x7fELF module", &s, "sha256", p).unwrap();
        let mut tampered = signed.clone();
        tampered[1] = b'X';
        assert!(matches!(verify(&tampered, &s.cert, p, p), Err(SignError::Invalid { .. })));
        assert!(matches!(verify(&signed, &other.cert, p, p), Err(SignError::Invalid { .. })));
        assert!(matches!(verify(b"\x7fELF", &s.cert, p, p), Err(SignError::NotSigned { .. })));
        let garbage = format::append(b"\x7fELF", b"not der");
        assert!(matches!(verify(&garbage, &s.cert, p, p), Err(SignError::Malformed { .. })));
    }

    #[test]
    fn compressed_files_are_signed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = pair(dir.path());
        let file = dir.path().join("m.ko.xz");
        std::fs::write(&file, Compression::Xz.compress(b"\x7fELF module").unwrap()).unwrap();
        sign_file(&file, &s, "sha256").unwrap();
        let (signed, c) = read_module(&file).unwrap();
        assert_eq!(c, Compression::Xz);
        assert!(verify(&signed, &s.cert, &file, &s.paths.cert).is_ok());
    }
}
