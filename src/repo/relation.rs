//! Relation fields (`Depends`, `Pre-Depends`, `Provides`): `a (>= 1) | b:any, c`.
//!
//! The index keeps these fields as text and parses them when a package is looked at, into
//! [`Rel`]s that borrow from that text: a resolution touches a few hundred packages, while
//! owned relations for every package of a suite would cost several allocations each.

use super::{Op, Relation};

/// A relation borrowed from the text it was parsed from; [`Relation`] is its owned form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rel<'a> {
    pub name: &'a str,
    pub arch: Option<&'a str>,
    pub constraint: Option<(Op, &'a str)>,
}

impl Rel<'_> {
    pub fn to_relation(&self) -> Relation {
        Relation {
            name: self.name.to_string(),
            arch: self.arch.map(str::to_string),
            constraint: self.constraint.map(|(op, v)| (op, v.to_string())),
        }
    }
}

impl Relation {
    pub fn as_rel(&self) -> Rel<'_> {
        Rel {
            name: &self.name,
            arch: self.arch.as_deref(),
            constraint: self.constraint.as_ref().map(|(op, v)| (*op, v.as_str())),
        }
    }
}

impl std::fmt::Display for Rel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)?;
        if let Some(a) = self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_rel().fmt(f)
    }
}

/// The OR-groups of a relation field, each an iterator over its alternatives.
pub fn groups(s: &str) -> impl Iterator<Item = impl Iterator<Item = Result<Rel<'_>, String>>> {
    s.split(',').filter(|g| !g.trim().is_empty()).map(|g| g.split('|').map(parse_rel))
}

/// Checks every relation of a field, without keeping anything.
pub fn validate(s: &str) -> Result<(), String> {
    groups(s).flatten().try_for_each(|r| r.map(drop))
}

/// Parses a relation field: `a (>= 1) | b:any, c [amd64] <!nocheck>`.
pub fn parse_relations(s: &str) -> Result<Vec<Vec<Relation>>, String> {
    groups(s).map(|g| g.map(|r| r.map(|r| r.to_relation())).collect()).collect()
}

/// Parses one `name[:arch] [(op version)] [arch-restrictions] [<profiles>]`.
pub fn parse_relation(s: &str) -> Result<Relation, String> {
    parse_rel(s).map(|r| r.to_relation())
}

/// [`parse_relation`], borrowing from `s`.
pub fn parse_rel(s: &str) -> Result<Rel<'_>, String> {
    let s = s.trim();
    let name_end = s.find(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<').unwrap_or(s.len());
    let (name_arch, mut rest) = (&s[..name_end], s[name_end..].trim_start());
    if name_arch.is_empty() {
        return Err(format!("empty package name in {s:?}"));
    }
    let (name, arch) = match name_arch.split_once(':') {
        Some((n, a)) => (n, Some(a)),
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
        constraint = Some((op, v));
    }
    // Architecture restrictions and build profiles only occur in source relations; binary
    // Packages do not carry them, so they are tolerated and ignored.
    if !(rest.is_empty() || rest.starts_with('[') || rest.starts_with('<')) {
        return Err(format!("unexpected {rest:?} in {s:?}"));
    }
    Ok(Rel { name, arch, constraint })
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
        assert_eq!(parse_rel("x:any (<< 3)").unwrap().to_string(), "x:any (<< 3)");
    }

    #[test]
    fn validate_checks_every_alternative() {
        assert!(validate("a, b | c (>= 1), , d").is_ok());
        assert!(validate("a, b | c (~ 1)").unwrap_err().contains("unknown operator"));
        assert_eq!(groups("a, , b | c").count(), 2);
    }
}
