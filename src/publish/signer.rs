//! The module certificate a publication vouches for: the one the farm signs with now, found as
//! `farm build` finds it. A module signed by another certificate (before a key change) is never
//! published: `farm build` with the new key re-signs it first.

use std::path::{Path, PathBuf};

use super::pairs::BuiltPair;
use super::PublishError;
use crate::context::Context;
use crate::sign::{self, SignError};
use crate::tree::Roots;

/// The farm's module certificate, as published beside the modules.
#[derive(Debug, Clone)]
pub struct ModuleCert {
    pub path: PathBuf,
    pub der: Vec<u8>,
    /// SHA-256 of `der`, as pairs record their signer.
    pub fingerprint: String,
}

impl ModuleCert {
    /// `given`, else the certificate `farm build` signs with on this host (as `build` would);
    /// `None` when signing is off, or nothing was given and no certificate exists yet (then
    /// only unsigned pairs can be published).
    pub fn configured(ctx: &Context, given: Option<&Path>) -> Result<Option<ModuleCert>, PublishError> {
        if !ctx.config.sign_enabled() && given.is_none() {
            return Ok(None);
        }
        let path = ctx.config.key_locations(&Roots::system().dkms_tree).resolve(None, given).cert;
        match ModuleCert::load(&path) {
            Ok(cert) => Ok(Some(cert)),
            Err(SignError::CertMissing { .. }) if given.is_none() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The certificate at `path` (DER or PEM).
    pub fn load(path: &Path) -> Result<ModuleCert, SignError> {
        let cert = sign::keys::load_cert(path)?;
        let der = cert.to_der().map_err(|e| SignError::BadCert { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok(ModuleCert { fingerprint: sign::keys::fingerprint(&cert), path: path.to_path_buf(), der })
    }
}

/// Refuses to publish a pair signed by another certificate than `cert`.
pub fn check(pairs: &[BuiltPair], cert: Option<&ModuleCert>) -> Result<(), PublishError> {
    for p in pairs {
        let Some(signer) = &p.signer else { continue };
        if cert.is_none_or(|c| c.fingerprint != signer.fingerprint) {
            return Err(PublishError::OtherSigner {
                module: format!("{}/{}", p.module, p.version),
                kernel: p.kernel.clone(),
                signer: signer.fingerprint.clone(),
                configured: cert.map(|c| format!("{} ({})", c.fingerprint, c.path.display())),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::publish::pairs::tests::pair;

    /// A stand-in certificate: its fingerprint is the SHA-256 of its bytes, as for a real one.
    pub(crate) fn cert() -> ModuleCert {
        let der = b"a module certificate".to_vec();
        ModuleCert { path: "mok.der".into(), fingerprint: crate::cache::sha256_hex(&der), der }
    }

    #[test]
    fn only_pairs_signed_by_the_configured_certificate_publish() {
        let dir = tempfile::tempdir().unwrap();
        let mut pairs = vec![pair(dir.path(), "hello", "k", "hello.ko", b"m")];
        check(&pairs, Some(&cert())).unwrap();
        let err = check(&pairs, None).unwrap_err();
        assert!(matches!(err, PublishError::OtherSigner { configured: None, .. }), "{err}");
        pairs[0].signer.as_mut().unwrap().fingerprint = "cd".repeat(32);
        let err = check(&pairs, Some(&cert())).unwrap_err();
        assert!(err.to_string().contains(&"cd".repeat(32)) && err.to_string().contains("mok.der"), "{err}");
        pairs[0].signer = None;
        check(&pairs, None).unwrap();
    }
}
