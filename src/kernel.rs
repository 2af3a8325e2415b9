//! Which kernels a profile's repository offers, like falco's kernel-crawler but from the
//! distro's own signed index: a kernel release is known when its headers package is there.

use serde::Serialize;
use thiserror::Error;

use crate::cache::Cache;
use crate::deb::read_data_file;
use crate::diagnose::{code, Diagnose, Said};
use crate::profile::Profile;
use crate::repo::{self, version, Index, PackageRef, RepoError};
use crate::report::Reporter;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("no profile offers kernel {release} (looked in: {searched})")]
    Unknown { release: String, searched: String, closest: Vec<String> },
    #[error("kernel {release}: {source}")]
    Resolve { release: String, source: RepoError },
    #[error("kernel {release}: reading its configuration from {package}: {detail}")]
    Config { release: String, package: String, detail: String },
}

impl Diagnose for KernelError {
    fn dkms(&self) -> Option<Said> {
        match self {
            // dkms looks for the headers on the host; ckms, in its profiles: for its callers
            // both mean "no headers for that kernel".
            KernelError::Unknown { release, .. } => {
                Some(Said { key: "no_headers", values: serde_json::json!({ "kernel": release }) })
            }
            _ => None,
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            KernelError::Unknown { .. } => code::UNKNOWN_KERNEL,
            KernelError::Resolve { source, .. } => source.exit_code(),
            KernelError::Config { .. } => code::CHECKSUM_MISMATCH,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            KernelError::Unknown { closest, .. } if !closest.is_empty() => Some(format!(
                "closest kernels offered: {}. `ckms kernels` lists them all; a kernel released after the \
                 cached index shows up after `ckms kernels --refresh`",
                closest.join(", ")
            )),
            KernelError::Unknown { .. } => {
                Some("`ckms kernels` lists what the profiles offer; try `ckms kernels --refresh`".into())
            }
            KernelError::Resolve { source, .. } => source.hint(),
            KernelError::Config { .. } => {
                Some("the cached package may be damaged: run again with --refresh, or `ckms image prune --all`".into())
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Kernel {
    /// What `uname -r` prints on that kernel.
    pub release: String,
    pub profile: String,
    pub headers_package: String,
    /// The headers package's version (the kernel build's Debian version).
    pub version: String,
    /// The compiler the kernel was built with, e.g. "gcc-12", from the headers' dependencies.
    pub compiler: Option<String>,
    pub suite: String,
}

/// Every kernel the index offers for this profile, oldest first.
pub fn list(profile: &Profile, index: &Index) -> Vec<Kernel> {
    let mut out: Vec<Kernel> = index
        .candidates()
        .filter_map(|p| Some((profile.kernel_of_headers(p.name())?, p)))
        .map(|(release, p)| Kernel {
            release: release.to_string(),
            profile: profile.name.clone(),
            headers_package: p.name().to_string(),
            version: p.version().to_string(),
            compiler: compiler(profile, index, p).map(|v| format!("gcc-{v}")),
            suite: p.suite().to_string(),
        })
        .collect();
    out.sort_by(|a, b| version::compare(&a.version, &b.version).then_with(|| a.release.cmp(&b.release)));
    out
}

/// The kernel with this release in this profile, if offered.
pub fn find(profile: &Profile, index: &Index, release: &str) -> Option<Kernel> {
    let headers = index.candidates().find(|p| profile.kernel_of_headers(p.name()) == Some(release))?;
    Some(Kernel {
        release: release.to_string(),
        profile: profile.name.clone(),
        headers_package: headers.name().to_string(),
        version: headers.version().to_string(),
        compiler: compiler(profile, index, headers).map(|v| format!("gcc-{v}")),
        suite: headers.suite().to_string(),
    })
}

/// The compiler version found in the headers package's dependency closure.
fn compiler(profile: &Profile, index: &Index, headers: PackageRef) -> Option<String> {
    let closure = index.resolve(&[headers.name().to_string()], &profile.packages.exclude).ok()?;
    closure.iter().find_map(|p| profile.compiler_of(&p.name).map(str::to_string))
}

/// The kernel's .config as its headers package ships it (`usr/src/linux-headers-<release>/.config`),
/// read on the host from the signed, cached package (fetched if missing): BUILD_EXCLUSIVE_CONFIG,
/// module compression and the signing hash come from it. None when the package has none.
pub async fn config(
    cache: &Cache,
    index: &Index,
    kernel: &Kernel,
    report: &dyn Reporter,
) -> Result<Option<String>, KernelError> {
    let err = |detail: String| KernelError::Config {
        release: kernel.release.clone(),
        package: kernel.headers_package.clone(),
        detail,
    };
    let package = index
        .candidate(&kernel.headers_package)
        .ok_or_else(|| err("the package is no longer in the index".into()))?
        .to_package();
    // Read once per headers package: finding .config means decompressing much of the package,
    // which every build of every module for this kernel would otherwise repeat.
    let saved = cache.dir("kernel-config").ok().map(|d| d.join(&package.sha256));
    if let Some(text) = saved.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(text.strip_prefix("present\n").map(str::to_string));
    }
    repo::fetch_packages(cache, std::slice::from_ref(&package), report)
        .await
        .map_err(|source| KernelError::Resolve { release: kernel.release.clone(), source })?;
    let path = cache.blob_path(&package.sha256);
    let wanted = format!("linux-headers-{}/.config", kernel.release);
    let origin = kernel.headers_package.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        read_data_file(file, &origin, &wanted).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| err(e.to_string()))?;
    let config = found.map_err(err)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    if let Some(path) = saved {
        // A hint only: when it cannot be written, the next build reads the package again.
        let text = config.as_ref().map_or("absent\n".to_string(), |c| format!("present\n{c}"));
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(config)
}

/// Up to `n` releases from `offered` (oldest first) that look most like `wanted`; among
/// equally close ones, the newest first.
pub fn closest(wanted: &str, offered: &[String], n: usize) -> Vec<String> {
    let mut scored: Vec<(usize, std::cmp::Reverse<usize>, &String)> =
        offered.iter().enumerate().map(|(i, o)| (distance(wanted, o), std::cmp::Reverse(i), o)).collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, _, o)| o.clone()).collect()
}

/// Levenshtein distance over bytes; kernel releases are ASCII.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Catalog;

    const PACKAGES: &str = "\
Package: linux-headers-6.1.0-56-amd64
Version: 6.1.192-2
Architecture: amd64
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-compiler-gcc-12-x86
Filename: pool/l/h56.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000001

Package: linux-headers-6.1.0-56-common
Version: 6.1.192-2
Architecture: all
Filename: pool/l/c56.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000002

Package: linux-compiler-gcc-12-x86
Version: 6.1.192-2
Architecture: amd64
Depends: gcc-12
Filename: pool/l/cc.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000003

Package: gcc-12
Version: 12.2.0-14
Architecture: amd64
Filename: pool/g/gcc.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000004

Package: linux-headers-6.1.0-50-amd64
Version: 6.1.158-1
Architecture: amd64
Depends: linux-compiler-gcc-12-x86
Filename: pool/l/h50.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000005

Package: linux-headers-6.12-amd64
Version: 6.12.117-1
Architecture: amd64
Filename: pool/l/meta.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000006
";

    fn fixture() -> (Profile, Index) {
        let catalog = Catalog::load(&[]).unwrap();
        let profile = catalog.profile("debian-bookworm").unwrap().clone();
        (profile, Index::parse(PACKAGES, "http://mirror.test/debian", "bookworm").unwrap())
    }

    #[test]
    fn lists_kernels_with_their_compiler() {
        let (p, idx) = fixture();
        let ks = list(&p, &idx);
        let releases: Vec<_> = ks.iter().map(|k| k.release.as_str()).collect();
        assert_eq!(releases, ["6.1.0-50-amd64", "6.1.0-56-amd64"]);
        assert!(ks.iter().all(|k| k.compiler.as_deref() == Some("gcc-12")));
    }

    #[test]
    fn finds_one_kernel() {
        let (p, idx) = fixture();
        assert_eq!(find(&p, &idx, "6.1.0-56-amd64").unwrap().version, "6.1.192-2");
        assert!(find(&p, &idx, "6.1.0-57-amd64").is_none());
    }

    #[test]
    fn closest_ranks_by_edit_distance() {
        let offered =
            vec!["6.1.0-50-amd64".to_string(), "6.12.117+deb13-amd64".to_string(), "6.1.0-56-amd64".to_string()];
        assert_eq!(
            closest("6.1.0-57-amd64", &offered, 2),
            ["6.1.0-56-amd64", "6.1.0-50-amd64"],
            "equally close: newest first"
        );
    }
}
