//! The merged, searchable [`Index`] of one or more suites' Packages files.
//!
//! Packages are kept in the compact form [`super::packages`] parses them into, and handed out
//! as [`PackageRef`] views; an owned [`Package`] is made only for what a caller keeps (a
//! resolution's result). Lookups go through index vectors sorted by name (binary search)
//! instead of hash maps keyed by owned strings, which would cost one allocation per package.

use std::cmp::Ordering;
use std::sync::OnceLock;

use super::packages::{parse_stream, Entry, Field, Part};
use super::relation::{self, Rel};
use super::version;
use super::{Package, RepoError, SuiteInfo};

/// All packages of one or more suites, with every version kept (several suites may offer the
/// same name; older versions are needed when a versioned dependency rules out the newest).
#[derive(Debug, Default)]
pub struct Index {
    /// The parts' texts, and the origin (index into `origins`) of each.
    texts: Vec<(String, u32)>,
    entries: Vec<Entry>,
    /// (mirror, suite) each package came from.
    origins: Vec<(String, String)>,
    /// Indices into `entries`: sorted by name, then version (highest first). Duplicates
    /// (same name, version and architecture in two suites) are left out.
    order: Vec<u32>,
    /// (provider, offset and length of the provided name in the provider's part's text),
    /// sorted by the provided name; built on first use (sorting ~200k entries costs tens of
    /// ms that a warm load should not pay).
    provides: OnceLock<Vec<(u32, u32, u32)>>,
    suites: Vec<SuiteInfo>,
    /// `candidates()` in name order, computed on first use.
    cands: OnceLock<Vec<u32>>,
}

/// Collects parsed parts from several suites into one [`Index`].
#[derive(Default)]
pub(crate) struct IndexBuilder {
    ix: Index,
}

impl IndexBuilder {
    /// Adds the parts parsed from one Packages file of `mirror`'s `suite`.
    pub fn add(&mut self, mirror: &str, suite: &str, parts: Vec<Part>) {
        let origin = self.origin(mirror, suite);
        for part in parts {
            let n = self.ix.texts.len() as u32;
            self.ix.entries.extend(part.entries.into_iter().map(|e| Entry { part: n, ..e }));
            self.ix.texts.push((part.text, origin));
        }
    }

    /// Adds every package and suite of `ix`; its texts are moved, not copied.
    fn append(&mut self, ix: Index) {
        let first = self.ix.texts.len() as u32;
        let origins: Vec<u32> = ix.origins.iter().map(|(m, s)| self.origin(m, s)).collect();
        self.ix.texts.extend(ix.texts.into_iter().map(|(t, o)| (t, origins[o as usize])));
        self.ix.entries.extend(ix.entries.into_iter().map(|e| Entry { part: first + e.part, ..e }));
        self.ix.suites.extend(ix.suites);
    }

    fn origin(&mut self, mirror: &str, suite: &str) -> u32 {
        let found = self.ix.origins.iter().position(|(m, s)| m == mirror && s == suite);
        found.unwrap_or_else(|| {
            self.ix.origins.push((mirror.to_string(), suite.to_string()));
            self.ix.origins.len() - 1
        }) as u32
    }

    pub fn suite(&mut self, info: SuiteInfo) {
        self.ix.suites.push(info);
    }

    pub fn build(self) -> Index {
        let mut ix = self.ix;
        ix.entries.shrink_to_fit();
        ix.order = ix.sorted();
        ix
    }
}

impl Index {
    /// Parses one Packages file.
    pub fn parse(text: &str, mirror: &str, suite: &str) -> Result<Index, RepoError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let parts = parse_stream(text.as_bytes(), mirror, suite, threads)
            .map_err(|e| RepoError::Malformed { url: mirror.to_string(), detail: e.to_string() })?
            .parts?;
        let mut b = IndexBuilder::default();
        b.add(mirror, suite, parts);
        Ok(b.build())
    }

    pub fn merge(indexes: Vec<Index>) -> Index {
        let mut b = IndexBuilder::default();
        for ix in indexes {
            b.append(ix);
        }
        b.build()
    }

    /// `order`: entries sorted by name, then version (highest first), without duplicates.
    fn sorted(&self) -> Vec<u32> {
        // Sort (name, index) pairs rather than indices: the comparisons then touch only the
        // names. A stable sort profits from Packages files being mostly in name order already;
        // the index tie-break makes the result deterministic.
        let mut keyed: Vec<(&str, u32)> = (0..self.entries.len() as u32).map(|i| (self.get(i).name(), i)).collect();
        keyed.sort_by(|&(na, a), &(nb, b)| {
            na.cmp(nb).then_with(|| {
                let (pa, pb) = (self.get(a), self.get(b));
                version::compare(pb.version(), pa.version())
                    .then_with(|| pa.architecture().cmp(pb.architecture()))
                    // The earlier suite wins among duplicates.
                    .then(a.cmp(&b))
            })
        });
        let mut order: Vec<u32> = keyed.into_iter().map(|(_, i)| i).collect();
        order.dedup_by(|b, a| {
            let (pa, pb) = (self.get(*a), self.get(*b));
            pa.name() == pb.name()
                && pa.architecture() == pb.architecture()
                && version::compare(pa.version(), pb.version()) == Ordering::Equal
        });
        order
    }

    fn get(&self, id: u32) -> PackageRef<'_> {
        PackageRef { ix: self, id }
    }

    /// Every version of `name`, highest first.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = PackageRef<'_>> {
        // Resolve the range first so that the iterator does not borrow `name`.
        let name_of = |i: &u32| self.get(*i).name();
        let start = self.order.partition_point(|i| name_of(i) < name);
        let end = start + self.order[start..].partition_point(|i| name_of(i) == name);
        self.order[start..end].iter().map(|&i| self.get(i))
    }

    /// The highest version of `name` across suites.
    pub fn candidate(&self, name: &str) -> Option<PackageRef<'_>> {
        self.versions(name).next()
    }

    /// One package (the candidate) per name, in name order.
    pub fn candidates(&self) -> impl Iterator<Item = PackageRef<'_>> {
        let cands = self.cands.get_or_init(|| {
            let mut out: Vec<u32> = Vec::new();
            for &i in &self.order {
                if out.last().is_none_or(|&l| self.get(l).name() != self.get(i).name()) {
                    out.push(i);
                }
            }
            out
        });
        cands.iter().map(|&i| self.get(i))
    }

    /// Packages whose Provides names `name`, ordered by provider name, then version (highest
    /// first).
    pub fn providers(&self, name: &str) -> impl Iterator<Item = PackageRef<'_>> {
        let provides = self.provides.get_or_init(|| self.provides_index());
        let provided = |&(i, at, len): &(u32, u32, u32)| {
            let text = self.text_of(i);
            &text[at as usize..(at + len) as usize]
        };
        let start = provides.partition_point(|e| provided(e) < name);
        let end = start + provides[start..].partition_point(|e| provided(e) == name);
        provides[start..end].iter().map(|&(i, _, _)| self.get(i))
    }

    fn provides_index(&self) -> Vec<(u32, u32, u32)> {
        // Generated in `order` (provider name, then highest version first); a stable sort on
        // the provided name alone keeps that order within each provided name.
        let mut keyed: Vec<(&str, u32, u32, u32)> = self
            .order
            .iter()
            .flat_map(|&i| {
                let base = self.text_of(i).as_ptr() as usize;
                self.get(i)
                    .provides()
                    .map(move |r| (r.name, i, (r.name.as_ptr() as usize - base) as u32, r.name.len() as u32))
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        keyed.into_iter().map(|(_, i, at, len)| (i, at, len)).collect()
    }

    fn text_of(&self, id: u32) -> &str {
        &self.texts[self.entries[id as usize].part as usize].0
    }

    pub fn suites(&self) -> &[SuiteInfo] {
        &self.suites
    }

    /// Number of distinct package versions.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// One package of an [`Index`], read in place.
#[derive(Clone, Copy)]
pub struct PackageRef<'a> {
    ix: &'a Index,
    id: u32,
}

impl<'a> PackageRef<'a> {
    fn entry(&self) -> &'a Entry {
        &self.ix.entries[self.id as usize]
    }

    fn field(&self, f: Field) -> &'a str {
        self.entry().field(self.ix.text_of(self.id), f)
    }

    fn origin(&self) -> &'a (String, String) {
        let part = self.entry().part as usize;
        &self.ix.origins[self.ix.texts[part].1 as usize]
    }

    pub fn name(&self) -> &'a str {
        self.field(Field::Name)
    }

    pub fn version(&self) -> &'a str {
        self.field(Field::Version)
    }

    pub fn architecture(&self) -> &'a str {
        self.field(Field::Arch)
    }

    pub fn filename(&self) -> &'a str {
        self.field(Field::Filename)
    }

    pub fn size(&self) -> u64 {
        self.entry().size
    }

    /// Lowercase hex.
    pub fn sha256(&self) -> String {
        hex::encode(self.entry().sha256)
    }

    /// The source package's name, when the paragraph names one.
    pub fn source(&self) -> Option<&'a str> {
        self.entry().has_source.then(|| self.field(Field::Source))
    }

    pub fn essential(&self) -> bool {
        self.entry().essential
    }

    pub fn multi_arch_same(&self) -> bool {
        self.entry().multi_arch_same
    }

    pub fn mirror(&self) -> &'a str {
        &self.origin().0
    }

    pub fn suite(&self) -> &'a str {
        &self.origin().1
    }

    /// Pre-Depends then Depends, one Vec of alternatives (`a | b`) per group.
    pub fn depends(&self) -> impl Iterator<Item = Vec<Rel<'a>>> {
        // Every relation was checked when the index was built: none is dropped here.
        [self.field(Field::PreDepends), self.field(Field::Depends)]
            .into_iter()
            .flat_map(relation::groups)
            .map(|g| g.filter_map(Result::ok).collect())
    }

    pub fn provides(&self) -> impl Iterator<Item = Rel<'a>> {
        relation::groups(self.field(Field::Provides)).flatten().filter_map(Result::ok)
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.mirror().trim_end_matches('/'), self.filename())
    }

    /// The owned form, for keeping beyond the index.
    pub fn to_package(&self) -> Package {
        Package {
            name: self.name().to_string(),
            version: self.version().to_string(),
            architecture: self.architecture().to_string(),
            depends: self.depends().map(|g| g.iter().map(Rel::to_relation).collect()).collect(),
            provides: self.provides().map(|r| r.to_relation()).collect(),
            filename: self.filename().to_string(),
            size: self.size(),
            sha256: self.sha256(),
            source: self.source().map(str::to_string),
            essential: self.essential(),
            multi_arch_same: self.multi_arch_same(),
            mirror: self.mirror().to_string(),
            suite: self.suite().to_string(),
        }
    }
}

impl From<PackageRef<'_>> for Package {
    fn from(p: PackageRef<'_>) -> Package {
        p.to_package()
    }
}

/// The same package of the same index.
impl PartialEq for PackageRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.ix, other.ix) && self.id == other.id
    }
}

impl std::fmt::Debug for PackageRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.name(), self.version(), self.suite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Op, Relation};

    fn rel(name: &str, c: Option<(Op, &str)>) -> Relation {
        Relation { name: name.into(), arch: None, constraint: c.map(|(o, v)| (o, v.into())) }
    }

    const SAMPLE: &str = "\
Package: gcc-12
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14+deb12u1
Architecture: amd64
Maintainer: GCC Maintainers <gcc@example.invalid>
Installed-Size: 70
Pre-Depends: dpkg (>= 1.17)
Depends: cpp-12 (= 12.2.0-14+deb12u1), gcc-12-base (= 12.2.0-14+deb12u1),
 libcc1-0 (>= 12.2.0-14+deb12u1), binutils (>= 2.40)
Recommends: libc6-dev (>= 2.13-5)
Provides: c-compiler, gcc-x86-64-linux-gnu (= 12.2.0-14+deb12u1)
Description: GNU C compiler
Description-md5: 3d6ba0bf9e2d8f6e9a3f2fa7f9f1b0a5
Filename: pool/main/g/gcc-12/gcc-12_12.2.0-14+deb12u1_amd64.deb
Size: 19417452
SHA256: 0A4F2D6E7A1DCF2F2D7E3C1F6B5A4E3D2C1B0A9F8E7D6C5B4A3F2E1D0C9B8A7F

Package: dash
Essential: yes
Version: 0.5.12-2
Architecture: amd64
Filename: pool/main/d/dash/dash_0.5.12-2_amd64.deb
Size: 93812
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
";

    #[test]
    fn packages() {
        let ix = Index::parse(SAMPLE, "http://mirror.invalid/debian/", "bookworm").unwrap();
        assert_eq!(ix.len(), 2);
        let gcc = ix.candidate("gcc-12").unwrap().to_package();
        assert_eq!(gcc.version, "12.2.0-14+deb12u1");
        assert_eq!(gcc.source.as_deref(), Some("gcc-12"));
        assert_eq!(gcc.depends.len(), 5);
        assert_eq!(gcc.depends[0][0].name, "dpkg");
        assert_eq!(gcc.depends[4][0], rel("binutils", Some((Op::Ge, "2.40"))));
        assert_eq!(gcc.provides.len(), 2);
        assert_eq!(gcc.provides[1], rel("gcc-x86-64-linux-gnu", Some((Op::Eq, "12.2.0-14+deb12u1"))));
        assert_eq!(gcc.size, 19417452);
        assert_eq!(gcc.sha256, "0a4f2d6e7a1dcf2f2d7e3c1f6b5a4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f");
        assert_eq!(gcc.url(), "http://mirror.invalid/debian/pool/main/g/gcc-12/gcc-12_12.2.0-14+deb12u1_amd64.deb");
        assert_eq!((gcc.mirror.as_str(), gcc.suite.as_str()), ("http://mirror.invalid/debian/", "bookworm"));
        assert!(!gcc.essential);
        let dash = ix.candidate("dash").unwrap();
        assert!(dash.essential());
        assert_eq!((dash.source(), dash.depends().count(), dash.provides().count()), (None, 0, 0));
        assert_eq!(ix.providers("c-compiler").next().unwrap().name(), "gcc-12");
        assert!(ix.providers("gcc-12").next().is_none());
        assert!(ix.candidate("nope").is_none());
        let names: Vec<_> = ix.candidates().map(|p| p.name()).collect();
        assert_eq!(names, ["dash", "gcc-12"]);
    }

    #[test]
    fn malformed_paragraph_names_package() {
        let err = Index::parse("Package: x\nVersion: 1\n", "http://m.invalid", "s").unwrap_err();
        assert!(err.to_string().contains("package x has no Filename"), "{err}");
        assert!(err.to_string().contains("http://m.invalid/dists/s"), "{err}");
        let bad =
            format!("Package: x\nVersion: 1\nFilename: f\nSize: 1\nSHA256: {}\nDepends: a (~ 1)\n", "0".repeat(64));
        let err = Index::parse(&bad, "m", "s").unwrap_err();
        assert!(err.to_string().contains("package x: Depends: unknown operator"), "{err}");
        let err = Index::parse(&bad.replace("Depends: a (~ 1)", "Size: big"), "m", "s").unwrap_err();
        assert!(err.to_string().contains("package x: bad Size"), "{err}");
        let err = Index::parse(&bad.replace(&"0".repeat(64), "00"), "m", "s").unwrap_err();
        assert!(err.to_string().contains("package x: bad SHA256"), "{err}");
    }

    #[test]
    fn versions_and_merge() {
        let a = "Package: k\nVersion: 1.0\nArchitecture: all\nFilename: a\nSize: 1\nSHA256: ".to_string()
            + &"00".repeat(32)
            + "\nProvides: virt\n";
        let b = a.replace("1.0", "2.0~rc1");
        let dup = a.clone();
        let ix = Index::merge(vec![
            Index::parse(&a, "m", "s1").unwrap(),
            Index::merge(vec![Index::parse(&b, "m2", "s2").unwrap(), Index::parse(&dup, "m", "s3").unwrap()]),
        ]);
        let v: Vec<_> = ix.versions("k").map(|p| (p.version(), p.suite(), p.mirror())).collect();
        assert_eq!(v, [("2.0~rc1", "s2", "m2"), ("1.0", "s1", "m")]);
        let provs: Vec<_> = ix.providers("virt").map(|p| p.version()).collect();
        assert_eq!(provs, ["2.0~rc1", "1.0"]);
        assert_eq!(ix.candidate("k").unwrap(), ix.versions("k").next().unwrap());
        assert_ne!(ix.candidate("k").unwrap(), ix.versions("k").nth(1).unwrap());
    }
}
