use std::collections::HashMap;
use std::path::Path;

use super::fetch::tests::Files;
use super::*;
use crate::publish::openpgp::{tests::key_file, Key};
use crate::publish::pairs::tests::pair;

const BASE: &str = "http://cache.invalid/ckms";
const KERNEL: &str = "6.1.0-56-amd64";

/// A cache published from two pairs, as served files, and the keyring of its signer.
fn published(dir: &Path) -> (HashMap<String, Vec<u8>>, Keyring) {
    let key = Key::load(&key_file(dir)).unwrap();
    let pairs = vec![
        pair(dir, "hello", KERNEL, "hello.ko.xz", b"signed hello"),
        pair(dir, "other", KERNEL, "other.ko", b"signed other"),
    ];
    let out = dir.join("cache");
    format::write(&out, &pairs, &[], &key, Some(&crate::publish::signer::tests::cert())).unwrap();
    let mut files = HashMap::new();
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
                files.insert(join(BASE, &rel), std::fs::read(&path).unwrap());
            }
        }
    }
    let keyring = super::keyring(&[out.join(format::PUBLIC_KEY)]).unwrap();
    (files, keyring)
}

async fn look(files: HashMap<String, Vec<u8>>, keyring: &Keyring, key: &str) -> Result<Option<Found>, PrebuiltError> {
    lookup(&Files(Some(files)), BASE, keyring, key).await
}

const HELLO: &str = "key-hello-6.1.0-56-amd64";

#[tokio::test]
async fn an_entry_is_found_by_key_with_its_files_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (files, keyring) = published(dir.path());
    let found = look(files.clone(), &keyring, HELLO).await.unwrap().unwrap();
    assert_eq!((found.entry.module.as_str(), found.entry.kernel.as_str()), ("hello", KERNEL));
    assert_eq!(found.files.len(), 1);
    assert_eq!(found.files[0].1, b"signed hello");
    assert_eq!(found.files[0].0.dest, "/updates/dkms");
    // Another key (another source, a patched one): no entry, not an error.
    assert!(look(files, &keyring, "0123").await.unwrap().is_none());
}

#[tokio::test]
async fn a_tampered_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, keyring) = published(dir.path());
    let index = files.get_mut(&join(BASE, format::INDEX)).unwrap();
    let text = String::from_utf8(index.clone()).unwrap().replace("/updates/dkms", "/kernel/fs/xx");
    *index = text.into_bytes();
    let err = look(files, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::TamperedIndex { .. }), "{err}");
    assert_eq!(err.exit_code(), code::BAD_SIGNATURE);
    assert!(err.hint().unwrap().contains("nothing was installed"));
}

#[tokio::test]
async fn an_index_signed_by_another_key_is_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = published(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, theirs) = published(other.path());
    let err = look(files.clone(), &theirs, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("not signed by a trusted key"), "{err}");
    // No signature at all is no better.
    let mut unsigned = files;
    unsigned.remove(&join(BASE, format::SIGNATURE));
    let err = look(unsigned, &theirs, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::Untrusted { .. }), "{err}");
}

#[tokio::test]
async fn a_tampered_or_missing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, keyring) = published(dir.path());
    let module = join(BASE, &format!("pairs/{HELLO}/hello.ko.xz"));
    let mut tampered = files.clone();
    tampered.insert(module.clone(), b"signed hellO".to_vec());
    let err = look(tampered, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::TamperedFile { .. }), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    let mut longer = files.clone();
    longer.insert(module.clone(), b"signed hello!".to_vec());
    assert!(look(longer, &keyring, HELLO).await.unwrap_err().to_string().contains("bytes"));
    let mut missing = files;
    missing.remove(&module);
    assert!(matches!(look(missing, &keyring, HELLO).await.unwrap_err(), PrebuiltError::MissingFile { .. }));
}

#[tokio::test]
async fn a_cache_that_does_not_answer_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keyring) = published(dir.path());
    let err = lookup(&Files(None), BASE, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("does not answer"), "{err}");
    let err = lookup(&Files(Some(HashMap::new())), BASE, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::NoIndex { .. }), "{err}");
}

#[test]
fn install_scripts_are_seen_and_keys_are_required() {
    assert_eq!(install_script("PACKAGE_NAME=x\nPOST_INSTALL=fix.sh\n"), Some("POST_INSTALL"));
    assert_eq!(install_script("PACKAGE_NAME=x\n# no POST_INSTALL here\n"), None);
    assert!(matches!(super::keyring(&[]), Err(PrebuiltError::NoKeys)));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("k.asc");
    std::fs::write(&bad, "garbage").unwrap();
    let err = super::keyring(&[bad]).err().unwrap();
    assert!(err.to_string().contains("k.asc"), "{err}");
}

#[tokio::test]
async fn oversized_answers_are_refused_while_read() {
    let dir = tempfile::tempdir().unwrap();
    let (files, keyring) = published(dir.path());
    let mut huge = files.clone();
    huge.insert(join(BASE, format::INDEX), vec![b' '; (INDEX_LIMIT + 1) as usize]);
    let err = look(huge, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::TooLarge { limit: INDEX_LIMIT, .. }), "{err}");
    assert_eq!(err.exit_code(), code::CHECKSUM_MISMATCH);
    let mut signature = files;
    signature.insert(join(BASE, format::SIGNATURE), vec![b'-'; (SIGNATURE_LIMIT + 1) as usize]);
    assert!(matches!(look(signature, &keyring, HELLO).await.unwrap_err(), PrebuiltError::TooLarge { .. }));
}

#[test]
fn plain_http_only_when_allowed() {
    let cfg = |urls: &[&str], allow_http| PrebuiltConfig {
        urls: urls.iter().map(|u| u.to_string()).collect(),
        keys: vec![],
        allow_http,
        ..Default::default()
    };
    let err = plain_http_allowed(&cfg(&["https://a/", "http://b/"], false)).unwrap_err();
    assert!(matches!(&err, PrebuiltError::PlainHttp { url } if url == "http://b/"), "{err}");
    assert_eq!(err.exit_code(), code::USAGE);
    assert!(plain_http_allowed(&cfg(&["http://b/"], true)).is_ok());
    assert!(plain_http_allowed(&cfg(&["https://a/", "/srv/cache", "file:///srv/c"], false)).is_ok());
}

#[tokio::test]
async fn the_module_certificate_comes_with_the_entry_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (files, keyring) = published(dir.path());
    let cert = crate::publish::signer::tests::cert();
    let found = look(files.clone(), &keyring, HELLO).await.unwrap().unwrap();
    assert_eq!(found.certificate.as_deref(), Some(cert.der.as_slice()));
    let mut swapped = files;
    swapped.insert(join(BASE, &format::cert_path(&cert.fingerprint)), b"another certificate".to_vec());
    let err = look(swapped, &keyring, HELLO).await.unwrap_err();
    assert!(matches!(err, PrebuiltError::TamperedFile { .. }), "{err}");
}

/// A module key pair made here: (certificate path, its SHA-256).
fn module_cert(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let paths = crate::sign::keys::KeyPaths {
        key: dir.join(format!("{name}.key")),
        cert: dir.join(format!("{name}.der")),
        origin: crate::sign::keys::Origin::Configured,
    };
    let signer = crate::sign::keys::generate(&paths, false).unwrap();
    (paths.cert, signer.fingerprint())
}

#[tokio::test]
async fn a_host_naming_its_module_certificates_takes_only_entries_they_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (files, keyring) = published(dir.path());
    let (a, a_fpr) = module_cert(dir.path(), "a");
    let (b, b_fpr) = module_cert(dir.path(), "b");
    let mut found = look(files, &keyring, HELLO).await.unwrap().unwrap();
    found.entry.signer.as_mut().unwrap().fingerprint = b_fpr;
    // Nothing named: the certificate the cache published, as before.
    let cache_cert = found.certificate.clone();
    assert_eq!(pinned(&[], found.clone()).unwrap().certificate, cache_cert);
    // Signed by B, B trusted: verified with the host's copy of B, not the cache's file.
    let taken = pinned(&[a.clone(), b.clone()], found.clone()).unwrap();
    assert_eq!(taken.certificate.as_deref(), Some(std::fs::read(&b).unwrap().as_slice()));
    // Signed by B, only A trusted: refused, both certificates named.
    let err = pinned(std::slice::from_ref(&a), found.clone()).unwrap_err();
    assert!(matches!(err, PrebuiltError::UntrustedSigner { .. }), "{err}");
    assert_eq!(err.exit_code(), code::BAD_MODULE_SIGNATURE);
    let text = err.to_string();
    assert!(text.contains(&found.entry.signer.as_ref().unwrap().fingerprint) && text.contains(&a_fpr), "{text}");
    // An unsigned entry passes: the host's kernel decides whether it may be installed.
    let mut unsigned = found.clone();
    unsigned.entry.signer = None;
    assert!(pinned(std::slice::from_ref(&a), unsigned).is_ok());
    // A named certificate that cannot be read is an error, not "trusts nothing".
    let err = pinned(&[dir.path().join("missing.der")], found).unwrap_err();
    assert!(err.to_string().contains("missing.der"), "{err}");
}
