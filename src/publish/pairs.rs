//! The store's built pairs as publishing needs them: per (module, kernel) the module files a
//! host installs (signed and compressed as the store holds them), where they go, when they
//! were built, and what the kernel's profile says about its system.

use std::path::PathBuf;

use crate::farm::report::lookups;
use crate::farm::store::{Damage, Lookup, Record, SignedBy, Status, Store};
use crate::profile::{Catalog, Os};

use super::PublishError;

/// One module file of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module's name as the kernel knows it (e.g. `v4l2loopback`).
    pub name: String,
    /// Under /lib/modules/<kver>, e.g. `/updates/dkms`.
    pub dest: String,
    /// e.g. `v4l2loopback.ko` or `v4l2loopback.ko.xz`.
    pub file_name: String,
    /// In the store.
    pub path: PathBuf,
}

/// What the kernel's profile says about the system it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The apt suite (the profile's first suite, e.g. "bookworm").
    pub suite: String,
    /// Debian's architecture name (e.g. "amd64").
    pub deb_arch: String,
    /// The OCI image config's name for it (profiles/architectures.toml, e.g. "arm64").
    pub oci_arch: String,
    /// The kernel's image package (e.g. "linux-image-6.1.0-56-amd64").
    pub image_package: String,
    pub os: Option<OsRelease>,
}

/// os-release fields of the target system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub version_id: Option<String>,
    pub architecture: String,
}

impl From<&Os> for OsRelease {
    fn from(os: &Os) -> OsRelease {
        OsRelease { id: os.id.clone(), version_id: os.version_id.clone(), architecture: os.architecture.clone() }
    }
}

/// A built (module, kernel) pair of the store, as publishing reads it (before the build it is
/// a `pair::inputs::KeyedPair`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPair {
    /// The store key.
    pub key: String,
    /// dkms's PACKAGE_NAME and PACKAGE_VERSION.
    pub module: String,
    pub version: String,
    pub kernel: String,
    /// The kernel's machine (e.g. `x86_64`), as in the pair's key.
    pub arch: String,
    pub profile: String,
    /// When the entry was built (seconds since 1970): the SOURCE_DATE_EPOCH of what is made
    /// from it, so that publishing again gives the same bytes.
    pub epoch: u64,
    /// The Debian package the source came from, when it came from one.
    pub source_package: Option<String>,
    /// The module signer's certificate, when signed.
    pub signer: Option<SignedBy>,
    /// Whether its modules loaded in a VM running the kernel (none: not proven).
    pub loaded: Option<bool>,
    pub files: Vec<ModuleFile>,
    pub target: Target,
}

/// The built pairs of the store's last build (every entry when it has no matrix), checked
/// file by file, restricted to `modules` and `kernels` when they are not empty. A damaged
/// entry stops publishing, unless `skip_damaged`: then it is left out, and returned to be said.
pub fn read(
    store: &Store,
    catalog: &Catalog,
    modules: &[String],
    kernels: &[String],
    skip_damaged: bool,
) -> Result<(Vec<BuiltPair>, Vec<Damage>), PublishError> {
    let (mut records, mut damaged): (Vec<Record>, Vec<Damage>) = (Vec::new(), Vec::new());
    for (_, lookup) in lookups(store) {
        match lookup {
            Lookup::Found(r) if r.status == Status::Built && !r.modules.is_empty() => records.push(*r),
            Lookup::Damaged(d) => damaged.push(d),
            _ => {}
        }
    }
    if !damaged.is_empty() && !skip_damaged {
        return Err(PublishError::Damaged { store: store.root().into(), damaged });
    }
    let known = |f: fn(&Record) -> &String| {
        let mut v: Vec<String> = records.iter().map(|r| f(r).clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    for (wanted, all) in [(modules, known(|r| &r.module)), (kernels, known(|r| &r.kernel))] {
        if let Some(w) = wanted.iter().find(|w| !all.contains(w)) {
            return Err(PublishError::NotInStore { store: store.root().into(), wanted: w.clone(), known: all });
        }
    }
    let mut pairs = Vec::new();
    for r in records {
        if (!modules.is_empty() && !modules.contains(&r.module))
            || (!kernels.is_empty() && !kernels.contains(&r.kernel))
        {
            continue;
        }
        let unknown = || PublishError::Profile { kernel: r.kernel.clone(), profile: r.profile.clone() };
        let profile = catalog.profile(&r.profile).map_err(|_| unknown())?;
        let architecture = catalog.architecture(profile).map_err(|_| unknown())?;
        let target = Target {
            suite: profile.suites.first().map(|s| s.suite.clone()).unwrap_or_else(|| profile.name.clone()),
            deb_arch: profile.arch.clone(),
            oci_arch: architecture.oci.clone(),
            image_package: profile.kernel.image.replace("{kver}", &r.kernel),
            os: profile.os.as_ref().map(OsRelease::from),
        };
        pairs.push(pair(store, &r, target)?);
    }
    if pairs.is_empty() {
        let what = match (modules.is_empty(), kernels.is_empty()) {
            (true, true) => String::new(),
            _ => format!(" among {}", modules.iter().chain(kernels).cloned().collect::<Vec<_>>().join(", ")),
        };
        return Err(PublishError::NothingBuilt { store: store.root().into(), what });
    }
    pairs.sort_by(|a, b| (&a.module, &a.kernel).cmp(&(&b.module, &b.kernel)));
    // Two entries of one (module, kernel) (a store read without its matrix): the newest.
    pairs.dedup_by(|later, earlier| {
        let same = later.module == earlier.module && later.kernel == earlier.kernel;
        if same && later.epoch > earlier.epoch {
            std::mem::swap(later, earlier);
        }
        same
    });
    Ok((pairs, damaged))
}

/// One record as a pair; its files are the ones a host installs.
fn pair(store: &Store, r: &Record, target: Target) -> Result<BuiltPair, PublishError> {
    let entry_err = |message: String| PublishError::Entry {
        key: r.key.clone(),
        module: r.module.clone(),
        kernel: r.kernel.clone(),
        message,
    };
    let dir = store.entry_dir(&r.key);
    let files = r
        .modules
        .iter()
        .map(|m| {
            let stored = m.signed.as_ref().unwrap_or(&m.unsigned);
            let file_name = std::path::Path::new(&stored.file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| entry_err(format!("module file {:?} has no name", stored.file)))?;
            Ok(ModuleFile { name: m.name.clone(), dest: m.dest.clone(), file_name, path: dir.join(&stored.file) })
        })
        .collect::<Result<Vec<_>, PublishError>>()?;
    let epoch =
        epoch_of(&r.built_at).ok_or_else(|| entry_err(format!("built_at {:?} is no RFC 3339 time", r.built_at)))?;
    Ok(BuiltPair {
        key: r.key.clone(),
        module: r.module.clone(),
        version: r.version.clone(),
        kernel: r.kernel.clone(),
        arch: r.arch.clone(),
        profile: r.profile.clone(),
        epoch,
        source_package: r.source.package.clone(),
        signer: r.signer.clone(),
        loaded: r.proof.as_ref().map(|p| p.loaded),
        files,
        target,
    })
}

/// Seconds since 1970 of an RFC 3339 time (none before 1970).
pub fn epoch_of(rfc3339: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::diagnose::Diagnose;
    use crate::farm::store::{stored_file, tests::record, StoredModule};

    /// A pair as the formats see it, with one module file of `bytes` written under `dir`.
    pub(crate) fn pair(dir: &std::path::Path, module: &str, kernel: &str, file: &str, bytes: &[u8]) -> BuiltPair {
        let path = dir.join(format!("{module}-{kernel}")).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        BuiltPair {
            key: format!("key-{module}-{kernel}"),
            module: module.into(),
            version: "1.0".into(),
            kernel: kernel.into(),
            arch: "x86_64".into(),
            profile: "debian-bookworm".into(),
            epoch: 1_764_892_800,
            source_package: Some(format!("{module}-dkms")),
            signer: Some(SignedBy {
                fingerprint: crate::publish::signer::tests::cert().fingerprint,
                subject: "ckms farm".into(),
                hash: "sha256".into(),
            }),
            loaded: Some(true),
            files: vec![ModuleFile {
                name: file.split(".ko").next().unwrap_or(file).into(),
                dest: "/updates/dkms".into(),
                file_name: file.into(),
                path,
            }],
            target: Target {
                suite: "bookworm".into(),
                deb_arch: "amd64".into(),
                oci_arch: "amd64".into(),
                image_package: format!("linux-image-{kernel}"),
                os: Some(OsRelease {
                    id: "debian".into(),
                    version_id: Some("12".into()),
                    architecture: "x86-64".into(),
                }),
            },
        }
    }

    /// `p` as the pair of an arm64 kernel (its profile debian-bookworm-arm64).
    pub(crate) fn arm64(mut p: BuiltPair) -> BuiltPair {
        p.arch = "aarch64".into();
        p.profile = "debian-bookworm-arm64".into();
        p.target.deb_arch = "arm64".into();
        p.target.oci_arch = "arm64".into();
        if let Some(os) = p.target.os.as_mut() {
            os.architecture = "arm64".into();
        }
        p
    }

    #[test]
    fn built_pairs_of_the_store_with_their_profile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let catalog = Catalog::load(&[]).unwrap();
        for (key, kernel, status) in [("k1", "6.1.0-56-amd64", Status::Built), ("k2", "6.1.0-55-amd64", Status::Failed)]
        {
            let staged = store.staging(key).unwrap();
            std::fs::create_dir_all(staged.path().join("modules")).unwrap();
            std::fs::create_dir_all(staged.path().join("unsigned")).unwrap();
            std::fs::write(staged.path().join("modules/hello.ko.xz"), b"signed").unwrap();
            std::fs::write(staged.path().join("unsigned/hello.ko"), b"unsigned").unwrap();
            let mut rec = record(key, vec![]);
            rec.kernel = kernel.into();
            rec.status = status;
            rec.modules = vec![StoredModule {
                name: "hello".into(),
                dest: "/updates/dkms".into(),
                unsigned: stored_file(staged.path(), "unsigned/hello.ko").unwrap(),
                signed: Some(stored_file(staged.path(), "modules/hello.ko.xz").unwrap()),
            }];
            store.commit(staged, &rec).unwrap();
        }
        let (pairs, _) = read(&store, &catalog, &[], &[], false).unwrap();
        assert_eq!(pairs.len(), 1, "the failed pair is not published");
        let p = &pairs[0];
        assert_eq!((p.module.as_str(), p.kernel.as_str()), ("hello", "6.1.0-56-amd64"));
        assert_eq!(p.files[0].file_name, "hello.ko.xz", "the signed, compressed file");
        assert_eq!(std::fs::read(&p.files[0].path).unwrap(), b"signed");
        assert_eq!(p.epoch, epoch_of("2026-12-05T00:00:00Z").unwrap());
        assert_eq!(p.target.suite, "bookworm");
        assert_eq!(p.target.image_package, "linux-image-6.1.0-56-amd64");
        assert_eq!(p.target.os.as_ref().unwrap().version_id.as_deref(), Some("12"));

        let err = read(&store, &catalog, &["nope".into()], &[], false).unwrap_err();
        assert!(matches!(&err, PublishError::NotInStore { known, .. } if known == &["hello".to_string()]), "{err}");
        let err = read(&store, &catalog, &[], &["6.1.0-55-amd64".into()], false).unwrap_err();
        assert!(err.to_string().contains("6.1.0-55-amd64"), "{err}");

        // A damaged entry stops publishing rather than being passed over; told to, publishing
        // leaves it out and says so.
        std::fs::write(store.entry_dir("k1").join("modules/hello.ko.xz"), b"tampered").unwrap();
        let err = read(&store, &catalog, &[], &[], false).unwrap_err();
        assert!(matches!(&err, PublishError::Damaged { damaged, .. } if damaged[0].key == "k1"), "{err}");
        assert_eq!(err.exit_code(), crate::diagnose::code::DAMAGED_STORE);
        assert!(err.to_string().contains("k1 (hello/1.0 for 6.1.0-56-amd64)"), "{err}");
        let err = read(&store, &catalog, &[], &[], true).unwrap_err();
        assert!(matches!(err, PublishError::NothingBuilt { .. }), "the only built pair was left out: {err}");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(epoch_of("1970-01-01T00:00:10Z"), Some(10));
        assert_eq!(epoch_of("yesterday"), None);
    }
}
