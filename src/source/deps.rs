//! A module package's Depends and Pre-Depends as a builder image sees them: what apt would
//! install on a dkms host, less what the image already is (dkms, the compiler, the kernel's
//! packages: the profile's `[packages] provided`) and less other modules' sources (`*-dkms`,
//! the profile's `[packages] module_sources`), which are shown to the build under /usr/src,
//! never installed into the image.

use crate::profile::Profile;
use crate::repo::{Index, Relation};

/// What a package's dependencies mean for its builds on one profile's kernels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildDeps {
    /// Roots for the image's `extra` layer (`name[:arch] [(op version)]`), first satisfiable
    /// alternative of each group, as apt picks it.
    pub packages: Vec<String>,
    /// Other module packages it depends on: module sources.
    pub sources: Vec<String>,
    /// Groups the profile's repository cannot satisfy, left out (as written).
    pub unavailable: Vec<String>,
}

/// Sorts `groups` (from [`super::Origin::relations`]) for a build on `profile`, whose repository
/// is `index`.
pub fn build_deps(groups: &[Vec<Relation>], profile: &Profile, index: &Index) -> BuildDeps {
    let packages = &profile.packages;
    let matches = |patterns: &[regex::Regex], name: &str| patterns.iter().any(|p| p.is_match(name));
    let mut out = BuildDeps::default();
    for group in groups {
        if let Some(source) = group.iter().find(|r| matches(&packages.module_sources, &r.name)) {
            out.sources.push(source.name.clone());
            continue;
        }
        let in_image = |r: &Relation| {
            matches(&packages.provided, &r.name)
                || matches(&packages.exclude, &r.name)
                || profile.is_kernel_package(&r.name)
        };
        if group.iter().any(in_image) {
            continue;
        }
        let installable = |r: &&Relation| index.resolve(&[r.to_string()], &packages.exclude).is_ok();
        match group.iter().find(installable) {
            Some(r) => {
                let root = r.to_string();
                if !out.packages.contains(&root) {
                    out.packages.push(root);
                }
            }
            None => out.unavailable.push(group.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sha256_hex;
    use crate::profile::Catalog;
    use crate::repo::relation::parse_relations;

    fn index() -> Index {
        let mut text = String::new();
        for (name, version, provides) in [
            ("bzip2", "1.0.8", ""),
            ("libxtables-dev", "1.8.9", ""),
            ("perl", "5.36", ""),
            ("lsb-base", "11.6", ""),
            ("sysvinit-utils", "3.06-4", "lsb-base (= 11.1.0)"),
            ("gcc", "12.2", ""),
            ("pkg-config", "1.8", ""),
        ] {
            let provides = if provides.is_empty() { String::new() } else { format!("Provides: {provides}\n") };
            text += &format!(
                "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{provides}Filename: pool/{name}.deb\nSize: 1\nSHA256: {}\n\n",
                sha256_hex(name.as_bytes())
            );
        }
        Index::parse(&text, "http://mirror.test/debian", "bookworm").unwrap()
    }

    fn deps(field: &str) -> BuildDeps {
        let catalog = Catalog::load(&[]).unwrap();
        let profile = catalog.profile("debian-bookworm").unwrap();
        let groups = parse_relations(field).unwrap();
        build_deps(&groups, profile, &index())
    }

    #[test]
    fn what_the_real_packages_declare() {
        // west-chamber-dkms
        let d = deps("bzip2, dkms, libxtables-dev, make, xtables-addons-dkms (>= 3.13)");
        assert_eq!(d.packages, ["bzip2", "libxtables-dev"]);
        assert_eq!(d.sources, ["xtables-addons-dkms"]);
        // openafs-modules-dkms: perl:any keeps its qualifier (any architecture will do)
        assert_eq!(deps("dkms (>= 2.1.0.0), perl:any, libc6-dev").packages, ["perl:any"]);
        // dahdi-dkms: the compiler and make are the image's own; Debian's gcc is not wanted
        let d = deps("make, libc6-dev, dpkg-dev, gcc, gawk");
        assert_eq!(d.packages, Vec::<String>::new());
        assert_eq!(d.unavailable, ["dpkg-dev", "gawk"], "not in this small index");
        // rtpengine-kernel-dkms: the first alternative that is installable
        assert_eq!(deps("sysvinit-utils (>= 3.05-4~) | lsb-base (>= 3.0-6)").packages, ["sysvinit-utils (>= 3.05-4~)"]);
        assert_eq!(deps("sysvinit-utils (>= 4) | lsb-base (>= 3.0-6)").packages, ["lsb-base (>= 3.0-6)"]);
        // kernel packages are the image's
        assert!(deps("linux-headers-amd64 | linux-headers-generic, linux-image-amd64").packages.is_empty());
    }
}
