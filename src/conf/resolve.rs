//! dkms's rules for one kernel: which MAKE, which patches, which modules, and whether the
//! package is built at all (BUILD_EXCLUSIVE_*).

use regex::Regex;
use std::cmp::Ordering;

use super::{invalid, version, ConfError, RawConf};
use crate::tree::valid_name;

/// What resolution needs to know about the target kernel.
#[derive(Debug, Clone)]
pub struct KernelFacts {
    pub release: String,
    pub arch: String,
    /// The kernel's .config text, for BUILD_EXCLUSIVE_CONFIG; None when the headers ship none
    /// (then, as in dkms, the check is not made).
    pub config: Option<String>,
}

/// Where modules are installed under /lib/modules/<kver>.
///
/// dkms lets the distro override DEST_MODULE_LOCATION: Debian, Ubuntu and Arch install every
/// module to /updates/dkms whatever the conf says (so depmod prefers dkms's copies and they
/// are easy to find), SUSE to /updates; Fedora/RHEL keep the conf's value when it is valid and
/// use /extra otherwise. The profile picks; the conf's value is validated either way, because
/// dkms rejects a bad one before overriding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestPolicy {
    /// Every module goes here (Debian/Ubuntu/Arch: "/updates/dkms").
    Override(String),
    /// The conf's DEST_MODULE_LOCATION, or this when it sets none.
    Fallback(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Boxed: a plan is large and a skip is a string.
    Build(Box<BuildPlan>),
    /// BUILD_EXCLUSIVE_* excludes this kernel: dkms exits 77, which is not a failure.
    Skipped { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub package_name: String,
    pub package_version: String,
    pub kernel_release: String,
    /// The selected MAKE command as the conf wrote it; see [`BuildPlan::make_command`].
    pub make: String,
    pub modules: Vec<Module>,
    /// Modules dropped by a per-module BUILD_EXCLUSIVE_*[#]: (name, reason).
    pub excluded_modules: Vec<(String, String)>,
    /// Patch file names under patches/, in index order, already filtered by PATCH_MATCH.
    pub patches: Vec<String>,
    pub hooks: Hooks,
    pub build_depends: Vec<String>,
    pub build_depends_rebuild: bool,
    pub autoinstall: bool,
    pub no_weak_modules: bool,
    /// Things the user should know (deprecated directives), one sentence each.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub pre_build: Option<String>,
    pub post_build: Option<String>,
    pub post_add: Option<String>,
    pub pre_install: Option<String>,
    pub post_install: Option<String>,
    pub post_remove: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The index in BUILT_MODULE_NAME[#], which ties the module to its other directives.
    pub index: u32,
    pub built_name: String,
    /// Relative to the build directory; "" = the build directory itself.
    pub built_location: String,
    pub dest_name: String,
    /// Under /lib/modules/<kver>, e.g. "/updates/dkms".
    pub dest_location: String,
    pub strip: bool,
}

impl BuildPlan {
    /// The command to run, as dkms runs it: a leading `make` becomes
    /// `make -j<N> KERNELRELEASE=<kver>` (dkms's `${make_command/#make/...}`, which also hits
    /// e.g. `makefoo`; matched on purpose). Anything else (`(make ...; make ...)`, `sh x`) is
    /// left alone.
    pub fn make_command(&self, jobs: u32) -> String {
        match self.make.strip_prefix("make") {
            Some(rest) => format!("make -j{jobs} KERNELRELEASE={}{rest}", self.kernel_release),
            None => self.make.clone(),
        }
    }
}

fn yes(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.starts_with(['y', 'Y']))
}

fn regex(raw: &RawConf, directive: &str, pattern: &str) -> Result<Regex, ConfError> {
    Regex::new(pattern).map_err(|e| {
        invalid(
            &raw.origin,
            directive,
            format!("invalid regular expression '{pattern}': {e}"),
            "it must be an extended regular expression as bash's =~ takes it",
        )
    })
}

/// One set of BUILD_EXCLUSIVE_* values (package-wide, or one module's).
struct Exclusive<'a> {
    kernel: Option<&'a str>,
    min: Option<&'a str>,
    max: Option<&'a str>,
    arch: Option<&'a str>,
    config: Option<&'a str>,
    suffix: String,
}

impl Exclusive<'_> {
    /// Why this kernel is excluded, or None.
    fn check(&self, raw: &RawConf, k: &KernelFacts) -> Result<Option<String>, ConfError> {
        let s = &self.suffix;
        if let Some(p) = self.kernel {
            if !regex(raw, &format!("BUILD_EXCLUSIVE_KERNEL{s}"), p)?.is_match(&k.release) {
                return Ok(Some(format!("BUILD_EXCLUSIVE_KERNEL{s}=\"{p}\" does not match kernel {}", k.release)));
            }
        }
        if let Some(min) = self.min {
            if version::compare(&k.release, min) == Ordering::Less {
                return Ok(Some(format!("kernel {} is older than BUILD_EXCLUSIVE_KERNEL_MIN{s}={min}", k.release)));
            }
        }
        if let Some(max) = self.max {
            if version::compare(&k.release, max) == Ordering::Greater {
                return Ok(Some(format!("kernel {} is newer than BUILD_EXCLUSIVE_KERNEL_MAX{s}={max}", k.release)));
            }
        }
        if let Some(p) = self.arch {
            if !regex(raw, &format!("BUILD_EXCLUSIVE_ARCH{s}"), p)?.is_match(&k.arch) {
                return Ok(Some(format!("BUILD_EXCLUSIVE_ARCH{s}=\"{p}\" does not match architecture {}", k.arch)));
            }
        }
        if let (Some(options), Some(config)) = (self.config, &k.config) {
            for option in options.split_whitespace() {
                let (negated, name) = match option.strip_prefix('!') {
                    Some(name) => (true, name),
                    None => (false, option),
                };
                let set = config_enabled(config, name);
                if set == negated {
                    let state = if negated { "enabled" } else { "not enabled" };
                    return Ok(Some(format!(
                        "{name} is {state} in the kernel config (BUILD_EXCLUSIVE_CONFIG{s}=\"{options}\")"
                    )));
                }
            }
        }
        Ok(None)
    }
}

/// `^NAME=[ym]` in a .config, as dkms greps it.
fn config_enabled(config: &str, name: &str) -> bool {
    config.lines().any(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .is_some_and(|value| value.starts_with(['y', 'm']))
    })
}

/// dkms's rule: a DEST_MODULE_LOCATION must lie under /kernel, /updates or /extra.
fn not_a_name(origin: &str, directive: &str, value: &str) -> ConfError {
    invalid(
        origin,
        directive,
        format!("{value:?} is not a plain name"),
        "use a name without '/', blanks, or a leading '.'; (BUILT_MODULE_LOCATION says where a module is built)",
    )
}

fn valid_dest(location: &str) -> bool {
    ["/kernel", "/updates", "/extra"]
        .iter()
        .any(|root| location.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// Applies dkms's rules to `raw` for one kernel.
pub fn resolve(raw: &RawConf, kernel: &KernelFacts, dest: &DestPolicy) -> Result<Resolved, ConfError> {
    let origin = raw.origin.as_str();
    let required = |name: &str| {
        raw.nonempty(name)
            .map(str::to_string)
            .ok_or_else(|| invalid(origin, name, "is not set", format!("dkms.conf must set {name}=\"...\"")))
    };
    let package_name = required("PACKAGE_NAME")?;
    let package_version = required("PACKAGE_VERSION")?;
    // Names become path components on the host: none may climb out of its directory.
    for (directive, value) in [("PACKAGE_NAME", &package_name), ("PACKAGE_VERSION", &package_version)] {
        if !valid_name(value) {
            return Err(not_a_name(origin, directive, value));
        }
    }

    // Validation comes before BUILD_EXCLUSIVE: a broken conf is an error on every kernel, not
    // only on the kernels it happens to be built for.
    // As dkms: a package of one module may leave BUILT_MODULE_NAME[0] out; it is PACKAGE_NAME.
    // A conf that names no module record at all builds none (dkms: "Zero modules specified").
    let mut names = raw.array("BUILT_MODULE_NAME").clone();
    let records = ["BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"];
    if records.iter().any(|a| !raw.array(a).is_empty()) && names.values().all(String::is_empty) {
        if names.keys().any(|&i| i != 0) {
            return Err(invalid(
                origin,
                "BUILT_MODULE_NAME",
                "no module is named",
                "set BUILT_MODULE_NAME[0]=\"<module name without .ko>\"",
            ));
        }
        names.insert(0, package_name.clone());
    }
    for directive in ["BUILT_MODULE_NAME", "DEST_MODULE_NAME"] {
        for (i, name) in raw.array(directive) {
            if !name.is_empty() && !valid_name(name) {
                return Err(not_a_name(origin, &format!("{directive}[{i}]"), name));
            }
            if name.ends_with(".ko") {
                return Err(invalid(
                    origin,
                    &format!("{directive}[{i}]"),
                    format!("'{name}' ends in .ko"),
                    "give the module name without .ko; dkms adds the suffix",
                ));
            }
        }
    }
    for (i, location) in raw.array("DEST_MODULE_LOCATION") {
        if !location.is_empty() && !valid_dest(location) {
            return Err(invalid(
                origin,
                &format!("DEST_MODULE_LOCATION[{i}]"),
                format!("'{location}' is not under /kernel, /updates or /extra"),
                "use e.g. DEST_MODULE_LOCATION[0]=\"/extra\"",
            ));
        }
    }
    let mut make_matches = Vec::new();
    for (i, pattern) in raw.array("MAKE_MATCH") {
        if !pattern.is_empty() {
            make_matches.push((*i, regex(raw, &format!("MAKE_MATCH[{i}]"), pattern)?));
        }
    }
    let mut patch_matches = Vec::new();
    for (i, pattern) in raw.array("PATCH_MATCH") {
        if !pattern.is_empty() {
            patch_matches.push((*i, regex(raw, &format!("PATCH_MATCH[{i}]"), pattern)?));
        }
    }

    let mut notes = Vec::new();
    for name in [
        "CLEAN",
        "REMAKE_INITRD",
        "MODULES_CONF",
        "MODULES_CONF_ALIAS_TYPE",
        "MODULES_CONF_OBSOLETES",
        "MODULES_CONF_OBSOLETE_ONLY",
    ] {
        if raw.directives.get(name).is_some_and(|a| a.values().any(|v| !v.is_empty())) {
            notes.push(format!("{name} is deprecated and ignored"));
        }
    }
    // OBSOLETE_BY predates BUILD_EXCLUSIVE_KERNEL_MAX and dkms maps it there.
    let obsolete_by = raw.nonempty("OBSOLETE_BY");
    if let Some(v) = obsolete_by {
        notes.push(format!("OBSOLETE_BY is deprecated; read as BUILD_EXCLUSIVE_KERNEL_MAX={v}"));
    }

    // Package-wide BUILD_EXCLUSIVE_*. In bash the scalar is element 0 of the array of the same
    // name, so index 0 is package-wide (what every real conf writes) and only indices >= 1 can
    // be per-module: module 0 cannot be excluded on its own.
    let exclusive = |index: u32| Exclusive {
        kernel: raw.at("BUILD_EXCLUSIVE_KERNEL", index),
        min: raw.at("BUILD_EXCLUSIVE_KERNEL_MIN", index),
        max: raw.at("BUILD_EXCLUSIVE_KERNEL_MAX", index).or(if index == 0 { obsolete_by } else { None }),
        arch: raw.at("BUILD_EXCLUSIVE_ARCH", index),
        config: raw.at("BUILD_EXCLUSIVE_CONFIG", index),
        suffix: if index == 0 { String::new() } else { format!("[{index}]") },
    };
    // Check every module's regexes even when the package is skipped, so errors are stable.
    let mut module_exclusion = Vec::new();
    for &i in names.keys().filter(|&&i| i != 0) {
        module_exclusion.push((i, exclusive(i).check(raw, kernel)?));
    }
    if let Some(reason) = exclusive(0).check(raw, kernel)? {
        return Ok(Resolved::Skipped { reason });
    }

    // MAKE[0] by default; the last index whose MAKE_MATCH matches the kernel wins.
    let mut make = raw.at("MAKE", 0).map(str::to_string);
    for (i, re) in &make_matches {
        if let Some(command) = raw.at("MAKE", *i) {
            if re.is_match(&kernel.release) {
                make = Some(command.to_string());
            }
        }
    }
    let make = make.unwrap_or_else(|| {
        let ctx = |k: &str| raw.context.get(k).map(String::as_str).unwrap_or_default();
        format!(
            "make -C {} M={}/{}/{}/build",
            ctx("kernel_source_dir"),
            ctx("dkms_tree"),
            package_name,
            package_version
        )
    });

    // STRIP[#] defaults to STRIP[0], which defaults to yes.
    let strip_default = raw.at("STRIP", 0).is_none_or(|v| !v.starts_with(['n', 'N']));
    let mut modules = Vec::new();
    let mut excluded_modules = Vec::new();
    let exclusions: std::collections::BTreeMap<u32, Option<String>> = module_exclusion.into_iter().collect();
    for (&i, built_name) in &names {
        if built_name.is_empty() {
            continue;
        }
        if let Some(Some(reason)) = exclusions.get(&i) {
            excluded_modules.push((built_name.clone(), reason.clone()));
            continue;
        }
        let dest_location = match dest {
            DestPolicy::Override(location) => location.clone(),
            DestPolicy::Fallback(location) => raw.at("DEST_MODULE_LOCATION", i).unwrap_or(location).to_string(),
        };
        modules.push(Module {
            index: i,
            built_name: built_name.clone(),
            built_location: raw.array("BUILT_MODULE_LOCATION").get(&i).cloned().unwrap_or_default(),
            dest_name: raw.at("DEST_MODULE_NAME", i).unwrap_or(built_name).to_string(),
            dest_location,
            strip: raw.at("STRIP", i).map_or(strip_default, |v| !v.starts_with(['n', 'N'])),
        });
    }
    if modules.is_empty() && !excluded_modules.is_empty() {
        let reasons: Vec<String> = excluded_modules.iter().map(|(m, r)| format!("{m}: {r}")).collect();
        return Ok(Resolved::Skipped { reason: format!("every module is excluded ({})", reasons.join("; ")) });
    }

    // A PATCH[#] applies when its PATCH_MATCH[#] is unset or matches the kernel.
    let patches = raw
        .array("PATCH")
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .filter(|(i, _)| patch_matches.iter().find(|(j, _)| j == *i).is_none_or(|(_, re)| re.is_match(&kernel.release)))
        .map(|(_, p)| p.clone())
        .collect();

    let hook = |name: &str| raw.nonempty(name).map(str::to_string);
    Ok(Resolved::Build(Box::new(BuildPlan {
        package_name,
        package_version,
        kernel_release: kernel.release.clone(),
        make,
        modules,
        excluded_modules,
        patches,
        hooks: Hooks {
            pre_build: hook("PRE_BUILD"),
            post_build: hook("POST_BUILD"),
            post_add: hook("POST_ADD"),
            pre_install: hook("PRE_INSTALL"),
            post_install: hook("POST_INSTALL"),
            post_remove: hook("POST_REMOVE"),
        },
        build_depends: raw.array("BUILD_DEPENDS").values().filter(|v| !v.is_empty()).cloned().collect(),
        build_depends_rebuild: yes(raw.scalar("BUILD_DEPENDS_REBUILD")),
        autoinstall: yes(raw.scalar("AUTOINSTALL")),
        no_weak_modules: yes(raw.scalar("NO_WEAK_MODULES")),
        notes,
    })))
}
