//! Whether a trusted OpenPGP key may vouch for a signature now: not revoked, not expired, and
//! allowed to sign. rPGP verifies signatures but leaves this policy to its user (its
//! `as_unsigned` heuristics say so), so it is written here, as apt's verifier applies it:
//! a revocation or a binding is taken only when its own signature verifies; the newest
//! self-signature gives the expiry and the key flags.

use pgp::composed::{SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

/// Why a key may not vouch for a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    Revoked,
    /// Expired at this time (seconds since 1970).
    Expired(u64),
    /// Its flags do not allow data signatures.
    NotForSigning,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Revoked => write!(f, "it is revoked"),
            Unusable::Expired(at) => {
                let when = time::OffsetDateTime::from_unix_timestamp(*at as i64).ok();
                let when = when.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
                write!(f, "it expired on {}", when.unwrap_or_else(|| format!("{at} (seconds since 1970)")))
            }
            Unusable::NotForSigning => write!(f, "its flags do not allow signing"),
        }
    }
}

/// The newest of `sigs` (by creation time) that `valid` accepts.
fn newest<'s>(sigs: impl Iterator<Item = &'s Signature>, valid: impl Fn(&Signature) -> bool) -> Option<&'s Signature> {
    sigs.filter(|s| valid(s)).max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))
}

fn expired(created: u32, binding: Option<&Signature>, now: u64) -> Option<Unusable> {
    let lifetime = binding?.key_expiration_time().map(|d| d.as_secs()).filter(|s| *s != 0)?;
    let end = u64::from(created) + u64::from(lifetime);
    (end <= now).then_some(Unusable::Expired(end))
}

/// Whether the primary key of `key` may sign now (`now`: seconds since 1970).
pub fn primary(key: &SignedPublicKey, now: u64) -> Result<(), Unusable> {
    let pk = &key.primary_key;
    if key.details.revocation_signatures.iter().any(|s| s.verify_key(pk).is_ok()) {
        return Err(Unusable::Revoked);
    }
    let own = key.details.users.iter().flat_map(|u| u.signatures.iter()).chain(key.details.direct_signatures.iter());
    let binding = newest(own, |s| s.is_certification() || s.typ() == Some(SignatureType::Key));
    if let Some(e) = expired(pk.created_at().as_secs(), binding, now) {
        return Err(e);
    }
    Ok(())
}

/// Whether `sub` (a subkey of `key`) may sign now: its primary usable, its newest binding not a
/// revocation, not expired, and flagged for signing.
pub fn subkey(key: &SignedPublicKey, sub: &SignedPublicSubKey, now: u64) -> Result<(), Unusable> {
    primary(key, now)?;
    let verified = |s: &Signature| s.verify_subkey_binding(&key.primary_key, &sub.key).is_ok();
    if sub.signatures.iter().any(|s| s.typ() == Some(SignatureType::SubkeyRevocation) && verified(s)) {
        return Err(Unusable::Revoked);
    }
    let binding = newest(sub.signatures.iter(), |s| s.typ() == Some(SignatureType::SubkeyBinding) && verified(s));
    if let Some(e) = expired(sub.key.created_at().as_secs(), binding, now) {
        return Err(e);
    }
    if binding.is_some_and(|b| !b.key_flags().sign()) {
        return Err(Unusable::NotForSigning);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::repo::release::{parse_keys, verify_detached, Keyring};
    use crate::repo::RepoError;
    use std::path::{Path, PathBuf};

    /// Made with gpg (tests/fixtures/openpgp): a key without expiry, one that expired on
    /// 2020-01-02 (signed while it was valid) and one revoked after signing.
    fn check(name: &str) -> Result<(), RepoError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openpgp");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let key = format!("{name}.asc");
        let keyring = Keyring::from_keys(parse_keys(&read(&key), Path::new(&key)).unwrap());
        let signature = String::from_utf8(read(&format!("{name}.sig"))).unwrap();
        verify_detached(&read("data.txt"), &signature, &keyring, "file:///index.json")
    }

    #[test]
    fn only_a_key_neither_expired_nor_revoked_vouches() {
        check("valid").unwrap();
        for (name, why) in [("expired", "expired on 2020-01-02T00:00:00Z"), ("revoked", "revoked")] {
            let err = check(name).unwrap_err();
            assert!(matches!(err, RepoError::BadSignature { .. }), "{name}: {err}");
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
    }
}
