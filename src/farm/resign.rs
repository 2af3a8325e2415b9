//! Key rotation. A pair's key covers what decides its build, not who signs it: the signed
//! modules depend on the signer too. When the farm signs with another certificate, `farm
//! build` signs each stored pair again from the unsigned modules its entry keeps, on this
//! machine, without a container, and swaps the entry (under the pair's lock).

use std::path::Path;

use super::exec::Signing;
use super::plan::FarmPlan;
use super::store::{stored_file, Lookup, SignedBy, Store};
use super::FarmError;
use crate::install::compress::Compression;
use crate::sign;

/// Whether the stored pair `key` is signed by another certificate than `signing`'s.
pub fn outdated(store: &Store, key: &str, signing: &Signing) -> bool {
    match store.get(key) {
        Lookup::Found(r) => r.signer.is_some_and(|s| s.fingerprint != signing.fingerprint),
        _ => false,
    }
}

/// Signs the stored pair `key` again with `signing`; false when there was nothing to do
/// (unsigned, already signed by it, or no longer a good entry: the build sees to those).
pub fn resign(store: &Store, key: &str, signing: &Signing) -> Result<bool, FarmError> {
    let _lock = store.lock(key)?;
    let Lookup::Found(mut record) = store.get(key) else { return Ok(false) };
    let Some(old) = record.signer.clone().filter(|s| s.fingerprint != signing.fingerprint) else {
        return Ok(false);
    };
    let entry = store.entry_dir(key);
    let staged = store.staging(key)?;
    copy_tree(&entry, staged.path())?;
    for m in &mut record.modules {
        let Some(signed) = &m.signed else { continue };
        let from = entry.join(&m.unsigned.file);
        let bytes = std::fs::read(&from).map_err(FarmError::io(&from))?;
        let bytes = sign::sign(&bytes, &signing.signer, &old.hash, &from)?;
        let name = Path::new(&signed.file).file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let compression = Compression::split_file_name(name).map_or(Compression::None, |(_, c)| c);
        let to = staged.path().join(&signed.file);
        let bytes = compression.compress(&bytes).map_err(FarmError::io(&to))?;
        std::fs::write(&to, bytes).map_err(FarmError::io(&to))?;
        m.signed = Some(stored_file(staged.path(), &signed.file)?);
    }
    record.signer =
        Some(SignedBy { fingerprint: signing.fingerprint.clone(), subject: signing.subject.clone(), hash: old.hash });
    store.commit(staged, &record)?;
    Ok(true)
}

/// Copies the entry's regular files and directories (its record is rewritten by the commit).
fn copy_tree(from: &Path, to: &Path) -> Result<(), FarmError> {
    for e in std::fs::read_dir(from).map_err(FarmError::io(from))? {
        let e = e.map_err(FarmError::io(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let kind = e.file_type().map_err(FarmError::io(&src))?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst).map_err(FarmError::io(&dst))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(FarmError::io(&dst))?;
        }
    }
    Ok(())
}

/// Signs again every pair of `built` (indexes into `plan`) signed by another certificate than
/// `signing`'s; the pairs it signed.
pub fn stored(store: &Store, plan: &FarmPlan, built: &[usize], signing: &Signing) -> Result<Vec<usize>, FarmError> {
    let mut done = Vec::new();
    for &i in built {
        let key = &plan.pairs[i].key;
        if outdated(store, key, signing) && resign(store, key, signing)? {
            done.push(i);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::store::tests::record;
    use crate::sign::{keys, KeyPaths, Origin};
    use std::sync::Arc;

    fn signing(dir: &Path) -> Signing {
        let paths = KeyPaths { key: dir.join("mok.key"), cert: dir.join("mok.der"), origin: Origin::Own };
        let signer = keys::generate(&paths, false).unwrap();
        Signing { fingerprint: signer.fingerprint(), signer: Arc::new(signer), subject: "farm".into() }
    }

    #[test]
    fn a_key_change_signs_stored_modules_again_from_the_unsigned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (signing(&dir.path().join("a")), signing(&dir.path().join("b")));
        let store = Store::open(&dir.path().join("store")).unwrap();
        let key = "ab".repeat(32);
        let ko = b"\x7fELF a module";
        let staged = store.staging(&key).unwrap();
        std::fs::create_dir_all(staged.path().join("unsigned")).unwrap();
        std::fs::create_dir_all(staged.path().join("modules")).unwrap();
        std::fs::write(staged.path().join("unsigned/hello.ko"), ko).unwrap();
        let signed = sign::sign(ko, &a.signer, "sha256", Path::new("hello.ko")).unwrap();
        std::fs::write(staged.path().join("modules/hello.ko.xz"), Compression::Xz.compress(&signed).unwrap()).unwrap();
        let mut r = record(&key, vec![stored_file(staged.path(), "unsigned/hello.ko").unwrap()]);
        r.modules[0].signed = Some(stored_file(staged.path(), "modules/hello.ko.xz").unwrap());
        r.signer = Some(SignedBy { fingerprint: a.fingerprint.clone(), subject: "farm".into(), hash: "sha256".into() });
        store.commit(staged, &r).unwrap();

        assert!(!outdated(&store, &key, &a) && outdated(&store, &key, &b));
        assert!(!resign(&store, &key, &a).unwrap(), "signed by a already");
        assert!(resign(&store, &key, &b).unwrap());
        let Lookup::Found(now) = store.get(&key) else { panic!("the entry is gone or damaged") };
        assert_eq!(now.signer.as_ref().unwrap().fingerprint, b.fingerprint);
        assert_eq!(now.modules[0].unsigned, r.modules[0].unsigned, "the unsigned module is kept as it was");
        let xz = std::fs::read(store.entry_dir(&key).join("modules/hello.ko.xz")).unwrap();
        let module = Compression::Xz.decompress(&xz).unwrap();
        let cert = keys::load_cert(&dir.path().join("b/mok.der")).unwrap();
        sign::verify(&module, &cert, Path::new("hello.ko"), Path::new("mok.der")).unwrap();
        assert!(!outdated(&store, &key, &b));
    }
}
