//! The catalog: every data file of this run, read and checked, profiles expanded per architecture.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{embedded, invalid, parse, read, Architecture, MirrorRole, Profile, ProfileError, Recipe, Result};
use crate::dialect::Dialect;

/// Every profile, mirror role and recipe known to this run.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub profiles: Vec<Profile>,
    /// By Debian's name.
    pub architectures: BTreeMap<String, Architecture>,
    /// What each dkms release prints (profiles/dkms/<release>.toml), by release.
    pub dialects: BTreeMap<String, Dialect>,
    pub mirrors: BTreeMap<String, MirrorRole>,
    pub recipes: BTreeMap<String, Recipe>,
}

/// The data directories searched before the built-in copies.
pub fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CKMS_DATA_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/etc/ckms"));
    dirs.push(PathBuf::from("/usr/share/ckms"));
    dirs
}

impl Catalog {
    pub fn load(dirs: &[PathBuf]) -> Result<Catalog> {
        let mut profile_files = collect(dirs, "profiles", embedded::PROFILES)?;
        let mirrors = match profile_files.remove("mirrors") {
            Some((origin, text)) => parse(&origin, &text)?,
            None => BTreeMap::new(),
        };
        let architectures: BTreeMap<String, Architecture> = match profile_files.remove("architectures") {
            Some((origin, text)) => parse(&origin, &text)?,
            None => BTreeMap::new(),
        };
        let mut profiles = Vec::new();
        for (stem, (origin, text)) in &profile_files {
            profiles.extend(expand(stem, origin, text, &architectures)?);
        }
        for p in &profiles {
            check_relocations(p)?;
            if let Some(s) = p.suites.iter().find(|s| !mirrors.contains_key(&s.mirror)) {
                return Err(invalid(
                    &format!("profile {}", p.name),
                    format!("mirror role '{}' is not in mirrors.toml", s.mirror),
                ));
            }
        }
        let mut recipes = BTreeMap::new();
        for (stem, (origin, text)) in collect(dirs, "images", embedded::IMAGES)? {
            let r: Recipe = parse(&origin, &text)?;
            recipes.insert(stem, r);
        }
        let mut dialects = BTreeMap::new();
        for (stem, (origin, text)) in collect(dirs, "profiles/dkms", embedded::DIALECTS)? {
            let d: Dialect = parse(&origin, &text)?;
            if d.release != stem {
                return Err(invalid(&origin, format!("release '{}' differs from the file name", d.release)));
            }
            dialects.insert(stem, d);
        }
        if let Some(p) = profiles.iter().find(|p| p.dkms.as_ref().is_some_and(|r| !dialects.contains_key(r))) {
            return Err(invalid(&format!("profile {}", p.name), format!("no profiles/dkms/{:?}.toml", p.dkms)));
        }
        Ok(Catalog { profiles, architectures, mirrors, recipes, dialects })
    }

    /// A profile by name; `<file>-<arch>` also names the build machine's own.
    pub fn profile(&self, name: &str) -> Result<&Profile> {
        let found = self.profiles.iter().find(|p| p.name == name);
        found.or_else(|| self.profiles.iter().find(|p| format!("{}-{}", p.family, p.arch) == name)).ok_or_else(|| {
            ProfileError::Unknown {
                name: name.to_string(),
                known: self.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
            }
        })
    }

    /// The profile of the system an os-release describes (its VERSION_CODENAME is a suite), on
    /// this machine's architecture.
    pub fn of_os_release(&self, os_release: &str) -> Option<&Profile> {
        let codename =
            os_release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim_matches('"'))?;
        self.profiles.iter().filter(|p| p.suites.iter().any(|s| s.suite == codename)).min_by_key(|p| !p.is_native())
    }

    /// For a profile of another architecture than the build machine's: the same release on the
    /// build machine's, whose compilers and tools a cross build runs. None for a native profile.
    pub fn build_machine(&self, profile: &Profile) -> Result<Option<&Profile>> {
        self.build_machine_on(profile, None)
    }

    /// [`Catalog::build_machine`] for a build machine of the architecture `on` (Debian's name;
    /// this machine's when None): how a farm of another architecture keys its pairs.
    pub fn build_machine_on(&self, profile: &Profile, on: Option<&str>) -> Result<Option<&Profile>> {
        let builds = |p: &Profile| on.map_or(p.is_native(), |arch| p.arch == arch);
        if builds(profile) {
            return Ok(None);
        }
        let found = self.profiles.iter().find(|p| p.family == profile.family && builds(p));
        found.map(Some).ok_or_else(|| ProfileError::NoBuildMachine {
            profile: profile.name.clone(),
            machine: on.unwrap_or(std::env::consts::ARCH).to_string(),
        })
    }

    /// The build machine's architecture, if profiles/architectures.toml describes it.
    pub fn native(&self) -> Option<&Architecture> {
        self.architectures.values().find(|a| a.machine == std::env::consts::ARCH)
    }

    /// What ckms knows of a profile's architecture.
    pub fn architecture(&self, profile: &Profile) -> Result<&Architecture> {
        self.architectures.get(&profile.arch).ok_or_else(|| ProfileError::UnknownArchitecture {
            profile: profile.name.clone(),
            arch: profile.arch.clone(),
        })
    }

    pub fn recipe(&self, name: &str) -> Result<&Recipe> {
        self.recipes.get(name).ok_or_else(|| ProfileError::UnknownRecipe(name.to_string()))
    }
}

/// A profile file as profiles, one per architecture it lists (`architectures = [...]`): the
/// architecture's facts filled in, `{arch}` in the headers pattern replaced. A file without
/// `architectures` names its one architecture itself (`arch`, `machine`, `triplet`).
fn expand(stem: &str, origin: &str, text: &str, known: &BTreeMap<String, Architecture>) -> Result<Vec<Profile>> {
    let mut table: toml::Table = parse(origin, text)?;
    if table.get("name").and_then(|n| n.as_str()) != Some(stem) {
        return Err(invalid(origin, format!("name {:?} differs from the file name", table.get("name"))));
    }
    table.insert("family".into(), stem.into());
    let Some(list) = table.remove("architectures") else {
        return Ok(vec![Profile::deserialize(table).map_err(|e| invalid(origin, e.to_string()))?]);
    };
    let arches: Vec<String> = list.try_into().map_err(|e: toml::de::Error| invalid(origin, e.to_string()))?;
    let native = arches.iter().find(|a| known.get(*a).is_some_and(|k| k.machine == std::env::consts::ARCH));
    let mut out = Vec::new();
    for arch in &arches {
        let facts = known
            .get(arch)
            .ok_or_else(|| invalid(origin, format!("architecture '{arch}' is not in profiles/architectures.toml")))?;
        let mut t = table.clone();
        if Some(arch) != native {
            t.insert("name".into(), format!("{stem}-{arch}").into());
        }
        if let Some(toml::Value::String(d)) = t.get_mut("description") {
            *d = format!("{d}, {arch}");
        }
        t.insert("arch".into(), arch.as_str().into());
        t.insert("machine".into(), facts.machine.as_str().into());
        t.insert("triplet".into(), facts.triplet.as_str().into());
        if let Some(toml::Value::String(h)) = t.get_mut("kernel").and_then(|k| k.get_mut("headers")) {
            *h = h.replace("{arch}", &regex::escape(arch));
        }
        if let Some(toml::Value::Table(os)) = t.get_mut("os") {
            os.entry("architecture").or_insert_with(|| facts.systemd.as_str().into());
        }
        out.push(Profile::deserialize(t).map_err(|e| invalid(origin, e.to_string()))?);
    }
    Ok(out)
}

/// stem -> (where it came from, text); the first directory that has a file wins.
fn collect(dirs: &[PathBuf], sub: &str, builtin: &[(&str, &str)]) -> Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let dir = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            if out.contains_key(&stem) {
                continue;
            }
            let text = read(&path)?;
            out.insert(stem, (path.display().to_string(), text));
        }
    }
    for (stem, text) in builtin {
        out.entry(stem.to_string()).or_insert_with(|| (format!("built-in {sub}/{stem}.toml"), text.to_string()));
    }
    Ok(out)
}

/// Relocated directories must be absolute, distinct and at the same depth as where they came
/// from: the moved trees hold relative links (`scripts -> ../../lib/linux-kbuild-6.1/scripts`).
pub(super) fn check_relocations(p: &Profile) -> Result<()> {
    let depth = |s: &str| s.trim_matches('/').split('/').filter(|c| !c.is_empty()).count();
    for r in &p.filesystem.relocate {
        let ok = r.from.starts_with('/')
            && r.to.starts_with('/')
            && depth(&r.from) > 0
            && depth(&r.from) == depth(&r.to)
            && r.from.trim_end_matches('/') != r.to.trim_end_matches('/')
            && !r.from.contains("..")
            && !r.to.contains("..");
        if !ok {
            return Err(invalid(
                &format!("profile {}", p.name),
                format!(
                    "[[filesystem.relocate]] {} -> {}: both must be absolute, differ, and have as many components",
                    r.from, r.to
                ),
            ));
        }
    }
    Ok(())
}
