//! `--format cache`: a binary cache for other ckms hosts, a static tree any HTTP server (or a
//! directory) serves:
//!
//! ```text
//! <out>/index.json                    every pair by its key (module, version, kernel, arch,
//!                                     files with SHA-256 and size, the module signer)
//! <out>/index.json.asc                a detached OpenPGP signature of index.json (the farm's key)
//! <out>/farm.pub.asc                  the farm's public key, for hosts to copy into their config
//! <out>/pairs/<key>/<module file>     as the store holds it (signed, compressed)
//! <out>/certs/<sha256>.der            the module certificate the pairs are signed with, named in
//!                                     index.json (so covered by its signature), for hosts to
//!                                     verify the modules with and to enroll
//! ```
//!
//! A host ([`crate::prebuilt`]) computes the key of the pair it wants from its own source and
//! the kernel's signed index, the same way the farm does, so an entry matches only the exact
//! inputs it was built from. Files live under their pair's key: a path never names two
//! contents, and a cache can be mirrored with any tool that copies files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::openpgp::RepoSigner;
use super::pairs::BuiltPair;
use super::signer::ModuleCert;
use super::{write_file, PublishError};
use crate::cache::sha256_hex;
use crate::farm::ready::KernelReadiness;
use crate::farm::store::SignedBy;

pub const INDEX: &str = "index.json";
pub const SIGNATURE: &str = "index.json.asc";
pub const PUBLIC_KEY: &str = "farm.pub.asc";
/// Bumped when the index's meaning changes; a host refuses a format it does not know.
pub const FORMAT: u32 = 1;

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    /// The newest build time of its entries (seconds since 1970).
    pub built_at: u64,
    /// The fingerprint of the OpenPGP key that signed it.
    pub signed_by: String,
    /// By pair key ([`crate::farm::key`]).
    pub entries: BTreeMap<String, Entry>,
    /// The SHA-256 of the module certificate the entries are signed with, published as
    /// [`cert_path`]; none when no entry is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Per kernel: whether every module of the farm's matrix is built, signed and proven to
    /// load for it, or which are not and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelReadiness>,
}

/// Where a cache holds the module certificate of SHA-256 `fingerprint`.
pub fn cert_path(fingerprint: &str) -> String {
    format!("certs/{fingerprint}.der")
}

/// One built pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    pub profile: String,
    pub built_at: u64,
    /// The certificate that signed the modules (none: unsigned, the kernel does not sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<SignedBy>,
    /// Whether the modules loaded in a VM running the kernel (none: not proven).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded: Option<bool>,
    pub files: Vec<File>,
}

/// One module file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// The module's name as the kernel knows it.
    pub name: String,
    /// Where it installs under /lib/modules/<kver> (e.g. `/updates/dkms`).
    pub dest: String,
    /// Relative to the cache's root: `pairs/<key>/<file name>`.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// Writes the cache of `pairs` into `out`, its index signed with `signer`, with `cert` (which
/// signed every signed pair: [`super::signer::check`]).
pub fn write(
    out: &Path,
    pairs: &[BuiltPair],
    kernels: &[KernelReadiness],
    signer: &dyn RepoSigner,
    cert: Option<&ModuleCert>,
) -> Result<Vec<String>, PublishError> {
    let mut entries = BTreeMap::new();
    for p in pairs {
        let mut files = Vec::new();
        for f in &p.files {
            let bytes = std::fs::read(&f.path).map_err(PublishError::io(&f.path))?;
            let path = format!("pairs/{}/{}", p.key, f.file_name);
            write_file(out, &path, &bytes)?;
            files.push(File {
                name: f.name.clone(),
                dest: f.dest.clone(),
                path,
                sha256: sha256_hex(&bytes),
                size: bytes.len() as u64,
            });
        }
        let entry = Entry {
            module: p.module.clone(),
            version: p.version.clone(),
            kernel: p.kernel.clone(),
            arch: p.arch.clone(),
            profile: p.profile.clone(),
            built_at: p.epoch,
            signer: p.signer.clone(),
            loaded: p.loaded,
            files,
        };
        entries.insert(p.key.clone(), entry);
    }
    let built_at = pairs.iter().map(|p| p.epoch).max().unwrap_or(0);
    let cert = cert.filter(|_| pairs.iter().any(|p| p.signer.is_some()));
    if let Some(c) = cert {
        write_file(out, &cert_path(&c.fingerprint), &c.der)?;
    }
    let certificate = cert.map(|c| c.fingerprint.clone());
    let (signed_by, kernels) = (signer.fingerprint(), kernels.to_vec());
    let index = Index { format: FORMAT, built_at, signed_by, entries, certificate, kernels };
    let text = serde_json::to_string_pretty(&index).map_err(|e| PublishError::Sign {
        fingerprint: signer.fingerprint(),
        message: format!("the index cannot be written: {e}"),
    })? + "\n";
    write_file(out, INDEX, text.as_bytes())?;
    write_file(out, SIGNATURE, signer.detached(text.as_bytes(), built_at)?.as_bytes())?;
    write_file(out, PUBLIC_KEY, signer.public_key_armored()?.as_bytes())?;
    Ok(vec![
        format!("{} pair(s); on a host, in /etc/ckms/config.toml:", index.entries.len()),
        // `out` is the staging directory here: the notes name no path.
        "[prebuilt]\nurls = [\"https://farm.example/cache/\"]   # where this directory is served".into(),
        format!("keys = [\"/etc/ckms/farm.pub.asc\"]          # a copy of {PUBLIC_KEY}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::openpgp::{tests::key_file, Key};
    use super::super::pairs::tests::pair;
    use super::*;
    use crate::repo::RepoError;

    #[test]
    fn the_index_names_every_file_by_digest_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load(&key_file(dir.path())).unwrap();
        let pairs = vec![
            pair(dir.path(), "hello", "6.1.0-56-amd64", "hello.ko.xz", b"signed hello"),
            pair(dir.path(), "other", "6.1.0-56-amd64", "other.ko", b"signed other"),
        ];
        let out = dir.path().join("cache");
        let cert = crate::publish::signer::tests::cert();
        write(&out, &pairs, &[], &key, Some(&cert)).unwrap();
        let text = std::fs::read(out.join(INDEX)).unwrap();
        let index: Index = serde_json::from_slice(&text).unwrap();
        assert_eq!(index.entries.len(), 2);
        let e = &index.entries["key-hello-6.1.0-56-amd64"];
        assert_eq!((e.module.as_str(), e.arch.as_str()), ("hello", "x86_64"));
        let f = &e.files[0];
        assert_eq!(f.path, "pairs/key-hello-6.1.0-56-amd64/hello.ko.xz");
        assert_eq!((f.name.as_str(), f.dest.as_str()), ("hello", "/updates/dkms"));
        let shipped = std::fs::read(out.join(&f.path)).unwrap();
        assert_eq!(shipped, b"signed hello");
        assert_eq!((f.sha256.clone(), f.size), (sha256_hex(&shipped), shipped.len() as u64));
        assert_eq!(e.signer.as_ref().unwrap().subject, "ckms farm");
        // The certificate, named in the signed index.
        assert_eq!(index.certificate.as_deref(), Some(cert.fingerprint.as_str()));
        assert_eq!(std::fs::read(out.join(cert_path(&cert.fingerprint))).unwrap(), cert.der);

        let signature = std::fs::read_to_string(out.join(SIGNATURE)).unwrap();
        let public = std::fs::read(out.join(PUBLIC_KEY)).unwrap();
        use crate::repo::release::{parse_keys, verify_detached, Keyring};
        let keyring = Keyring::from_keys(parse_keys(&public, &out.join(PUBLIC_KEY)).unwrap());
        verify_detached(&text, &signature, &keyring, "index.json").unwrap();
        let mut tampered = text.clone();
        tampered[10] ^= 1;
        let err = verify_detached(&tampered, &signature, &keyring, "index.json").unwrap_err();
        assert!(matches!(err, RepoError::Tampered { .. }), "{err}");

        // Twice: the same bytes.
        let again = dir.path().join("again");
        write(&again, &pairs, &[], &key, Some(&cert)).unwrap();
        for f in [INDEX, SIGNATURE, "pairs/key-other-6.1.0-56-amd64/other.ko"] {
            assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f} differs");
        }
    }
}
