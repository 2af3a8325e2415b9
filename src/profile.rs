//! Distro knowledge as data: profiles (`profiles/*.toml`), mirror roles (`profiles/mirrors.toml`)
//! and image recipes (`images/*.toml`). Code reads these; it never branches on a distro's name.
//!
//! Files are looked up in each data directory in turn (`$CKMS_DATA_DIR`, `/etc/ckms`,
//! `/usr/share/ckms`), then in the copies built into the binary; the first file of a name wins.

use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};
use crate::dialect::Dialect;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("no profile named '{name}' (known: {known})")]
    Unknown { name: String, known: String },
    #[error("profile {profile}: the build machine ({machine}) is none of its architectures, and cross builds run on one of them")]
    NoBuildMachine { profile: String, machine: String },
    #[error("profile {profile}: architecture '{arch}' is not in profiles/architectures.toml")]
    UnknownArchitecture { profile: String, arch: String },
    #[error("no image recipe named '{0}'")]
    UnknownRecipe(String),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl Diagnose for ProfileError {
    fn exit_code(&self) -> i32 {
        match self {
            ProfileError::Unknown { .. } => code::USAGE,
            _ => code::BAD_PROFILE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ProfileError::Invalid { .. } => "fix the file, or remove it to fall back to the built-in copy".into(),
            ProfileError::Unknown { .. } => "`ckms profiles` lists the profiles".into(),
            ProfileError::NoBuildMachine { .. } => {
                "build on a machine of one of the profile's architectures, or add this one to its `architectures`"
                    .into()
            }
            ProfileError::UnknownArchitecture { .. } => "describe it in profiles/architectures.toml".into(),
            ProfileError::UnknownRecipe(_) => "image recipes live in images/*.toml".into(),
            ProfileError::Io { .. } => "check the file's permissions".into(),
        })
    }
}

type Result<T> = std::result::Result<T, ProfileError>;

/// One distro release on one architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The file's name for the build machine's architecture, `<file>-<arch>` for the others.
    pub name: String,
    /// The file's name (the distro release), shared by its architectures.
    pub family: String,
    pub description: String,
    /// Debian's name for the architecture ("amd64", "arm64").
    pub arch: String,
    /// The architecture as `uname -m` prints it (dkms's `arch`), e.g. "x86_64".
    pub machine: String,
    pub triplet: String,
    pub keyrings: Vec<PathBuf>,
    pub suites: Vec<Suite>,
    pub packages: Packages,
    pub kernel: KernelRules,
    pub filesystem: Filesystem,
    pub install: Install,
    /// The os-release of the systems the profile's kernels run on (what `farm publish`
    /// writes into system extensions); absent: the flags must say it.
    #[serde(default)]
    pub os: Option<Os>,
    /// The dkms release the distribution ships: whose lines ckms prints as `dkms` on such a
    /// host (profiles/dkms/<release>.toml).
    #[serde(default)]
    pub dkms: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// A role from `profiles/mirrors.toml`, resolved to a URL at run time.
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    pub base: Vec<String>,
    #[serde(with = "regexes")]
    pub exclude: Vec<Regex>,
    /// What a module package's Depends may name that the builder image already is (dkms, the
    /// kernel's compiler, make, the C library): never resolved again from the index.
    #[serde(default, with = "regexes")]
    pub provided: Vec<Regex>,
    /// Packages that are other modules' sources (`*-dkms`): shown to the build under /usr/src
    /// when they are in the tree, never installed into an image.
    #[serde(default, with = "regexes")]
    pub module_sources: Vec<Regex>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRules {
    #[serde(with = "regex_one")]
    pub headers: Regex,
    #[serde(with = "regex_one")]
    pub releases: Regex,
    #[serde(with = "regexes")]
    pub kernel_packages: Vec<Regex>,
    /// Kernel packages whose programs run on the build machine (kbuild): a cross build takes
    /// them from the build machine's architecture.
    #[serde(default, with = "regexes")]
    pub build_machine_packages: Vec<Regex>,
    /// The cross compiler's package (`{gcc}`, `{triplet}` filled in).
    #[serde(default)]
    pub cross_compiler: Option<String>,
    #[serde(with = "regex_one")]
    pub compiler: Regex,
    /// The package holding a release's vmlinuz and in-tree modules (`{kver}`: the release),
    /// which `ckms verify` boots.
    pub image: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub usr_merge: Vec<String>,
    /// Directories whose package contents the image keeps elsewhere (linked back entry by entry).
    #[serde(default)]
    pub relocate: Vec<Relocate>,
    #[serde(default)]
    pub symlinks: Vec<Symlink>,
}

/// `[[filesystem.relocate]]`: what packages put in `from` goes to `to`, a directory at the same
/// depth, and `from/<entry>` links to it; a build can then mount a directory of its own on
/// `from` (the source tree, /usr/src) and link the image's entries back into it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relocate {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    pub module_location: String,
}

/// `[os]`: the target system's os-release fields a system extension must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// os-release `ID=`, e.g. "debian".
    pub id: String,
    /// os-release `VERSION_ID=`, e.g. "12"; none for a rolling release (sid).
    #[serde(default)]
    pub version_id: Option<String>,
    /// systemd's architecture name (os-release `ARCHITECTURE=`), e.g. "x86-64".
    pub architecture: String,
}

impl Profile {
    /// Whether the profile's architecture is the build machine's: its builds need no cross compiler.
    pub fn is_native(&self) -> bool {
        self.machine == std::env::consts::ARCH
    }

    /// The kernel release named by a headers package, if it is one.
    pub fn kernel_of_headers<'a>(&self, package: &'a str) -> Option<&'a str> {
        self.kernel.headers.captures(package)?.name("kver").map(|m| m.as_str())
    }

    /// The compiler version (e.g. "12") if `package` is the kernel's compiler package.
    pub fn compiler_of<'a>(&self, package: &'a str) -> Option<&'a str> {
        self.kernel.compiler.captures(package)?.name("version").map(|m| m.as_str())
    }

    /// Whether this profile can offer `release` at all (by name, without reading its index):
    /// its series and its architecture's flavours.
    pub fn may_offer(&self, release: &str) -> bool {
        self.kernel.releases.is_match(release) && self.kernel_of_headers(&format!("linux-headers-{release}")).is_some()
    }

    pub fn is_kernel_package(&self, package: &str) -> bool {
        self.kernel.kernel_packages.iter().any(|r| r.is_match(package))
    }

    /// Whether a cross build takes `package` from the build machine's architecture.
    pub fn is_build_machine_package(&self, package: &str) -> bool {
        self.kernel.build_machine_packages.iter().any(|r| r.is_match(package))
    }

    /// The package of the cross compiler for this architecture's kernels built with gcc-`gcc`
    /// (package names have '-' for the triplet's '_': gcc-12-x86-64-linux-gnu).
    pub fn cross_compiler(&self, gcc: &str) -> Option<String> {
        let triplet = self.triplet.replace('_', "-");
        Some(self.kernel.cross_compiler.as_ref()?.replace("{gcc}", gcc).replace("{triplet}", &triplet))
    }

    /// The first keyring that exists on this host, else all of them (so the error names them).
    pub fn existing_keyrings(&self) -> Vec<PathBuf> {
        let found: Vec<_> = self.keyrings.iter().filter(|k| k.exists()).cloned().collect();
        if found.is_empty() {
            self.keyrings.clone()
        } else {
            found
        }
    }

    /// Where the image keeps what packages put in `dir` (an absolute path), if it is relocated.
    pub fn relocated(&self, dir: &str) -> Option<&str> {
        let dir = dir.trim_end_matches('/');
        self.filesystem.relocate.iter().find(|r| r.from.trim_end_matches('/') == dir).map(|r| r.to.as_str())
    }

    /// Symlinks with `{triplet}` and `{gcc}` filled in.
    pub fn symlinks(&self, gcc: &str) -> Vec<Symlink> {
        self.filesystem
            .symlinks
            .iter()
            .map(|s| Symlink {
                path: s.path.clone(),
                target: s.target.replace("{triplet}", &self.triplet).replace("{gcc}", gcc),
            })
            .collect()
    }
}

/// What ckms knows of an architecture (profiles/architectures.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// `uname -m` on such a kernel (dkms's `$arch`).
    pub machine: String,
    /// The GNU type, the cross compiler's prefix.
    pub triplet: String,
    /// The kernel's name for it (make's `ARCH=`).
    pub kernel: String,
    /// os-release `ARCHITECTURE=`.
    pub systemd: String,
    /// The OCI image config's `architecture`.
    pub oci: String,
    pub qemu: Qemu,
}

/// How `ckms verify` boots a kernel of an architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    /// The Debian package holding the emulator (of the build machine's architecture).
    pub package: String,
    pub binary: String,
    /// Machine and CPU arguments.
    pub args: Vec<String>,
    /// The serial console the kernel writes to.
    pub console: String,
}

/// How a host or configuration source provides a mirror role's URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRole {
    #[serde(with = "regex_one")]
    pub host_suites: Regex,
}

/// How to assemble an image (see images/builder.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub repository: String,
    pub layers: Vec<String>,
    pub lock_path: String,
    pub user: User,
    #[serde(default)]
    pub dirs: Vec<Dir>,
    pub config: ImageConfig,
    /// Packages (with their dependencies) for the recipe's `packages` layer.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where the verifier's initramfs takes busybox from.
    #[serde(default)]
    pub initramfs: Option<Initramfs>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// A package of the profile's repositories holding a static busybox.
    pub package: String,
    /// The binary's path in it (matched as a suffix: `bin/busybox` fits `usr/bin/busybox`).
    pub busybox: String,
    /// The distribution's kmod, for `ckms verify --tree/--sysext` (modprobe, depmod).
    #[serde(default)]
    pub modprobe: Option<Tool>,
    /// systemd-sysext, for `ckms verify --sysext`.
    #[serde(default)]
    pub sysext: Option<Tool>,
    /// The target's os-release (what systemd-sysext matches extensions against).
    #[serde(default)]
    pub os_release: Option<Tool>,
    /// The target's /bin/sh, for scripts that extensions bring.
    #[serde(default)]
    pub shell: Option<Tool>,
}

/// A file of a package for the VM: a binary is taken with the shared libraries of the
/// package's dependencies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub package: String,
    /// Its path in the package, matched as a suffix.
    pub binary: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dir {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub workdir: String,
    pub cmd: Vec<String>,
}

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
fn check_relocations(p: &Profile) -> Result<()> {
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ProfileError::Io { path: path.to_path_buf(), source })
}

fn parse<T: serde::de::DeserializeOwned>(origin: &str, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| invalid(origin, e.to_string()))
}

fn invalid(origin: &str, message: String) -> ProfileError {
    ProfileError::Invalid { file: origin.to_string(), message }
}

mod regex_one {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Regex, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map_err(serde::de::Error::custom)
    }
}

mod regexes {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Regex>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| Regex::new(s).map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Catalog {
        Catalog::load(&[]).unwrap()
    }

    #[test]
    fn builtin_profiles_load() {
        let c = builtin();
        let names: Vec<_> = c.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "debian-bookworm",
                "debian-bookworm-arm64",
                "debian-sid",
                "debian-sid-arm64",
                "debian-trixie",
                "debian-trixie-arm64"
            ]
        );
        assert!(c.recipe("builder").is_ok());
    }

    #[test]
    fn a_file_is_one_profile_per_architecture() {
        let c = builtin();
        let arm = c.profile("debian-bookworm-arm64").unwrap();
        assert_eq!(
            (arm.family.as_str(), arm.arch.as_str(), arm.machine.as_str()),
            ("debian-bookworm", "arm64", "aarch64")
        );
        assert_eq!(arm.description, "Debian 12 (bookworm), arm64");
        assert_eq!(arm.os.as_ref().unwrap().architecture, "arm64");
        assert_eq!(arm.kernel_of_headers("linux-headers-6.1.0-56-arm64"), Some("6.1.0-56-arm64"));
        assert_eq!(arm.kernel_of_headers("linux-headers-6.1.0-56-amd64"), None);
        assert_eq!(arm.cross_compiler("12").as_deref(), Some("gcc-12-aarch64-linux-gnu"));
        let amd = c.profile("debian-bookworm").unwrap();
        assert_eq!(amd.cross_compiler("12").as_deref(), Some("gcc-12-x86-64-linux-gnu"));
        assert!(
            arm.is_build_machine_package("linux-kbuild-6.1")
                && !arm.is_build_machine_package("linux-headers-6.1.0-56-common")
        );
        // The build machine's architecture keeps the file's name, and answers to the long one.
        let native = c.profile("debian-bookworm").unwrap();
        assert!(native.is_native() && !arm.is_native());
        assert_eq!(c.profile("debian-bookworm-amd64").unwrap().name, "debian-bookworm");
        assert_eq!(c.build_machine(arm).unwrap().unwrap().name, "debian-bookworm");
        assert!(c.build_machine(native).unwrap().is_none());
        // An arm64 host keying pairs as an amd64 farm cross-builds them, and the reverse.
        assert_eq!(c.build_machine_on(arm, Some("amd64")).unwrap().unwrap().name, "debian-bookworm");
        assert_eq!(c.build_machine_on(native, Some("arm64")).unwrap().unwrap().name, "debian-bookworm-arm64");
        assert!(c.build_machine_on(arm, Some("arm64")).unwrap().is_none());
        assert!(c.build_machine_on(arm, Some("riscv64")).is_err());
        assert_eq!(c.architecture(arm).unwrap().qemu.binary, "qemu-system-aarch64");
        let os_release = "ID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(c.of_os_release(os_release).unwrap().name, "debian-bookworm", "the host's own architecture");
    }

    #[test]
    fn an_architecture_nobody_describes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        let shipped = include_str!("../profiles/debian-sid.toml").replace("\"arm64\"]", "\"riscv64\"]");
        std::fs::write(dir.path().join("profiles/debian-sid.toml"), shipped).unwrap();
        let err = Catalog::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("architecture 'riscv64' is not in profiles/architectures.toml"), "{err}");
    }

    #[test]
    fn kernel_release_from_headers_package() {
        let c = builtin();
        let p = c.profile("debian-bookworm").unwrap();
        assert_eq!(p.kernel_of_headers("linux-headers-6.1.0-56-amd64"), Some("6.1.0-56-amd64"));
        assert_eq!(p.kernel_of_headers("linux-headers-6.12.117+deb12-rt-amd64"), Some("6.12.117+deb12-rt-amd64"));
        assert_eq!(p.kernel_of_headers("linux-headers-6.1.0-56-common"), None);
        assert_eq!(p.kernel_of_headers("linux-headers-6.12-amd64"), None, "a meta package is no kernel");
        assert_eq!(p.kernel_of_headers("linux-headers-amd64"), None);
    }

    #[test]
    fn compiler_and_kernel_packages() {
        let c = builtin();
        let p = c.profile("debian-sid").unwrap();
        assert_eq!(p.compiler_of("gcc-16-for-host"), Some("16"));
        assert_eq!(p.compiler_of("gcc-12"), Some("12"));
        assert_eq!(p.compiler_of("gcc-12-base"), None);
        assert!(p.is_kernel_package("linux-kbuild-6.1"));
        assert!(!p.is_kernel_package("gcc-12"));
    }

    #[test]
    fn releases_point_at_one_profile() {
        let c = builtin();
        let offering =
            |k: &str| -> Vec<&str> { c.profiles.iter().filter(|p| p.may_offer(k)).map(|p| p.name.as_str()).collect() };
        assert_eq!(offering("6.1.0-56-amd64"), ["debian-bookworm"]);
        assert_eq!(offering("6.1.0-56-arm64"), ["debian-bookworm-arm64"]);
        assert_eq!(offering("6.12.117+deb13-rt-arm64"), ["debian-trixie-arm64"]);
        assert_eq!(offering("6.12.117+deb12-rt-amd64"), ["debian-bookworm"]);
        assert_eq!(offering("6.12.115+deb13.1-amd64"), ["debian-trixie"]);
        assert_eq!(offering("7.2.13+deb14-cloud-amd64"), ["debian-sid"]);
        assert!(offering("6.18.44-fc-custom").is_empty());
    }

    #[test]
    fn symlinks_are_filled_in() {
        let c = builtin();
        let links = c.profile("debian-trixie").unwrap().symlinks("14");
        assert!(links.iter().any(|l| l.path == "/usr/bin/gcc" && l.target == "x86_64-linux-gnu-gcc-14"));
    }

    #[test]
    fn a_directory_overrides_the_builtin_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        std::fs::write(dir.path().join("profiles/debian-sid.toml"), "name = 'debian-sid'\n").unwrap();
        let err = Catalog::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("profiles/debian-sid.toml"), "{err}");
    }

    #[test]
    fn relocations_keep_their_depth() {
        let c = builtin();
        for p in &c.profiles {
            assert_eq!(p.relocated("/usr/src"), Some("/usr/ckms-src"), "{}", p.name);
        }
        let mut p = c.profile("debian-sid").unwrap().clone();
        p.filesystem.relocate = vec![Relocate { from: "/usr/src".into(), to: "/srv".into() }];
        assert!(check_relocations(&p).unwrap_err().to_string().contains("as many components"));
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let err = builtin().profile("fedora").unwrap_err();
        assert!(err.to_string().contains("debian-bookworm"));
    }
}

#[cfg(test)]
mod dialect_tests {
    use super::Catalog;
    use crate::diagnose::Said;
    use crate::dialect::{choose, Dialect, KEYS};
    use std::collections::BTreeMap;

    fn dialects() -> BTreeMap<String, Dialect> {
        Catalog::load(&[]).unwrap().dialects
    }

    #[test]
    fn every_dialect_has_every_line_and_each_renders() {
        let all = dialects();
        assert!(all.contains_key("3.0.10") && all.contains_key("3.2.2"), "{:?}", all.keys());
        for d in all.values() {
            for key in KEYS {
                assert!(d.lines.contains_key(*key), "{} has no {key}", d.release);
            }
            for (key, template) in &d.lines {
                assert!(KEYS.contains(&key.as_str()), "{}: {key} is printed by nothing", d.release);
                minijinja::Environment::new().template_from_str(template).unwrap_or_else(|e| panic!("{key}: {e}"));
            }
        }
    }

    #[test]
    fn lines_are_dkms_s_own() {
        let all = dialects();
        let mv = serde_json::json!({ "module": "m", "version": "1.0", "kernel": "6.1.0-56-amd64", "arch": "x86_64" });
        assert_eq!(
            all["3.2.2"].line("not_built", &mv),
            "Module m/1.0 is not built for kernel 6.1.0-56-amd64 (x86_64). Skipping..."
        );
        assert_eq!(
            all["3.0.10"].line("not_built", &mv),
            "Module m 1.0 is not built for kernel 6.1.0-56-amd64 (x86_64). Skipping..."
        );
        let said = Said { key: "in_tree", values: mv };
        assert_eq!(
            all["3.2.2"].error(Some(&said), "", None),
            "\nError! DKMS tree already contains: m/1.0\nYou cannot add the same module/version combo more than once."
        );
        assert_eq!(all["3.0.10"].error(None, "boom", Some("fix it")), "Error! boom\nfix it");
        let sign = |binary: bool, missing: Option<&str>| serde_json::json!({ "facility": true, "command": "c", "binary": binary, "key": "k", "cert": "p", "missing": missing });
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(true, None)).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(false, None)).unwrap(),
            "Sign command: c\nBinary c not found, modules won't be signed\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", sign(true, Some("cert"))).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n\
             Certificate file p not found and can't be generated, modules won't be signed\n"
        );
        assert_eq!(
            all["3.2.2"].said("sign_prologue", serde_json::json!({ "facility": false })).unwrap(),
            "The kernel is built without module signing facility, modules won't be signed\n"
        );
        assert_eq!(
            all["3.0.10"].said("sign_prologue", sign(true, Some("key"))).unwrap(),
            "Sign command: c\nSigning key: k\nPublic certificate (MOK): p\n\
             Key file k not found and can't be generated, modules won't be signed"
        );
    }

    #[test]
    fn the_release_is_asked_for_else_the_host_s_else_the_newest() {
        let all = dialects();
        assert_eq!(choose(&all, Some("3.0.10"), Some("3.2.2")).release, "3.0.10");
        assert_eq!(choose(&all, Some("9.9"), Some("3.0.10")).release, "3.0.10");
        assert_eq!(choose(&all, None, None).release, "3.2.2");
    }
}
