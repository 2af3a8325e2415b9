//! dkms's checks of a dkms.conf when it is added (dkms's `read_conf_strict`), for a conf that
//! is only plain assignments: such a conf means the same without bash, so it is checked on the
//! host, at once, in dkms's words. A conf that computes anything is checked where it is
//! evaluated, in the build's sandbox.

use std::collections::BTreeMap;

/// Directives dkms no longer acts on.
const DEPRECATED: [&str; 5] = [
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
];

/// A dkms.conf of plain assignments: each name's values by index (`NAME=v` is index 0).
#[derive(Debug, Default)]
pub struct Literal {
    values: BTreeMap<String, BTreeMap<usize, String>>,
}

/// What dkms says about a conf: errors (it is refused) and warnings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Literal {
    /// `text` as plain assignments; None when any line is more than that.
    pub fn parse(text: &str) -> Option<Literal> {
        let mut lit = Literal::default();
        for line in text.lines().map(|l| l.trim_end_matches('\r').trim()) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (target, value) = line.split_once('=')?;
            let (name, index) = match target.split_once('[') {
                Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
                None => (target, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let entry = lit.values.entry(name.to_string()).or_default();
            match (index, value.strip_prefix('(').and_then(|v| v.strip_suffix(')'))) {
                (None, Some(items)) => {
                    entry.clear();
                    for (i, item) in items.split_whitespace().enumerate() {
                        entry.insert(i, word(item)?);
                    }
                }
                (index, _) => {
                    entry.insert(index.unwrap_or(0), word(value)?);
                }
            }
        }
        Some(lit)
    }

    /// The deprecated directives the conf sets (dkms 3.2 names them when it reads it strictly).
    pub fn deprecated(&self) -> Vec<&'static str> {
        DEPRECATED.into_iter().filter(|d| self.values.contains_key(*d)).collect()
    }

    fn get(&self, name: &str, index: usize) -> &str {
        self.values.get(name).and_then(|v| v.get(&index)).map_or("", String::as_str)
    }

    /// dkms 3.2's findings, in its order: `read_conf`'s, and with `strict` (adding) also
    /// `read_conf_strict`'s (no modules, a module named twice).
    pub fn check(&self, strict: bool) -> Findings {
        let mut f = Findings::default();
        for name in ["PACKAGE_NAME", "PACKAGE_VERSION"] {
            if self.get(name, 0).is_empty() {
                f.errors.push(format!("dkms.conf: Error! No '{name}' directive specified."));
            }
        }
        let arrays = ["BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"];
        let modules = arrays
            .iter()
            .filter_map(|a| self.values.get(*a).and_then(|v| v.keys().max()))
            .max()
            .map_or(0, |max| max + 1);
        let mut built = Vec::new();
        let mut dest = Vec::new();
        for i in 0..modules {
            let mut name = self.get("BUILT_MODULE_NAME", i).to_string();
            if name.is_empty() && modules == 1 {
                name = self.get("PACKAGE_NAME", 0).to_string();
            }
            let dest_name = match self.get("DEST_MODULE_NAME", i) {
                "" => name.clone(),
                d => d.to_string(),
            };
            if name.is_empty() {
                f.errors.push(format!("dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #{i}."));
            }
            if name.ends_with(".o") || name.ends_with(".ko") {
                f.errors.push(format!(
                    "dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #{i}."
                ));
            }
            if dest_name.ends_with(".o") || dest_name.ends_with(".ko") {
                f.errors.push(format!(
                    "dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #{i}."
                ));
            }
            match self.get("DEST_MODULE_LOCATION", i) {
                "" => f
                    .errors
                    .push(format!("dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #{i}.")),
                l if ["/kernel", "/updates", "/extra"].iter().any(|p| l.starts_with(p)) => {}
                _ => f.errors.push(format!(
                    "dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n\
                     '/kernel', '/updates', or '/extra' in record #{i}."
                )),
            }
            let location = match self.get("BUILT_MODULE_LOCATION", i) {
                "" => String::new(),
                l if l.ends_with('/') => l.to_string(),
                l => format!("{l}/"),
            };
            built.push(format!("{location}{name}"));
            dest.push(dest_name);
        }
        for name in ["AUTOINSTALL", "BUILD_DEPENDS_REBUILD", "NO_WEAK_MODULES"] {
            let v = self.get(name, 0);
            if !(v.is_empty() || v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("no")) {
                f.errors.push(format!("dkms.conf: Error! Unsupported {name} value '{v}'"));
            }
        }
        if !strict {
            return f;
        }
        if modules == 0 {
            f.warnings.push("dkms.conf: Warning! Zero modules specified.".into());
        }
        for (list, directive) in [(&built, "BUILT_MODULE_NAME"), (&dest, "DEST_MODULE_NAME")] {
            for (i, m) in list.iter().enumerate() {
                if list[..i].contains(m) {
                    f.errors.push(format!("dkms.conf: Error! Duplicate module '{m}' in '{directive}[{i}]'."));
                }
            }
        }
        f
    }
}

/// One shell word that means itself: quoted without expansions, or bare.
fn word(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return (!inner.contains('\'')).then(|| inner.to_string());
    }
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return (!inner.contains(['"', '$', '`', '\\'])).then(|| inner.to_string());
    }
    let special = |c: char| c.is_whitespace() || "$`\\\"';&|<>(){}*?[]~#".contains(c);
    (!raw.contains(special)).then(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(text: &str) -> Findings {
        Literal::parse(text).expect("a literal conf").check(true)
    }

    #[test]
    fn dkms_s_errors_in_dkms_s_order() {
        let invalid = "PACKAGE_NAME=\"dkms_conf_test\"\nPACKAGE_VERSION=\"1.0\"\nDEST_MODULE_NAME[0]=\"bar.ko\"\n\
                       DEST_MODULE_LOCATION=\"/wrong/path\"\nBUILT_MODULE_NAME[1]=\"bar.o\"\nDEST_MODULE_NAME[1]=\"foo\"\n\
                       AUTOINSTALL=\"maybe\"\n";
        assert_eq!(
            findings(invalid).errors,
            [
                "dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #0.",
                "dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #0.",
                "dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #0.",
                "dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.",
                "dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #1.",
                "dkms.conf: Error! Unsupported AUTOINSTALL value 'maybe'",
            ]
        );
        let empty = findings("");
        assert_eq!(empty.errors.len(), 2, "{empty:?}");
        assert_eq!(empty.warnings, ["dkms.conf: Warning! Zero modules specified."]);
        let twice =
            "PACKAGE_NAME=d\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=d\nDEST_MODULE_LOCATION[0]=/kernel/extra\r\n\
                     BUILT_MODULE_NAME[1]=d\nDEST_MODULE_LOCATION[1]=/kernel/extra\n";
        assert_eq!(
            findings(twice).errors,
            [
                "dkms.conf: Error! Duplicate module 'd' in 'BUILT_MODULE_NAME[1]'.",
                "dkms.conf: Error! Duplicate module 'd' in 'DEST_MODULE_NAME[1]'.",
            ]
        );
        let one = "PACKAGE_NAME=m\nPACKAGE_VERSION=1\nDEST_MODULE_LOCATION=/updates\nMAKE=(\"make\" 'all')\n";
        assert_eq!(findings(one), Findings::default(), "one module may leave BUILT_MODULE_NAME out");
    }

    #[test]
    fn deprecated_directives_are_named() {
        let conf = "PACKAGE_NAME=d\nPACKAGE_VERSION=1\nREMAKE_INITRD=yes\nCLEAN=true\nMODULES_CONF[0]=x\n";
        assert_eq!(Literal::parse(conf).expect("literal").deprecated(), ["REMAKE_INITRD", "MODULES_CONF"]);
    }

    #[test]
    fn what_bash_would_compute_is_not_judged_here() {
        for conf in ["PACKAGE_VERSION=$(cat VERSION)\n", "MAKE=\"make KVER=$kernelver\"\n", "if true; then X=1; fi\n"] {
            assert!(Literal::parse(conf).is_none(), "{conf}");
        }
    }
}
