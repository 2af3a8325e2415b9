//! Where a module source comes from when it comes from a Debian package, and what that package
//! declares: a `*-dkms` .deb (a file, or fetched through a profile's signed index), or an
//! installed package (the dpkg database). Usable without a tree: the prebuild farm and the
//! corpus scripts call [`from_deb`] and [`fetch`] directly.
//!
//! - [`origin`]: the record kept per module version (`origin.json`);
//! - [`deps`]: its Depends as a builder image's extra packages and sibling module sources;
//! - [`dpkg`]: the dpkg database, read as files;
//! - [`unpack`]: `usr/src/<m>-<v>` out of a .deb.

pub mod deps;
pub mod dpkg;
pub mod origin;
mod unpack;

pub use deps::{build_deps, BuildDeps};
pub use origin::Origin;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::context::{Context, ContextError};
use crate::deb::{control_fields, DebError};
use crate::diagnose::{code, Diagnose};
use crate::profile::{Catalog, Profile};
use crate::repo::{self, RepoError};

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{}: {what}", deb.display())]
    BadPackage { deb: PathBuf, what: String },
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no package {package} in {profile}'s repository")]
    NoPackage { package: String, profile: String },
    #[error("which distribution's package? this host's /etc/os-release names none of ckms's profiles ({known})")]
    NoProfile { known: String },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl Diagnose for SourceError {
    fn exit_code(&self) -> i32 {
        match self {
            SourceError::BadPackage { .. } => code::BAD_CONF,
            SourceError::Deb(e) => e.exit_code(),
            SourceError::Io { .. } => code::IO,
            SourceError::NoPackage { .. } => code::UNRESOLVABLE,
            SourceError::NoProfile { .. } => code::USAGE,
            SourceError::Context(e) => e.exit_code(),
            SourceError::Repo(e) => e.exit_code(),
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            SourceError::BadPackage { .. } => {
                "a module package holds one /usr/src/<module>-<version> with a dkms.conf; add its source directory instead".into()
            }
            SourceError::Deb(e) => return e.hint(),
            SourceError::Context(e) => return e.hint(),
            SourceError::Repo(e) => return e.hint(),
            SourceError::Io { .. } => "check the path's permissions and free space".into(),
            SourceError::NoPackage { .. } => {
                "check the name (`apt-cache search -- -dkms` lists module packages) and the profile (--profile)".into()
            }
            SourceError::NoProfile { .. } => "name the profile with --profile (`ckms profiles` lists them)".into(),
        })
    }
}

/// A module source unpacked from a package, and that package's record.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// `<dest>/<m>-<v>`: the directory with the dkms.conf.
    pub dir: PathBuf,
    /// Its name, `<m>-<v>` as the package installs it.
    pub name: String,
    pub origin: Origin,
}

/// Unpacks the module source of the `*-dkms` package `deb` into `dest` (an empty directory)
/// and reads the package's control fields; `learned_from` says where the package came from.
pub fn from_deb(deb: &Path, dest: &Path, learned_from: Option<String>) -> Result<Unpacked, SourceError> {
    let file = std::fs::File::open(deb).map_err(|source| SourceError::Io { path: deb.to_path_buf(), source })?;
    let fields = control_fields(std::io::BufReader::new(file), &deb.display().to_string())?;
    let learned = learned_from.unwrap_or_else(|| deb.display().to_string());
    let origin = Origin::from_fields(&fields, learned).ok_or_else(|| SourceError::BadPackage {
        deb: deb.to_path_buf(),
        what: "its control file has no Package".into(),
    })?;
    let (dir, name) = unpack::usr_src(deb, dest)?;
    Ok(Unpacked { dir, name, origin })
}

/// Downloads `package` (its newest version) from `profile`'s signed repository into the cache
/// (checked against the index's SHA-256, like image packages) and returns the cached file and
/// a description for the origin record.
pub async fn fetch(ctx: &Context, profile: &Profile, package: &str) -> Result<(PathBuf, String), SourceError> {
    let index = ctx.index(profile).await?;
    let Some(p) = index.candidate(package).map(|p| p.to_package()) else {
        return Err(SourceError::NoPackage { package: package.into(), profile: profile.name.clone() });
    };
    repo::fetch_packages(&ctx.cache, std::slice::from_ref(&p), ctx.reporter()).await?;
    let learned = format!("{} {} from {}'s repository ({})", p.name, p.version, profile.name, p.suite);
    Ok((ctx.cache.blob_path(&p.sha256), learned))
}

/// The profile for this host's distribution: the one with a suite named like /etc/os-release's
/// VERSION_CODENAME.
pub fn host_profile<'c>(catalog: &'c Catalog, os_release: &str) -> Result<&'c Profile, SourceError> {
    catalog.of_os_release(os_release).ok_or_else(|| SourceError::NoProfile {
        known: catalog.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// The dpkg database of the system whose source tree is `source_tree` (`<root>/usr/src`), and
/// that root; None for a source tree elsewhere.
pub fn dpkg_root(source_tree: &Path) -> Option<(PathBuf, PathBuf)> {
    let usr = source_tree.parent()?;
    if source_tree.file_name()? != "src" || usr.file_name()? != "usr" {
        return None;
    }
    let root = usr.parent()?;
    Some((root.join("var/lib/dpkg"), root.to_path_buf()))
}

/// The record of the installed package that owns `<source_tree>/<name>/dkms.conf` (or of
/// `package` when given), from the dpkg database; None without one.
pub fn installed(source_tree: &Path, name: &str, package: Option<&str>) -> Option<Origin> {
    let (db, _) = dpkg_root(source_tree)?;
    let package = match package {
        Some(p) => p.to_string(),
        None => dpkg::owner(&db, &format!("/usr/src/{name}/dkms.conf"))?,
    };
    let fields = dpkg::installed_fields(&db, &package)?;
    Origin::from_fields(&fields, format!("the dpkg database ({})", db.join("status").display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_profile_by_codename() {
        let c = Catalog::load(&[]).unwrap();
        assert_eq!(host_profile(&c, "ID=debian\nVERSION_CODENAME=bookworm\n").unwrap().name, "debian-bookworm");
        assert_eq!(host_profile(&c, "VERSION_CODENAME=\"trixie\"\n").unwrap().name, "debian-trixie");
        assert!(host_profile(&c, "ID=fedora\n").unwrap_err().to_string().contains("debian-bookworm"));
    }

    #[test]
    fn the_dpkg_database_beside_the_source_tree() {
        assert_eq!(dpkg_root(Path::new("/usr/src")), Some((PathBuf::from("/var/lib/dpkg"), PathBuf::from("/"))));
        assert_eq!(dpkg_root(Path::new("/r/usr/src")).unwrap().0, PathBuf::from("/r/var/lib/dpkg"));
        assert_eq!(dpkg_root(Path::new("/srv/sources")), None);
    }

    #[test]
    fn an_installed_package_found_by_its_dkms_conf() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("var/lib/dpkg");
        std::fs::create_dir_all(db.join("info")).unwrap();
        std::fs::write(db.join("info/m-dkms.list"), "/usr/src/m-1/dkms.conf\n").unwrap();
        std::fs::write(
            db.join("status"),
            "Package: m-dkms\nStatus: install ok installed\nVersion: 1-2\nDepends: gawk\n",
        )
        .unwrap();
        let tree = root.path().join("usr/src");
        let o = installed(&tree, "m-1", None).unwrap();
        assert_eq!((o.package.as_str(), o.depends.as_str()), ("m-dkms", "gawk"));
        assert!(o.learned_from.contains("dpkg database"));
        assert_eq!(installed(&tree, "m-1", Some("m-dkms")), Some(o));
        assert_eq!(installed(&tree, "other-1", None), None);
    }
}
