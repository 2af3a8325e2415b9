//! Dependency closure over Depends + Pre-Depends.
//!
//! Breadth-first from the roots; each OR-group is satisfied by, in order: an alternative
//! already selected, the first alternative a real package satisfies (its highest version
//! that meets the constraint), the first alternative a provider satisfies (lowest provider
//! name). A package is selected in one version only: when a later constraint rules out the
//! version already chosen, the name is pinned to everything asked of it so far and the
//! closure starts again, so older versions (from other suites) get their chance.

use std::collections::{HashMap, VecDeque};

use regex::Regex;

use super::relation::{parse_rel, Rel};
use super::version::satisfies;
use super::{Index, Op, Package, PackageRef, RepoError};

/// Constraints asked of one name.
type Constraints<'a> = Vec<(Op, &'a str)>;
type Pins<'a> = HashMap<&'a str, Constraints<'a>>;

/// Upper bound on restarts; each restart adds a constraint, so this is only a safety net.
const MAX_ROUNDS: usize = 1000;

struct Sel<'a> {
    pkg: PackageRef<'a>,
    parent: Option<&'a str>,
    asked: Constraints<'a>,
}

enum Round<'a> {
    Done(Vec<PackageRef<'a>>),
    Repin(&'a str, Constraints<'a>),
}

fn meets(version: &str, cs: &[(Op, &str)]) -> bool {
    cs.iter().all(|(op, v)| satisfies(version, op, v))
}

fn rel_ok(version: &str, r: &Rel) -> bool {
    r.constraint.is_none_or(|(op, v)| satisfies(version, &op, v))
}

/// Does `p`'s Provides satisfy `r`? A versioned dependency needs a versioned Provides.
fn provides_ok(p: PackageRef, r: &Rel) -> bool {
    p.provides().any(|pr| {
        pr.name == r.name
            && match (r.constraint, pr.constraint) {
                (None, _) => true,
                (Some((op, v)), Some((Op::Eq, pv))) => satisfies(pv, &op, v),
                (Some(_), _) => false,
            }
    })
}

impl Index {
    /// The closure of `roots` (package names, optionally with a constraint such as
    /// `foo (= 1.2)`), sorted by name. Alternatives whose name matches an `exclude` pattern are
    /// skipped, and groups left empty dropped.
    pub fn resolve(&self, roots: &[String], exclude: &[Regex]) -> Result<Vec<Package>, RepoError> {
        let roots = roots
            .iter()
            .map(|r| {
                parse_rel(r)
                    .map_err(|e| RepoError::NoSuchPackage { name: format!("{r:?} ({e})"), suites: self.suite_names() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pins: Pins = HashMap::new();
        for _ in 0..MAX_ROUNDS {
            match self.round(&roots, exclude, &pins)? {
                Round::Done(mut v) => {
                    v.sort_by(|a, b| a.name().cmp(b.name()));
                    return Ok(v.into_iter().map(Package::from).collect());
                }
                Round::Repin(name, cs) => {
                    pins.insert(name, cs);
                }
            }
        }
        Err(RepoError::Unresolvable {
            chain: roots.iter().map(|r| r.name).collect::<Vec<_>>().join(", "),
            relation: "a consistent set of versions (gave up after too many retries)".into(),
        })
    }

    fn suite_names(&self) -> String {
        if self.suites().is_empty() {
            return "(index)".into();
        }
        self.suites().iter().map(|s| s.suite.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Highest version of `r.name` meeting `r` and the pins.
    fn real<'a>(&'a self, r: &Rel, pins: &Pins) -> Option<PackageRef<'a>> {
        let pin = pins.get(r.name).map_or(&[][..], |v| &v[..]);
        self.versions(r.name).find(|p| rel_ok(p.version(), r) && meets(p.version(), pin))
    }

    fn provider<'a>(&'a self, r: &Rel, exclude: &[Regex], pins: &Pins) -> Option<PackageRef<'a>> {
        self.providers(r.name).find(|p| {
            !excluded(p.name(), exclude)
                && provides_ok(*p, r)
                && pins.get(p.name()).is_none_or(|cs| meets(p.version(), cs))
        })
    }

    fn round<'a>(&'a self, roots: &[Rel<'a>], exclude: &[Regex], pins: &Pins<'a>) -> Result<Round<'a>, RepoError> {
        let mut sel: HashMap<&'a str, Sel<'a>> = HashMap::new();
        let mut queue: VecDeque<PackageRef<'a>> = VecDeque::new();
        let chain = |sel: &HashMap<&'a str, Sel<'a>>, from: &'a str| {
            let mut names = vec![from];
            let mut cur = from;
            while let Some(parent) = sel.get(cur).and_then(|s| s.parent) {
                if names.contains(&parent) {
                    break;
                }
                names.push(parent);
                cur = parent;
            }
            names.reverse();
            names.join(" -> ")
        };

        for root in roots {
            if let Some(s) = sel.get_mut(root.name) {
                if rel_ok(s.pkg.version(), root) {
                    continue;
                }
            }
            let pkg = self.real(root, pins).or_else(|| self.provider(root, &[], pins));
            let Some(pkg) = pkg else {
                if self.candidate(root.name).is_some() {
                    return Err(RepoError::Unresolvable { chain: root.name.to_string(), relation: root.to_string() });
                }
                return Err(RepoError::NoSuchPackage { name: root.to_string(), suites: self.suite_names() });
            };
            let asked = root.constraint.into_iter().collect();
            if sel.insert(pkg.name(), Sel { pkg, parent: None, asked }).is_none() {
                queue.push_back(pkg);
            }
        }

        while let Some(pkg) = queue.pop_front() {
            'group: for group in pkg.depends() {
                let alts: Vec<Rel<'a>> = group.into_iter().filter(|r| !excluded(r.name, exclude)).collect();
                if alts.is_empty() {
                    continue;
                }
                // 1. Already selected, by name or through its Provides.
                for r in &alts {
                    if let Some(s) = sel.get_mut(r.name) {
                        if rel_ok(s.pkg.version(), r) {
                            s.asked.extend(r.constraint);
                            continue 'group;
                        }
                    }
                }
                for r in &alts {
                    if self
                        .providers(r.name)
                        .any(|p| sel.get(p.name()).is_some_and(|s| s.pkg == p) && provides_ok(p, r))
                    {
                        continue 'group;
                    }
                }
                // 2. A real package; a name already selected in a version this relation rules out
                //    is re-pinned when some version meets every constraint asked of it.
                for r in &alts {
                    if let Some(s) = sel.get(r.name) {
                        let mut all = s.asked.clone();
                        all.extend(r.constraint);
                        if let Some(p) = pins.get(r.name) {
                            all.extend(p.iter().copied());
                        }
                        all.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
                        all.dedup();
                        if self.versions(r.name).any(|p| meets(p.version(), &all)) {
                            return Ok(Round::Repin(r.name, all));
                        }
                        continue;
                    }
                    if let Some(p) = self.real(r, pins) {
                        let asked = r.constraint.into_iter().collect();
                        sel.insert(p.name(), Sel { pkg: p, parent: Some(pkg.name()), asked });
                        queue.push_back(p);
                        continue 'group;
                    }
                }
                // 3. A provider: lowest name that is not excluded.
                for r in &alts {
                    if let Some(p) = self.provider(r, exclude, pins) {
                        if sel.contains_key(p.name()) {
                            // Selected in another version that does not provide it.
                            continue;
                        }
                        sel.insert(p.name(), Sel { pkg: p, parent: Some(pkg.name()), asked: Vec::new() });
                        queue.push_back(p);
                        continue 'group;
                    }
                }
                let relation = alts.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" | ");
                let mut detail = String::new();
                for r in &alts {
                    if let Some(s) = sel.get(r.name) {
                        detail.push_str(&format!(
                            " ({} {} already selected via {})",
                            r.name,
                            s.pkg.version(),
                            chain(&sel, s.pkg.name())
                        ));
                    }
                }
                return Err(RepoError::Unresolvable { chain: chain(&sel, pkg.name()), relation: relation + &detail });
            }
        }
        Ok(Round::Done(sel.into_values().map(|s| s.pkg).collect()))
    }
}

fn excluded(name: &str, exclude: &[Regex]) -> bool {
    exclude.iter().any(|re| re.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};

    /// Builds an index from `(name, version, depends, provides)` rows in the given suite.
    fn index(suite: &str, rows: &[(&str, &str, &str, &str)]) -> Index {
        let mut text = String::new();
        for (name, version, depends, provides) in rows {
            text.push_str(&format!("Package: {name}\nVersion: {version}\nArchitecture: amd64\n"));
            if !depends.is_empty() {
                text.push_str(&format!("Depends: {depends}\n"));
            }
            if !provides.is_empty() {
                text.push_str(&format!("Provides: {provides}\n"));
            }
            text.push_str(&format!("Filename: pool/{name}_{version}.deb\nSize: 1\nSHA256: {}\n\n", "0".repeat(64)));
        }
        Index::parse(&text, "http://m.invalid/debian", suite).unwrap()
    }

    fn names(v: &[Package]) -> Vec<String> {
        v.iter().map(|p| format!("{}={}", p.name, p.version)).collect()
    }

    fn roots(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn closure_alternatives_and_cycles() {
        let ix = index(
            "s",
            &[
                ("top", "1", "a, b | c, missing | c", ""),
                ("a", "1", "top", ""), // cycle back to the root
                ("b", "1", "a", ""),
                ("c", "1", "", ""),
                ("unused", "1", "", ""),
            ],
        );
        let got = ix.resolve(&roots(&["top"]), &[]).unwrap();
        assert_eq!(names(&got), ["a=1", "b=1", "c=1", "top=1"]);
    }

    #[test]
    fn already_selected_alternative_is_preferred() {
        let ix = index("s", &[("top", "1", "c, b | c", ""), ("b", "1", "", ""), ("c", "1", "", "")]);
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &[]).unwrap()), ["c=1", "top=1"]);
    }

    #[test]
    fn provides_lowest_name_and_versioned() {
        let ix = index(
            "s",
            &[
                ("top", "1", "mta, cc (>= 2)", ""),
                ("zmail", "1", "", "mta"),
                ("amail", "1", "", "mta"),
                ("old-cc", "1", "", "cc (= 1)"),
                ("new-cc", "1", "", "cc (= 3)"),
                ("plain-cc", "1", "", "cc"),
            ],
        );
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &[]).unwrap()), ["amail=1", "new-cc=1", "top=1"]);
        // An excluded provider is not picked.
        let ex = [Regex::new("^amail$").unwrap()];
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &ex).unwrap()), ["new-cc=1", "top=1", "zmail=1"]);
    }

    #[test]
    fn selected_provider_is_preferred() {
        let ix = index("s", &[("top", "1", "zmail, mta", ""), ("zmail", "1", "", "mta"), ("amail", "1", "", "mta")]);
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &[]).unwrap()), ["top=1", "zmail=1"]);
    }

    #[test]
    fn excludes_skip_alternatives_and_drop_groups() {
        let ix = index(
            "s",
            &[
                (
                    "linux-headers-k",
                    "1",
                    "linux-image-k (= 1) | linux-image-k-unsigned (= 1), linux-base, kbuild | linux-image-k",
                    "",
                ),
                ("linux-image-k", "1", "", ""),
                ("linux-image-k-unsigned", "1", "", ""),
                ("linux-base", "1", "", ""),
                ("kbuild", "1", "", ""),
            ],
        );
        let ex = [Regex::new("^linux-image-").unwrap(), Regex::new("^linux-base$").unwrap()];
        assert_eq!(names(&ix.resolve(&roots(&["linux-headers-k"]), &ex).unwrap()), ["kbuild=1", "linux-headers-k=1"]);
    }

    #[test]
    fn versioned_constraint_falls_back_to_older_suite() {
        let main = index("bookworm", &[("lib", "1.0", "", ""), ("top", "1", "lib (<< 2)", "")]);
        let sec = index("bookworm-security", &[("lib", "2.0", "", "")]);
        let ix = Index::merge(vec![main, sec]);
        assert_eq!(ix.candidate("lib").unwrap().version(), "2.0");
        let got = ix.resolve(&roots(&["top"]), &[]).unwrap();
        assert_eq!(names(&got), ["lib=1.0", "top=1"]);
        assert_eq!(got[0].suite, "bookworm");
    }

    #[test]
    fn later_constraint_repins_earlier_choice() {
        // `a` takes lib unversioned first (gets 2.0); `b` then needs lib (= 1.0).
        let ix = Index::merge(vec![
            index(
                "s1",
                &[
                    ("top", "1", "a, b", ""),
                    ("a", "1", "lib", ""),
                    ("b", "1", "lib (= 1.0)", ""),
                    ("lib", "1.0", "", ""),
                ],
            ),
            index("s2", &[("lib", "2.0", "", "")]),
        ]);
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &[]).unwrap()), ["a=1", "b=1", "lib=1.0", "top=1"]);
    }

    #[test]
    fn unsatisfiable_names_the_chain() {
        let ix = index(
            "s",
            &[("linux-headers-x", "1", "gcc-14", ""), ("gcc-14", "1", "foo (>= 2)", ""), ("foo", "1", "", "")],
        );
        let err = ix.resolve(&roots(&["linux-headers-x"]), &[]).unwrap_err();
        assert_eq!(err.exit_code(), code::UNRESOLVABLE);
        assert_eq!(err.to_string(), "linux-headers-x -> gcc-14: no package satisfies foo (>= 2)");
        assert!(err.hint().is_some());
    }

    #[test]
    fn conflicting_versions_are_unresolvable() {
        let ix = index(
            "s",
            &[
                ("top", "1", "a, b", ""),
                ("a", "1", "lib (>= 2)", ""),
                ("b", "1", "lib (<< 2)", ""),
                ("lib", "1", "", ""),
                ("lib", "2", "", ""),
            ],
        );
        let err = ix.resolve(&roots(&["top"]), &[]).unwrap_err();
        assert!(err.to_string().starts_with("top -> b: no package satisfies lib (<< 2)"), "{err}");
    }

    #[test]
    fn missing_root_and_essential() {
        let ix = index("s", &[("top", "1", "", "")]);
        let err = ix.resolve(&roots(&["nope"]), &[]).unwrap_err();
        assert_eq!(err.exit_code(), code::UNRESOLVABLE);
        assert!(err.to_string().contains("nope"));
        // Essential packages are not pulled in unless something depends on them.
        let text = format!(
            "Package: dash\nEssential: yes\nVersion: 1\nArchitecture: amd64\nFilename: d\nSize: 1\nSHA256: {}\n",
            "0".repeat(64)
        );
        let ix = Index::merge(vec![ix, Index::parse(&text, "m", "s").unwrap()]);
        assert_eq!(names(&ix.resolve(&roots(&["top"]), &[]).unwrap()), ["top=1"]);
        // A root with a version constraint.
        let ix = Index::merge(vec![index("a", &[("k", "1", "", "")]), index("b", &[("k", "2", "", "")])]);
        assert_eq!(names(&ix.resolve(&roots(&["k (= 1)"]), &[]).unwrap()), ["k=1"]);
    }
}
