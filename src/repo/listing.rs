//! Which packages an index offers, by name: `ckms packages`, the corpus benchmark
//! (ci/bench/corpus.sh) and a prebuild farm, which all want "every module source of a suite".

use regex::Regex;
use serde::Serialize;

use super::index::PackageRef;
use super::{Index, SuiteInfo};

/// The package every module source package depends on: `dh_dkms` puts it into the package's
/// `${misc:Depends}`, so a package that ships `/usr/src/<m>-<v>/dkms.conf` through Debian's
/// tooling names it; `dh-dkms` (the debhelper addon, named like a module source) does not.
pub const DKMS: &str = "dkms";

/// One package as listed: the candidate version across the index's suites.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listed {
    pub name: String,
    pub version: String,
    pub suite: String,
    /// The source package, when it differs from the name.
    pub source: Option<String>,
    /// Depends and Pre-Depends, one entry per relation (`a | b (>= 1)`).
    pub depends: Vec<String>,
    /// Where the `.deb` is, and what its bytes must hash to (from the signed index).
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// Depends on dkms: a module source package (see [`DKMS`]).
    pub dkms_source: bool,
}

/// What was listed, and from which signed indexes (their `Date:` says how fresh).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listing {
    pub suites: Vec<SuiteInfo>,
    pub packages: Vec<Listed>,
}

/// Which packages to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Names matching this (anywhere in the name, as `grep -E` would); all when None.
    pub name: Option<Regex>,
    /// Only module source packages ([`is_dkms_source`]).
    pub dkms_only: bool,
}

/// The candidate of every name `filter` admits, in name order.
pub fn list(index: &Index, filter: &Filter) -> Listing {
    let packages = index
        .candidates()
        .filter(|p| filter.name.as_ref().is_none_or(|re| re.is_match(p.name())))
        .filter(|p| !filter.dkms_only || is_dkms_source(p))
        .map(listed)
        .collect();
    Listing { suites: index.suites().to_vec(), packages }
}

/// Depends on dkms (any alternative of any relation names it).
pub fn is_dkms_source(p: &PackageRef<'_>) -> bool {
    p.depends().flatten().any(|r| r.name == DKMS)
}

fn listed(p: PackageRef<'_>) -> Listed {
    let depends =
        p.depends().map(|alts| alts.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")).collect();
    Listed {
        name: p.name().to_string(),
        version: p.version().to_string(),
        suite: p.suite().to_string(),
        source: p.source().filter(|s| *s != p.name()).map(str::to_string),
        depends,
        url: p.url(),
        sha256: p.sha256(),
        size: p.size(),
        dkms_source: is_dkms_source(&p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGES: &str = "\
Package: dh-dkms
Version: 3.0.10-8
Architecture: all
Depends: perl:any
Filename: pool/main/d/dkms/dh-dkms_3.0.10-8_all.deb
Size: 10
SHA256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa

Package: west-chamber-dkms
Version: 20100405+svn20111107.r124-17
Architecture: all
Depends: bzip2, dkms (>= 2.1.0.0), libxtables-dev (>= 1.4.3), make, xtables-addons-dkms (>= 3.13)
Source: west-chamber
Filename: pool/main/w/west-chamber/west-chamber-dkms_1_all.deb
Size: 20
SHA256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb

Package: v4l2loopback-dkms
Version: 0.12.7-2
Architecture: all
Depends: dkms-provider | dkms (>= 2.1.0.0)
Source: v4l2loopback
Filename: pool/main/v/v4l2loopback/v4l2loopback-dkms_0.12.7-2_all.deb
Size: 30
SHA256: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc

Package: v4l2loopback-utils
Version: 0.12.7-2
Architecture: all
Filename: pool/main/v/v4l2loopback/v4l2loopback-utils_0.12.7-2_all.deb
Size: 40
SHA256: dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd
";

    fn index() -> Index {
        Index::parse(PACKAGES, "http://mirror/debian/", "bookworm").unwrap()
    }

    fn names(l: &Listing) -> Vec<&str> {
        l.packages.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn name_pattern_keeps_dh_dkms_the_dkms_rule_drops_it() {
        let ix = index();
        let by_name = Filter { name: Some(Regex::new("-dkms$").unwrap()), dkms_only: false };
        assert_eq!(names(&list(&ix, &by_name)), ["dh-dkms", "v4l2loopback-dkms", "west-chamber-dkms"]);
        let sources = Filter { dkms_only: true, ..by_name };
        assert_eq!(names(&list(&ix, &sources)), ["v4l2loopback-dkms", "west-chamber-dkms"]);
    }

    #[test]
    fn no_filter_lists_everything_in_name_order() {
        assert_eq!(
            names(&list(&index(), &Filter::default())),
            ["dh-dkms", "v4l2loopback-dkms", "v4l2loopback-utils", "west-chamber-dkms"]
        );
    }

    #[test]
    fn a_listed_package_carries_depends_url_and_digest() {
        let l = list(&index(), &Filter { name: Some(Regex::new("^west").unwrap()), dkms_only: true });
        let [p] = l.packages.as_slice() else { panic!("{l:?}") };
        assert_eq!(p.version, "20100405+svn20111107.r124-17");
        assert_eq!(p.source.as_deref(), Some("west-chamber"));
        assert_eq!(
            p.depends,
            ["bzip2", "dkms (>= 2.1.0.0)", "libxtables-dev (>= 1.4.3)", "make", "xtables-addons-dkms (>= 3.13)"]
        );
        assert_eq!(p.url, "http://mirror/debian/pool/main/w/west-chamber/west-chamber-dkms_1_all.deb");
        assert_eq!((p.sha256.as_str(), p.size), ("bb".repeat(32).as_str(), 20));
    }

    #[test]
    fn dkms_as_an_alternative_counts() {
        let l = list(&index(), &Filter { name: Some(Regex::new("^v4l2loopback").unwrap()), dkms_only: true });
        assert_eq!(names(&l), ["v4l2loopback-dkms"]);
        assert_eq!(l.packages[0].depends, ["dkms-provider | dkms (>= 2.1.0.0)"]);
    }
}
