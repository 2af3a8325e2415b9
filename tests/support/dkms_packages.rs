//! Real Debian `*-dkms` packages as module sources: fetched from the mirror through ckms's own
//! library (the profile's verified index, the shared download cache, `deb::data_tar`), and
//! unpacked so that `usr/src/<module>-<version>/` is what a test builds from.
//!
//! Which suite's package goes with which kernel is the distro's own pairing: the package comes
//! from the index of the profile that offers the kernel (bookworm's package for 6.1.0-56-amd64,
//! trixie's for a 6.12.*+deb13 kernel), as `apt install foo-dkms` would pick it on that system.
//!
//! Included by the test files that need it with `#[path = "support/dkms_packages.rs"]`, next to
//! `mod support` (tests/support/mod.rs), whose `shared_cache` it uses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ckms::cache::Cache;
use ckms::config::Config;
use ckms::context::Context;
use ckms::profile::Catalog;
use ckms::repo::Index;
use ckms::report::Silent;

/// One `*-dkms` package unpacked: its module sources as `/usr/src/<module>-<version>` holds them.
#[derive(Debug, Clone)]
pub struct DkmsSource {
    /// The Debian package, e.g. `v4l2loopback-dkms`.
    pub package: String,
    /// Its Debian version, e.g. `0.12.7-2`.
    pub package_version: String,
    /// The suite it came from, e.g. `bookworm`.
    pub suite: String,
    /// The dkms module name and version: `dkms build -m <module> -v <version>`.
    pub module: String,
    pub version: String,
    /// The unpacked `usr/src/<module>-<version>` (holds `dkms.conf`).
    pub dir: PathBuf,
}

impl DkmsSource {
    /// `<module>/<version>`, as dkms names a pair's module.
    pub fn module_version(&self) -> String {
        format!("{}/{}", self.module, self.version)
    }
}

/// A ckms library context on the shared test cache, isolated from the machine's ckms settings:
/// no configuration file, no `CKMS_*` variable but the cache directory, and the built-in
/// profiles and recipes only (not /etc/ckms or /usr/share/ckms, which an installed ckms of
/// another version may have filled).
pub fn context() -> Context {
    let cache_dir = crate::support::shared_cache();
    let env = BTreeMap::from([("CKMS_CACHE_DIR".to_string(), cache_dir.display().to_string())]);
    let config = Config::load_from(&[], env).expect("an empty configuration loads");
    Context::of(
        config,
        Catalog::load(&[]).expect("the built-in profiles load"),
        Cache::open(cache_dir).expect("the shared test cache opens"),
        Arc::new(Silent),
        false,
    )
}

/// The name of the profile offering `kernel` (e.g. `debian-trixie` for `6.12.117+deb13-amd64`).
pub async fn profile_of(ctx: &Context, kernel: &str) -> String {
    let (profile, _, _) = ctx.find_kernel(kernel, None).await.unwrap_or_else(|e| panic!("kernel {kernel}: {e}"));
    profile.name.clone()
}

/// The verified index of `profile` (from the shared cache when recent).
pub async fn index(ctx: &Context, profile: &str) -> Arc<Index> {
    let p = ctx.catalog.profile(profile).unwrap_or_else(|e| panic!("profile {profile}: {e}"));
    ctx.index(p).await.unwrap_or_else(|e| panic!("index of {profile}: {e}"))
}

/// Fetches `package` (its candidate in `index`, one profile's index) and unpacks its
/// `usr/src/<m>-<v>/` under `dest` (as `dest/<m>-<v>/`). Panics, saying why, when the package
/// is not offered or holds no dkms source tree.
pub async fn fetch_source(ctx: &Context, index: &Index, package: &str, dest: &Path) -> DkmsSource {
    let pkg = index.candidate(package).unwrap_or_else(|| panic!("the index does not offer {package}")).to_package();
    ckms::repo::fetch_packages(&ctx.cache, std::slice::from_ref(&pkg), &Silent)
        .await
        .unwrap_or_else(|e| panic!("fetching {package} {}: {e}", pkg.version));
    let deb = ctx.cache.blob_path(&pkg.sha256);
    let origin = format!("{package}_{}", pkg.version);
    let dest = dest.to_path_buf();
    let (module, version, dir) = tokio::task::spawn_blocking(move || unpack_usr_src(&deb, &origin, &dest))
        .await
        .expect("unpacking task")
        .unwrap_or_else(|e| panic!("unpacking {package} {}: {e}", pkg.version));
    DkmsSource {
        package: package.to_string(),
        package_version: pkg.version.clone(),
        suite: pkg.suite.clone(),
        module,
        version,
        dir,
    }
}

/// Unpacks the entries of the .deb's data.tar under `usr/src/` into `dest`; returns the one
/// `<module>-<version>` directory holding a dkms.conf, split into module and version.
fn unpack_usr_src(deb: &Path, origin: &str, dest: &Path) -> std::io::Result<(String, String, PathBuf)> {
    let file = std::fs::File::open(deb)?;
    let data = ckms::deb::data_tar(file, origin).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut archive = tar::Archive::new(data);
    std::fs::create_dir_all(dest)?;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Ok(rel) = path.strip_prefix("./usr/src").or_else(|_| path.strip_prefix("usr/src")) else { continue };
        if !rel.as_os_str().is_empty() {
            // Lands under dest/usr/src; `unpack_in` refuses entries that would leave `dest`.
            entry.unpack_in(dest)?;
        }
    }
    // Move usr/src/* up to dest.
    let usr_src = dest.join("usr/src");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&usr_src)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let target = dest.join(&name);
        std::fs::rename(e.path(), &target)?;
        if target.join("dkms.conf").is_file() {
            found.push((name, target));
        }
    }
    std::fs::remove_dir_all(dest.join("usr"))?;
    let [(name, dir)] = <[_; 1]>::try_from(found).map_err(|f| {
        std::io::Error::other(format!("expected one usr/src/<module>-<version>/dkms.conf, found {}", f.len()))
    })?;
    // dkms's layout: /usr/src/<PACKAGE_NAME>-<PACKAGE_VERSION>; versions hold no '-' here.
    let (module, version) =
        name.rsplit_once('-').ok_or_else(|| std::io::Error::other(format!("{name}: not <module>-<version>")))?;
    Ok((module.to_string(), version.to_string(), dir))
}
