//! InRelease: the OpenPGP cleartext-signed Release file of a suite. It is verified against
//! the trusted keyrings, then its Date, Valid-Until and SHA256 fields are read from the
//! signed text only (never from anything outside the signature).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

use super::validity;
use super::RepoError;

/// The trusted public keys (primary keys and their subkeys).
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Loads every key of every file; binary keyrings (concatenated keys, as in
    /// `/usr/share/keyrings/*.gpg`) and ASCII-armored ones are both accepted.
    pub fn load(paths: &[PathBuf]) -> Result<Keyring, RepoError> {
        let mut keys = Vec::new();
        for path in paths {
            let bytes = std::fs::read(path).map_err(|source| RepoError::Io { path: path.clone(), source })?;
            keys.extend(parse_keys(&bytes, path)?);
        }
        Ok(Keyring { keys })
    }

    pub fn from_keys(keys: Vec<SignedPublicKey>) -> Keyring {
        Keyring { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses a keyring file's content; keys rPGP cannot read (old v3 keys, unknown algorithms)
/// are skipped as long as at least one key is usable.
pub fn parse_keys(bytes: &[u8], path: &Path) -> Result<Vec<SignedPublicKey>, RepoError> {
    let bad = |detail: String| RepoError::Keyring { path: path.to_path_buf(), detail };
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let text = std::str::from_utf8(bytes).ok().filter(|t| t.trim_start().starts_with("-----BEGIN"));
    if let Some(text) = text {
        // One armor block per key is common in .asc files; rPGP reads one block at a time.
        const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
        for (i, _) in text.match_indices(BEGIN) {
            match SignedPublicKey::from_armor_many(Cursor::new(&text.as_bytes()[i..])) {
                Ok((it, _)) => {
                    for k in it {
                        match k {
                            Ok(k) => keys.push(k),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
    } else {
        let it = SignedPublicKey::from_bytes_many(Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
        for k in it {
            match k {
                Ok(k) => keys.push(k),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if keys.is_empty() {
        let why = errors.first().cloned().unwrap_or_else(|| "no public keys found".into());
        return Err(bad(format!("no usable OpenPGP public key: {why}")));
    }
    Ok(keys)
}

/// Verifies an InRelease file and returns its signed text (with `\n` line ends). Accepted when
/// any of its signatures verifies with any trusted key or subkey.
pub fn verify_inrelease(inrelease: &str, keyring: &Keyring, url: &str) -> Result<String, RepoError> {
    let bad = |detail: String| RepoError::BadSignature { url: url.to_string(), detail };
    let (msg, _) = CleartextSignedMessage::from_string(inrelease)
        .map_err(|e| bad(format!("not an OpenPGP cleartext-signed message: {e}")))?;
    if keyring.keys.is_empty() {
        return Err(bad("no trusted keys configured".into()));
    }
    let signed = msg.signed_text();
    check_signatures(msg.signatures(), signed.as_bytes(), keyring, url)?;
    Ok(signed.replace("\r\n", "\n"))
}

/// Verifies an armored detached signature of `data` (a binary cache's index.json.asc).
pub fn verify_detached(data: &[u8], signature: &str, keyring: &Keyring, url: &str) -> Result<(), RepoError> {
    let bad = |detail: String| RepoError::BadSignature { url: url.to_string(), detail };
    let (sig, _) = pgp::composed::DetachedSignature::from_armor_single(Cursor::new(signature.as_bytes()))
        .map_err(|e| bad(format!("not an armored OpenPGP signature: {e}")))?;
    if keyring.keys.is_empty() {
        return Err(bad("no trusted keys configured".into()));
    }
    check_signatures(std::slice::from_ref(&sig.signature), data, keyring, url)
}

/// Accepts `data` when any of `signatures` verifies with a trusted key or subkey that may vouch
/// for it now (not revoked, not expired, allowed to sign: [`validity`]); else says which key
/// signed but may not, or whether a trusted key signed something else (tampered), or no
/// trusted key signed at all.
fn check_signatures(
    signatures: &[pgp::packet::Signature],
    data: &[u8],
    keyring: &Keyring,
    url: &str,
) -> Result<(), RepoError> {
    let bad = |detail: String| RepoError::BadSignature { url: url.to_string(), detail };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut unusable = None;
    for sig in signatures {
        for key in &keyring.keys {
            // Signature::verify checks the issuer id first, so trying each key is cheap.
            let by_primary = sig
                .verify(&key.primary_key, data)
                .is_ok()
                .then(|| (format!("{:X}", key.primary_key.fingerprint()), validity::primary(key, now)));
            let by_subkey = || {
                let sk = key.public_subkeys.iter().find(|sk| sig.verify(&sk.key, data).is_ok())?;
                Some((format!("{:X}", sk.key.fingerprint()), validity::subkey(key, sk, now)))
            };
            match by_primary.or_else(by_subkey) {
                Some((_, Ok(()))) => return Ok(()),
                Some((fingerprint, Err(why))) => unusable = Some((fingerprint, why)),
                None => {}
            }
        }
    }
    if let Some((fingerprint, why)) = unusable {
        return Err(bad(format!("signed by the trusted key {fingerprint}, but {why}")));
    }
    let issuers: Vec<String> = signatures
        .iter()
        .flat_map(|s| {
            let fps = s.issuer_fingerprint().into_iter().map(|f| format!("{f:X}"));
            let ids = s.issuer_key_id().into_iter().map(|k| hex::encode_upper(k.as_ref()));
            fps.chain(ids).take(1)
        })
        .collect();
    // A signature by a key we trust that does not verify means the text changed after signing:
    // say so, rather than blaming the keyring.
    let trusted: Vec<String> = keyring
        .keys
        .iter()
        .flat_map(|k| {
            std::iter::once(format!("{:X}", k.primary_key.fingerprint()))
                .chain(k.public_subkeys.iter().map(|sk| format!("{:X}", sk.key.fingerprint())))
        })
        .collect();
    if let Some(signer) = issuers.iter().find(|i| trusted.iter().any(|t| t.ends_with(i.as_str()))) {
        return Err(RepoError::Tampered { url: url.to_string(), signer: signer.clone() });
    }
    Err(bad(format!(
        "no signature verifies with the {} trusted key(s) (signed by {})",
        keyring.keys.len(),
        if issuers.is_empty() { "unknown keys".to_string() } else { issuers.join(", ") }
    )))
}

/// The fields of a Release file that ckms uses.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub date: String,
    pub valid_until: Option<String>,
    pub acquire_by_hash: bool,
    /// path (relative to `dists/<suite>/`) -> (sha256, size)
    pub sha256: HashMap<String, (String, u64)>,
}

pub fn parse_release(text: &str, url: &str) -> Result<Release, RepoError> {
    let mut rel = Release::default();
    let mut in_sha = false;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if in_sha {
                let mut f = line.split_whitespace();
                if let (Some(sha), Some(size), Some(path)) = (f.next(), f.next(), f.next()) {
                    let size = size.parse().map_err(|_| RepoError::Malformed {
                        url: url.to_string(),
                        detail: format!("bad size in SHA256 line {line:?}"),
                    })?;
                    rel.sha256.insert(path.to_string(), (sha.to_ascii_lowercase(), size));
                }
            }
            continue;
        }
        in_sha = false;
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Date" => rel.date = v.to_string(),
            "Valid-Until" => rel.valid_until = Some(v.to_string()),
            "Acquire-By-Hash" => rel.acquire_by_hash = v.eq_ignore_ascii_case("yes"),
            "SHA256" => in_sha = true,
            _ => {}
        }
    }
    if rel.sha256.is_empty() {
        return Err(RepoError::Malformed { url: url.to_string(), detail: "no SHA256 section".into() });
    }
    Ok(rel)
}

/// Fails when the Release's Valid-Until lies before `now`.
pub fn check_valid_until(rel: &Release, now: SystemTime, url: &str, suite: &str) -> Result<(), RepoError> {
    let Some(vu) = &rel.valid_until else {
        return Ok(());
    };
    let until = parse_date(vu).ok_or_else(|| RepoError::Malformed {
        url: url.to_string(),
        detail: format!("unreadable Valid-Until {vu:?}"),
    })?;
    if now > until {
        return Err(RepoError::Expired { url: url.to_string(), suite: suite.to_string(), valid_until: vu.clone() });
    }
    Ok(())
}

/// Parses the RFC 2822-style dates of Release files: `Sat, 11 Jul 2026 10:16:37 UTC`
/// (zone `UTC`, `GMT`, `Z` or `+hhmm`/`-hhmm`; weekday optional).
pub fn parse_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut f = s.split_whitespace();
    let day: i64 = f.next()?.parse().ok()?;
    let month = match &f.next()?.to_ascii_lowercase()[..] {
        "jan" => 1,
        "feb" => 2,
        "mar" => 3,
        "apr" => 4,
        "may" => 5,
        "jun" => 6,
        "jul" => 7,
        "aug" => 8,
        "sep" => 9,
        "oct" => 10,
        "nov" => 11,
        "dec" => 12,
        _ => return None,
    };
    let year: i64 = f.next()?.parse().ok()?;
    let mut hms = f.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next().unwrap_or(Some(0))?);
    let offset = match f.next() {
        None | Some("UTC" | "GMT" | "Z" | "UT") => 0,
        Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let n: i64 = z[1..].parse().ok()?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if z.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        Some(_) => return None,
    };
    if !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&sec) {
        return None;
    }
    let t = days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec - offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use pgp::composed::{KeyType, SecretKeyParamsBuilder, SignedSecretKey};
    use pgp::types::Password;

    pub(crate) fn gen_key(uid: &str) -> SignedSecretKey {
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(uid.into())
            .build()
            .unwrap();
        params.generate(rand::thread_rng()).unwrap()
    }

    pub(crate) fn sign(text: &str, key: &SignedSecretKey) -> String {
        CleartextSignedMessage::sign(rand::thread_rng(), text, &key.primary_key, &Password::empty())
            .unwrap()
            .to_armored_string(Default::default())
            .unwrap()
    }

    pub(crate) const RELEASE: &str = "Origin: Debian
Suite: oldstable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
Valid-Until: Sat, 18 Jul 2026 10:16:37 UTC
Acquire-By-Hash: yes
MD5Sum:
 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 main/binary-amd64/Packages
SHA256:
 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages
 9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5  8790396 main/binary-amd64/Packages.xz
";

    #[test]
    fn good_bad_and_unknown_signatures() {
        let key = gen_key("Test Archive <archive@example.invalid>");
        let other = gen_key("Stranger <s@example.invalid>");
        let signed = sign(RELEASE, &key);
        let trusted = Keyring::from_keys(vec![other.to_public_key(), key.to_public_key()]);

        let text = verify_inrelease(&signed, &trusted, "http://m.invalid/InRelease").unwrap();
        assert_eq!(text.trim_end(), RELEASE.trim_end());

        // Tampered content: the signature no longer matches.
        let tampered = signed.replace("Suite: oldstable", "Suite: stable");
        let err = verify_inrelease(&tampered, &trusted, "http://m.invalid/InRelease").unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
        assert!(err.to_string().contains("http://m.invalid/InRelease"));
        assert!(matches!(err, RepoError::Tampered { .. }), "a trusted signer, changed text: {err}");
        assert!(err.hint().unwrap().contains("altered"));

        // Signed by a key nobody trusts.
        let only_other = Keyring::from_keys(vec![other.to_public_key()]);
        let err = verify_inrelease(&signed, &only_other, "u").unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
        assert!(err.hint().unwrap().contains("keyring"));

        // Not signed at all.
        assert!(verify_inrelease(RELEASE, &trusted, "u").is_err());
    }

    #[test]
    fn keyring_files_binary_and_armored() {
        use pgp::ser::Serialize;
        let a = gen_key("A <a@example.invalid>").to_public_key();
        let b = gen_key("B <b@example.invalid>").to_public_key();
        let mut bin = a.to_bytes().unwrap();
        bin.extend(b.to_bytes().unwrap());
        assert_eq!(parse_keys(&bin, Path::new("k.gpg")).unwrap().len(), 2);
        let armored =
            a.to_armored_string(Default::default()).unwrap() + &b.to_armored_string(Default::default()).unwrap();
        assert_eq!(parse_keys(armored.as_bytes(), Path::new("k.asc")).unwrap().len(), 2);
        let err = parse_keys(b"garbage", Path::new("k.gpg")).unwrap_err();
        assert!(err.to_string().contains("k.gpg"));
    }

    #[test]
    fn host_debian_keyring_parses() {
        let path = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        if path.exists() {
            let k = Keyring::load(&[path.to_path_buf()]).unwrap();
            assert!(k.len() >= 3, "{}", k.len());
        }
    }

    #[test]
    fn release_fields_and_valid_until() {
        let r = parse_release(RELEASE, "u").unwrap();
        assert_eq!(r.date, "Sat, 11 Jul 2026 10:16:37 UTC");
        assert!(r.acquire_by_hash);
        assert_eq!(r.sha256.len(), 2);
        assert_eq!(
            r.sha256["main/binary-amd64/Packages"],
            ("515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f".to_string(), 50060337)
        );
        let date = parse_date(&r.date).unwrap();
        assert_eq!(date.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1783764997);
        assert!(check_valid_until(&r, date, "u", "bookworm").is_ok());
        let late = date + Duration::from_secs(8 * 86400);
        let err = check_valid_until(&r, late, "http://m.invalid/dists/bookworm/InRelease", "bookworm").unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
        assert!(err.to_string().contains("bookworm"));
        assert!(err.hint().unwrap().contains("Check-Valid-Until"));
        assert!(parse_release("Date: x\n", "u").is_err());
    }

    #[test]
    fn dates() {
        let secs = |s: &str| parse_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(secs("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(secs("Sat, 10 Jun 2023 08:55:29 UTC"), Some(1686387329));
        assert_eq!(secs("29 Feb 2024 12:00:00 +0100"), Some(1709204400));
        assert_eq!(secs("Sat, 10 Foo 2023 08:55:29 UTC"), None);
    }
}
