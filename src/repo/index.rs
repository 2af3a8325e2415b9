//! Packages files (deb822 paragraphs) and the merged, searchable [`Index`].
//!
//! A suite's Packages file is 50-65 MB of text, so parsing is a single pass over lines that
//! looks only at the fields ckms needs, split across threads at paragraph boundaries. Lookups
//! go through index vectors sorted by name (binary search) instead of hash maps keyed by
//! owned strings, which would cost one allocation per package.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::OnceLock;

use super::version;
use super::{Op, Package, Relation, RepoError, SuiteInfo};

/// All packages of one or more suites, with every version kept (several suites may offer the
/// same name; older versions are needed when a versioned dependency rules out the newest).
#[derive(Debug, Default)]
pub struct Index {
    packages: Vec<Package>,
    /// Indices into `packages`: sorted by name, then version (highest first). Duplicates
    /// (same name, version and architecture in two suites) are left out.
    order: Vec<u32>,
    /// (provider package, position in its `provides`), sorted by the provided name; built on
    /// first use (sorting ~200k entries costs tens of ms that a warm load should not pay).
    provides: OnceLock<Vec<(u32, u32)>>,
    suites: Vec<SuiteInfo>,
    /// `candidates()` in name order, computed on first use.
    cands: OnceLock<Vec<u32>>,
}

impl Index {
    /// Parses one Packages file.
    pub fn parse(text: &str, mirror: &str, suite: &str) -> Result<Index, RepoError> {
        Ok(Index::build(parse_packages(text, mirror, suite)?, Vec::new()))
    }

    pub fn merge(indexes: Vec<Index>) -> Index {
        let mut packages = Vec::new();
        let mut suites = Vec::new();
        for ix in indexes {
            packages.extend(ix.packages);
            suites.extend(ix.suites);
        }
        Index::build(packages, suites)
    }

    pub(crate) fn build(packages: Vec<Package>, suites: Vec<SuiteInfo>) -> Index {
        // Sort (name, index) pairs rather than indices: the comparisons then touch only the
        // names, not the big Package structs. A stable sort profits from Packages files being
        // mostly in name order already; the index tie-break makes the result deterministic.
        let mut keyed: Vec<(&str, u32)> =
            packages.iter().enumerate().map(|(i, p)| (p.name.as_str(), i as u32)).collect();
        keyed.sort_by(|&(na, a), &(nb, b)| {
            na.cmp(nb).then_with(|| {
                let (pa, pb) = (&packages[a as usize], &packages[b as usize]);
                version::compare(&pb.version, &pa.version)
                    .then_with(|| pa.architecture.cmp(&pb.architecture))
                    // The earlier suite wins among duplicates.
                    .then(a.cmp(&b))
            })
        });
        let mut order: Vec<u32> = keyed.into_iter().map(|(_, i)| i).collect();
        order.dedup_by(|b, a| {
            let (pa, pb) = (&packages[*a as usize], &packages[*b as usize]);
            pa.name == pb.name
                && pa.architecture == pb.architecture
                && version::compare(&pa.version, &pb.version) == Ordering::Equal
        });
        Index { packages, order, provides: OnceLock::new(), suites, cands: OnceLock::new() }
    }

    /// Every version of `name`, highest first.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = &Package> {
        // Resolve the range first so that the iterator does not borrow `name`.
        let name_of = |i: &u32| self.packages[*i as usize].name.as_str();
        let start = self.order.partition_point(|i| name_of(i) < name);
        let end = start + self.order[start..].partition_point(|i| name_of(i) == name);
        self.order[start..end].iter().map(|&i| &self.packages[i as usize])
    }

    /// The highest version of `name` across suites.
    pub fn candidate(&self, name: &str) -> Option<&Package> {
        self.versions(name).next()
    }

    /// One package (the candidate) per name, in name order.
    pub fn candidates(&self) -> impl Iterator<Item = &Package> {
        let cands = self.cands.get_or_init(|| {
            let mut out: Vec<u32> = Vec::new();
            for &i in &self.order {
                let same =
                    out.last().is_some_and(|&l| self.packages[l as usize].name == self.packages[i as usize].name);
                if !same {
                    out.push(i);
                }
            }
            out
        });
        cands.iter().map(|&i| &self.packages[i as usize])
    }

    /// Packages whose Provides names `name`, with the matching Provides entry; ordered by
    /// provider name, then version (highest first).
    pub fn providers(&self, name: &str) -> impl Iterator<Item = (&Package, &Relation)> {
        let provides = self.provides.get_or_init(|| self.provides_index());
        let rel = |&(i, j): &(u32, u32)| {
            let p = &self.packages[i as usize];
            (p, &p.provides[j as usize])
        };
        let start = provides.partition_point(|e| rel(e).1.name.as_str() < name);
        let end = start + provides[start..].partition_point(|e| rel(e).1.name == name);
        provides[start..end].iter().map(rel)
    }

    fn provides_index(&self) -> Vec<(u32, u32)> {
        // Generated in `order` (provider name, then highest version first); a stable sort on
        // the provided name alone keeps that order within each provided name.
        let mut keyed: Vec<(&str, u32, u32)> = self
            .order
            .iter()
            .flat_map(|&i| {
                let p = &self.packages[i as usize];
                p.provides.iter().enumerate().map(move |(j, r)| (r.name.as_str(), i, j as u32))
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        keyed.into_iter().map(|(_, i, j)| (i, j)).collect()
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

/// Parses a Packages file, on several threads when it is big.
pub(crate) fn parse_packages(text: &str, mirror: &str, suite: &str) -> Result<Vec<Package>, RepoError> {
    const CHUNK: usize = 8 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if text.len() < CHUNK || threads < 2 {
        return parse_chunk(text, mirror, suite, 1);
    }
    // Cut at paragraph boundaries ("\n\n") near equal shares.
    let parts = threads.min(text.len() / CHUNK + 1);
    let mut chunks = Vec::with_capacity(parts);
    let mut start = 0;
    for k in 1..parts {
        let target = (text.len() * k / parts).max(start);
        let cut = match memchr::memmem::find(&text.as_bytes()[target..], b"\n\n") {
            Some(off) => target + off + 2,
            None => break,
        };
        chunks.push(start..cut);
        start = cut;
    }
    chunks.push(start..text.len());
    let bytes = text.as_bytes();
    let results: Vec<Result<Vec<Package>, RepoError>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|r| {
                let first_line = 1 + memchr::memchr_iter(b'\n', &bytes[..r.start]).count();
                let piece = &text[r.clone()];
                s.spawn(move || parse_chunk(piece, mirror, suite, first_line))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RepoError::Malformed { url: where_(mirror, suite), detail: "parser thread panicked".into() })
                })
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn where_(mirror: &str, suite: &str) -> String {
    format!("{}/dists/{suite} Packages", mirror.trim_end_matches('/'))
}

/// Which multi-line-capable field the previous line belonged to.
#[derive(Clone, Copy, PartialEq)]
enum Cur {
    Other,
    Depends,
    PreDepends,
    Provides,
}

#[derive(Default)]
struct Para<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    arch: Option<&'a str>,
    // Borrowed from the text unless a continuation line had to be joined.
    depends: Option<Cow<'a, str>>,
    pre_depends: Option<Cow<'a, str>>,
    provides: Option<Cow<'a, str>>,
    filename: Option<&'a str>,
    size: Option<&'a str>,
    sha256: Option<&'a str>,
    source: Option<&'a str>,
    essential: bool,
    line: usize,
}

fn parse_chunk(text: &str, mirror: &str, suite: &str, first_line: usize) -> Result<Vec<Package>, RepoError> {
    let mut out = Vec::with_capacity(text.len() / 900);
    let mut para = Para::default();
    let mut cur = Cur::Other;
    let mut started = false;
    let mut line_no = first_line;
    let bytes = text.as_bytes();
    let mut pos = 0;
    while pos <= bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |o| pos + o);
        let mut line = &text[pos..end];
        if line.ends_with('\r') {
            line = &line[..line.len() - 1];
        }
        pos = end + 1;
        // Blank (or whitespace-only) lines end a paragraph; checked cheaply, per line.
        let blank = match line.as_bytes().first() {
            None => true,
            Some(b' ' | b'\t') => line.trim().is_empty(),
            Some(_) => false,
        };
        if blank {
            if started {
                out.push(finish(std::mem::take(&mut para), mirror, suite)?);
                started = false;
            }
            cur = Cur::Other;
            line_no += 1;
            continue;
        }
        if !started {
            started = true;
            para.line = line_no;
        }
        line_no += 1;
        let first = line.as_bytes()[0];
        if first == b' ' || first == b'\t' {
            // Continuation line: only relation fields are worth joining.
            let target = match cur {
                Cur::Other => continue,
                Cur::Depends => &mut para.depends,
                Cur::PreDepends => &mut para.pre_depends,
                Cur::Provides => &mut para.provides,
            };
            if let Some(s) = target {
                let s = s.to_mut();
                s.push(' ');
                s.push_str(line.trim());
            }
            continue;
        }
        if first == b'#' {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line.as_bytes()) else {
            return Err(RepoError::Malformed {
                url: where_(mirror, suite),
                detail: format!("line {}: not a field: {line:?}", line_no - 1),
            });
        };
        let (field, value) = (&line[..colon], line[colon + 1..].trim());
        cur = Cur::Other;
        // Dispatch on length and first letter: most lines are fields ckms skips, and this
        // spares a string comparison for nearly all of them.
        match (field.len(), field.as_bytes().first().copied().unwrap_or(0)) {
            (7, b'P') if field == "Package" => para.name = Some(value),
            (7, b'V') if field == "Version" => para.version = Some(value),
            (12, b'A') if field == "Architecture" => para.arch = Some(value),
            (7, b'D') if field == "Depends" => {
                para.depends = Some(Cow::Borrowed(value));
                cur = Cur::Depends;
            }
            (11, b'P') if field == "Pre-Depends" => {
                para.pre_depends = Some(Cow::Borrowed(value));
                cur = Cur::PreDepends;
            }
            (8, b'P') if field == "Provides" => {
                para.provides = Some(Cow::Borrowed(value));
                cur = Cur::Provides;
            }
            (8, b'F') if field == "Filename" => para.filename = Some(value),
            (4, b'S') if field == "Size" => para.size = Some(value),
            (6, b'S') if field == "SHA256" => para.sha256 = Some(value),
            (6, b'S') if field == "Source" => para.source = Some(value),
            (9, b'E') if field == "Essential" => para.essential = value.eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    if started {
        out.push(finish(para, mirror, suite)?);
    }
    Ok(out)
}

fn finish<'a>(p: Para<'a>, mirror: &str, suite: &str) -> Result<Package, RepoError> {
    let bad = |detail: String| RepoError::Malformed {
        url: where_(mirror, suite),
        detail: format!("paragraph at line {}: {detail}", p.line),
    };
    let name = p.name.ok_or_else(|| bad("no Package field".into()))?;
    let need = |v: Option<&'a str>, f: &str| v.ok_or_else(|| bad(format!("package {name} has no {f} field")));
    let version = need(p.version, "Version")?;
    let filename = need(p.filename, "Filename")?;
    let sha256 = need(p.sha256, "SHA256")?;
    let size = need(p.size, "Size")?.parse::<u64>().map_err(|_| bad(format!("package {name}: bad Size")))?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("package {name}: bad SHA256 {sha256:?}")));
    }
    let rels = |s: &Option<Cow<'a, str>>, f: &str| -> Result<Vec<Vec<Relation>>, RepoError> {
        match s {
            Some(s) => parse_relations(s).map_err(|e| bad(format!("package {name}: {f}: {e}"))),
            None => Ok(Vec::new()),
        }
    };
    let mut depends = rels(&p.pre_depends, "Pre-Depends")?;
    depends.extend(rels(&p.depends, "Depends")?);
    let provides = rels(&p.provides, "Provides")?.into_iter().flatten().collect();
    Ok(Package {
        name: name.to_string(),
        version: version.to_string(),
        architecture: p.arch.unwrap_or("").to_string(),
        depends,
        provides,
        filename: filename.to_string(),
        size,
        sha256: sha256.to_ascii_lowercase(),
        // "Source: linux (6.1.192-2)" names the source package and, when it differs, its version.
        source: p.source.map(|s| s.split_whitespace().next().unwrap_or(s).to_string()),
        essential: p.essential,
        mirror: mirror.to_string(),
        suite: suite.to_string(),
    })
}

/// Parses a relation field: `a (>= 1) | b:any, c [amd64] <!nocheck>`.
pub fn parse_relations(s: &str) -> Result<Vec<Vec<Relation>>, String> {
    let mut out = Vec::new();
    for group in s.split(',') {
        if group.trim().is_empty() {
            continue;
        }
        let alts = group.split('|').map(parse_relation).collect::<Result<Vec<_>, _>>()?;
        out.push(alts);
    }
    Ok(out)
}

/// Parses one `name[:arch] [(op version)] [arch-restrictions] [<profiles>]`.
pub fn parse_relation(s: &str) -> Result<Relation, String> {
    let s = s.trim();
    let name_end = s.find(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<').unwrap_or(s.len());
    let (name_arch, mut rest) = (&s[..name_end], s[name_end..].trim_start());
    if name_arch.is_empty() {
        return Err(format!("empty package name in {s:?}"));
    }
    let (name, arch) = match name_arch.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (name_arch, None),
    };
    let mut constraint = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')').ok_or_else(|| format!("unclosed '(' in {s:?}"))?;
        let spec = inner[..close].trim();
        rest = inner[close + 1..].trim_start();
        let op_len = spec.find(|c: char| !matches!(c, '<' | '>' | '=')).unwrap_or(spec.len());
        let op = match &spec[..op_len] {
            "<<" => Op::Lt,
            // "<" and ">" are deprecated spellings of "<=" and ">=".
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            other => return Err(format!("unknown operator {other:?} in {s:?}")),
        };
        let v = spec[op_len..].trim();
        if v.is_empty() {
            return Err(format!("missing version in {s:?}"));
        }
        constraint = Some((op, v.to_string()));
    }
    // Architecture restrictions and build profiles only occur in source relations; binary
    // Packages do not carry them, so they are tolerated and ignored.
    if !(rest.is_empty() || rest.starts_with('[') || rest.starts_with('<')) {
        return Err(format!("unexpected {rest:?} in {s:?}"));
    }
    Ok(Relation { name: name.to_string(), arch, constraint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, c: Option<(Op, &str)>) -> Relation {
        Relation { name: name.into(), arch: None, constraint: c.map(|(o, v)| (o, v.into())) }
    }

    #[test]
    fn relations() {
        let r = parse_relations("libc6 (>= 2.34), gcc-12 | clang:any (<< 15~), foo:native, bar [amd64] <!nocheck>")
            .unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], vec![rel("libc6", Some((Op::Ge, "2.34")))]);
        assert_eq!(r[1][0], rel("gcc-12", None));
        assert_eq!(r[1][1].name, "clang");
        assert_eq!(r[1][1].arch.as_deref(), Some("any"));
        assert_eq!(r[1][1].constraint, Some((Op::Lt, "15~".into())));
        assert_eq!(r[2][0].arch.as_deref(), Some("native"));
        assert_eq!(r[3][0], rel("bar", None));
        assert_eq!(parse_relation("a(=1:2-3)").unwrap().constraint, Some((Op::Eq, "1:2-3".into())));
        assert_eq!(parse_relation("a (<1)").unwrap().constraint, Some((Op::Le, "1".into())));
        assert_eq!(parse_relation("a (>>  1 )").unwrap().constraint, Some((Op::Gt, "1".into())));
        assert!(parse_relation("a (~= 1)").is_err());
        assert!(parse_relation("a (>= 1").is_err());
        assert!(parse_relation("").is_err());
        assert_eq!(rel("x", Some((Op::Ge, "2"))).to_string(), "x (>= 2)");
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
        let gcc = ix.candidate("gcc-12").unwrap();
        assert_eq!(gcc.version, "12.2.0-14+deb12u1");
        assert_eq!(gcc.source.as_deref(), Some("gcc-12"));
        assert_eq!(gcc.depends.len(), 5);
        assert_eq!(gcc.depends[0][0].name, "dpkg");
        assert_eq!(gcc.depends[4][0], rel("binutils", Some((Op::Ge, "2.40"))));
        assert_eq!(gcc.provides.len(), 2);
        assert_eq!(gcc.size, 19417452);
        assert_eq!(gcc.sha256, "0a4f2d6e7a1dcf2f2d7e3c1f6b5a4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f");
        assert_eq!(gcc.url(), "http://mirror.invalid/debian/pool/main/g/gcc-12/gcc-12_12.2.0-14+deb12u1_amd64.deb");
        assert!(!gcc.essential);
        assert!(ix.candidate("dash").unwrap().essential);
        assert_eq!(ix.providers("c-compiler").next().unwrap().0.name, "gcc-12");
        assert!(ix.candidate("nope").is_none());
        let names: Vec<_> = ix.candidates().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dash", "gcc-12"]);
    }

    #[test]
    fn malformed_paragraph_names_package() {
        let err = Index::parse("Package: x\nVersion: 1\n", "http://m.invalid", "s").unwrap_err();
        assert!(err.to_string().contains("package x has no Filename"), "{err}");
        assert!(err.to_string().contains("http://m.invalid/dists/s"), "{err}");
    }

    #[test]
    fn big_input_splits_across_threads_same_result() {
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!(
                "Package: p{i}\nVersion: 1.{i}\nArchitecture: amd64\nDepends: p{} (>= 1), libc6\nDescription: filler filler filler filler filler filler filler filler filler\nFilename: pool/p{i}.deb\nSize: {i}\nSHA256: {}\n\n",
                i + 1,
                "ab".repeat(32)
            ));
        }
        let many = parse_packages(&text, "m", "s").unwrap();
        let one = parse_chunk(&text, "m", "s", 1).unwrap();
        assert_eq!(many.len(), 40_000);
        assert_eq!(many, one);
    }

    #[test]
    fn versions_and_merge() {
        let a = "Package: k\nVersion: 1.0\nArchitecture: all\nFilename: a\nSize: 1\nSHA256: ".to_string()
            + &"00".repeat(32)
            + "\n";
        let b = a.replace("1.0", "2.0~rc1");
        let dup = a.clone();
        let ix = Index::merge(vec![
            Index::parse(&a, "m", "s1").unwrap(),
            Index::parse(&b, "m", "s2").unwrap(),
            Index::parse(&dup, "m", "s3").unwrap(),
        ]);
        let v: Vec<_> = ix.versions("k").map(|p| (p.version.as_str(), p.suite.as_str())).collect();
        assert_eq!(v, [("2.0~rc1", "s2"), ("1.0", "s1")]);
    }
}
