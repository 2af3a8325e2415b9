//! The Debian package a module version came from, kept in the tree as
//! `<dkms_tree>/<m>/<v>/origin.json`: its name and version, its Depends and Pre-Depends as its
//! control data writes them, and where ckms learned that.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::repo::relation::parse_relations;
use crate::repo::Relation;

/// The file in `<dkms_tree>/<m>/<v>/`.
pub const FILE: &str = "origin.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub package: String,
    pub version: String,
    #[serde(default)]
    pub depends: String,
    #[serde(default)]
    pub pre_depends: String,
    /// Where this was learned: a .deb file, the profile's repository, the dpkg database.
    pub learned_from: String,
}

impl Origin {
    /// From a package's control fields (a .deb's control file, a dpkg status paragraph); None
    /// without a Package field.
    pub fn from_fields(fields: &[(String, String)], learned_from: impl Into<String>) -> Option<Origin> {
        let get = |k: &str| {
            fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let package = get("Package");
        (!package.is_empty()).then(|| Origin {
            package,
            version: get("Version"),
            depends: get("Depends"),
            pre_depends: get("Pre-Depends"),
            learned_from: learned_from.into(),
        })
    }

    /// The record in `module_dir`, if there is a readable one.
    pub fn read(module_dir: &Path) -> Option<Origin> {
        serde_json::from_slice(&std::fs::read(module_dir.join(FILE)).ok()?).ok()
    }

    /// Writes the record into `module_dir` (a temporary file renamed into place).
    pub fn write(&self, module_dir: &Path) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(module_dir)?;
        std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(self).unwrap_or_default())?;
        tmp.persist(module_dir.join(FILE)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Pre-Depends, then Depends, as groups of alternatives; a field that does not parse is
    /// an error naming it.
    pub fn relations(&self) -> Result<Vec<Vec<Relation>>, String> {
        let mut out = Vec::new();
        for (name, field) in [("Pre-Depends", &self.pre_depends), ("Depends", &self.depends)] {
            if field.trim().is_empty() {
                continue;
            }
            let parsed = parse_relations(&field.replace('\n', " "))
                .map_err(|e| format!("{}'s {name} ({field:?}): {e}", self.package))?;
            out.extend(parsed);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_control_fields_and_back() {
        let fields: Vec<(String, String)> = [
            ("Package", "rtpengine-kernel-dkms"),
            ("Version", "10.5.3.5-1"),
            ("Depends", "dkms (>= 1.95), sysvinit-utils (>= 3.05-4~) | lsb-base (>= 3.0-6),\nperl:any"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = Origin::from_fields(&fields, "rtpengine.deb").unwrap();
        let groups = o.relations().unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[1].iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["sysvinit-utils", "lsb-base"]);
        assert_eq!(groups[2][0].to_string(), "perl:any");
        let dir = tempfile::tempdir().unwrap();
        o.write(dir.path()).unwrap();
        assert_eq!(Origin::read(dir.path()), Some(o));
        assert_eq!(Origin::from_fields(&[], "x"), None);
    }
}
