//! The farm's OpenPGP key: signs what hosts trust (an apt repository's Release) with rPGP,
//! the crate that already verifies Debian's own InRelease files here.
//!
//! Signatures are made reproducible: their creation time is the published tree's time (the
//! store's build time, or the key's creation when that is later, since verifiers refuse a
//! signature older than its key), and the key types in use (EdDSA, RSA PKCS#1 v1.5) sign
//! deterministically. The same store and key give the same InRelease bytes.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedSecretKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::types::{KeyDetails, KeyVersion, Password, Timestamp};

use super::PublishError;

/// What signs a published repository (apt's Release, the binary cache's index) with OpenPGP:
/// the seam between the formats and the OpenPGP library.
pub trait RepoSigner {
    /// `text` as an OpenPGP cleartext-signed message (InRelease).
    fn clearsign(&self, text: &str, at: u64) -> Result<String, PublishError>;
    /// An armored detached signature of `data` (Release.gpg).
    fn detached(&self, data: &[u8], at: u64) -> Result<String, PublishError>;
    /// The public key, binary (what apt's `signed-by` takes).
    fn public_key(&self) -> Result<Vec<u8>, PublishError>;
    /// The public key, armored.
    fn public_key_armored(&self) -> Result<String, PublishError>;
    /// The key's first user ID ("Name <mail>").
    fn user_id(&self) -> Option<String>;
    /// The primary key's fingerprint, hex.
    fn fingerprint(&self) -> String;
}

/// An OpenPGP secret key read from a file (armored, or binary as `gpg --export-secret-keys`
/// writes without --armor). It must have no passphrase: publishing runs unattended.
pub struct Key {
    key: SignedSecretKey,
    path: PathBuf,
}

impl Key {
    pub fn load(path: &Path) -> Result<Key, PublishError> {
        let bad = |message: String| PublishError::Key { path: path.to_path_buf(), message };
        // Io's hint is about the output directory: a key that cannot be read is the key's error.
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let key = match SignedSecretKey::from_armor_single(Cursor::new(&bytes)) {
            Ok((key, _)) => key,
            Err(armored) => SignedSecretKey::from_bytes(Cursor::new(&bytes))
                .map_err(|_| bad(format!("not an OpenPGP secret key ({armored})")))?,
        };
        if key.primary_key.version() != KeyVersion::V4 {
            return Err(bad(format!(
                "a {:?} key; ckms signs with v4 keys (as gpg makes them)",
                key.primary_key.version()
            )));
        }
        let key = Key { key, path: path.to_path_buf() };
        // Fail now, not halfway through writing: a locked key cannot sign.
        key.detached(b"", 0).map_err(|e| bad(format!("it cannot sign (a passphrase?): {e}")))?;
        Ok(key)
    }

    /// The path it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn config(&self, typ: SignatureType, at: u64) -> Result<SignatureConfig, pgp::errors::Error> {
        let primary = &self.key.primary_key;
        let created = u32::try_from(at).unwrap_or(u32::MAX).max(primary.created_at().as_secs());
        let mut config = SignatureConfig::v4(typ, primary.algorithm(), HashAlgorithm::Sha256);
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::from_secs(created)))?,
            Subpacket::regular(SubpacketData::IssuerFingerprint(primary.fingerprint()))?,
        ];
        config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerKeyId(primary.legacy_key_id()))?];
        Ok(config)
    }

    fn sign_err(&self) -> impl Fn(pgp::errors::Error) -> PublishError + '_ {
        |e| PublishError::Sign { fingerprint: self.fingerprint(), message: e.to_string() }
    }
}

impl RepoSigner for Key {
    fn clearsign(&self, text: &str, at: u64) -> Result<String, PublishError> {
        let config = self.config(SignatureType::Text, at).map_err(self.sign_err())?;
        CleartextSignedMessage::new(text, config, &self.key.primary_key, &Password::empty())
            .and_then(|m| m.to_armored_string(Default::default()))
            .map_err(self.sign_err())
    }

    fn detached(&self, data: &[u8], at: u64) -> Result<String, PublishError> {
        let config = self.config(SignatureType::Binary, at).map_err(self.sign_err())?;
        let signature = config.sign(&self.key.primary_key, &Password::empty(), data).map_err(self.sign_err())?;
        DetachedSignature::new(signature).to_armored_string(Default::default()).map_err(self.sign_err())
    }

    fn public_key(&self) -> Result<Vec<u8>, PublishError> {
        use pgp::ser::Serialize;
        self.key.to_public_key().to_bytes().map_err(self.sign_err())
    }

    fn public_key_armored(&self) -> Result<String, PublishError> {
        self.key.to_public_key().to_armored_string(Default::default()).map_err(self.sign_err())
    }

    fn user_id(&self) -> Option<String> {
        self.key.details.users.first().map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
    }

    fn fingerprint(&self) -> String {
        hex::encode_upper(self.key.primary_key.fingerprint().as_bytes())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::repo::release::{parse_keys, tests::gen_key, verify_inrelease, Keyring};

    /// A fresh key, written armored to `dir/farm.asc`.
    pub(crate) fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("farm.asc");
        let armored = gen_key("ckms farm <farm@example.invalid>").to_armored_string(Default::default()).unwrap();
        std::fs::write(&path, armored).unwrap();
        path
    }

    #[test]
    fn signatures_verify_and_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load(&key_file(dir.path())).unwrap();
        assert_eq!(key.user_id().as_deref(), Some("ckms farm <farm@example.invalid>"));
        let text = "Suite: bookworm\nSHA256:\n abc 1 main/binary-amd64/Packages\n";
        let signed = key.clearsign(text, 1_764_892_800).unwrap();
        let public = parse_keys(&key.public_key().unwrap(), Path::new("k.gpg")).unwrap();
        let got = verify_inrelease(&signed, &Keyring::from_keys(public), "InRelease").unwrap();
        assert_eq!(got, text);
        assert_eq!(signed, key.clearsign(text, 1_764_892_800).unwrap(), "the same time gives the same bytes");
        let detached = key.detached(text.as_bytes(), 0).unwrap();
        assert!(detached.starts_with("-----BEGIN PGP SIGNATURE-----"));
        assert!(key.public_key_armored().unwrap().starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    }

    #[test]
    fn a_public_key_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("pub.asc");
        let armored = gen_key("x <x@example.invalid>").to_public_key().to_armored_string(Default::default()).unwrap();
        std::fs::write(&public, armored).unwrap();
        let err = Key::load(&public).err().unwrap();
        assert!(err.to_string().contains("pub.asc"), "{err}");
        std::fs::write(&public, "garbage").unwrap();
        assert!(matches!(Key::load(&public), Err(PublishError::Key { .. })));
        // A missing key is the key's error (exit 50, a hint about --key), not the output's.
        let err = Key::load(&dir.path().join("missing.asc")).err().unwrap();
        assert!(matches!(err, PublishError::Key { .. }), "{err}");
        assert_eq!(err.exit_code(), code::SIGNING_FAILED);
        assert!(err.hint().unwrap().contains("--key"), "{err}");
    }
}
