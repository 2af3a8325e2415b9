//! Evaluation: what decides a pair's output, gathered without starting a container or writing a
//! file. Module sources ([`Source`]), the packages a module's Debian package needs in its
//! builder image ([`extra_packages`]), the dkms override files that apply ([`overrides`]), and
//! per kernel the pairs of every source with their images and keys ([`kernel_pairs`]): the farm
//! plans every kernel so, and a host computes the same for its own tree and kernel to find a pair
//! in a binary cache, so that a host's key is the farm's whenever their inputs are the same.

use std::collections::BTreeMap;
use std::path::Path;

use super::key::{tree_digest, Inputs, SiblingInput};
use super::{ModuleVersion, PairError};
use crate::build::DRIVER;
use crate::cache::sha256_hex;
use crate::conf::eval_script;
use crate::config::Config;
use crate::context::Context;
use crate::image::{self, Plan};
use crate::kernel::Kernel;
use crate::profile::Profile;
use crate::repo::Index;
use crate::report::Reporter;
use crate::source::{build_deps, Origin};

/// One module source, as put into one profile's source tree.
#[derive(Debug, Clone)]
pub struct Source {
    /// As given on the command line.
    pub given: String,
    pub profile: String,
    pub mv: ModuleVersion,
    pub digest: String,
    pub size: u64,
    pub origin: Option<Origin>,
    /// BUILD_DEPENDS as the dkms.conf writes them plainly (module names).
    pub build_depends: Vec<String>,
}

impl Source {
    /// `mv` with its source in `dir`, from the Debian package `origin` (when known), for
    /// `profile`'s kernels.
    pub fn of(
        dir: &Path,
        given: &str,
        profile: &str,
        mv: ModuleVersion,
        origin: Option<Origin>,
    ) -> Result<Source, PairError> {
        let (digest, size) = tree_digest(dir).map_err(PairError::io(dir))?;
        let conf = std::fs::read_to_string(dir.join("dkms.conf")).unwrap_or_default();
        Ok(Source {
            given: given.to_string(),
            profile: profile.to_string(),
            origin,
            build_depends: build_depends(&conf),
            mv,
            digest,
            size,
        })
    }
}

/// BUILD_DEPENDS written as plain words: `BUILD_DEPENDS[0]="a"`, `BUILD_DEPENDS=("a" "b")`,
/// `BUILD_DEPENDS="a"`. What a conf computes is seen only when it is built.
pub fn build_depends(conf: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in conf.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("BUILD_DEPENDS") else { continue };
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once("]").map_or("", |(_, r)| r),
            None => rest,
        };
        let Some(value) = rest.strip_prefix('=') else { continue };
        let value = value.split('#').next().unwrap_or("").trim().trim_start_matches('(').trim_end_matches(')');
        for word in value.split_whitespace() {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            let plain = word.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
            if !word.is_empty() && plain && !out.iter().any(|o| o == word) {
                out.push(word.to_string());
            }
        }
    }
    out
}

/// The extra packages of one build, and why each is there.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Roots for the image's extra layer: the config's `[modules.<m>] packages`, then the
    /// package's Depends.
    pub packages: Vec<String>,
    /// The package the module came from, when known.
    pub origin: Option<Origin>,
    /// Which of `packages` come from the package's Depends, and which from the config.
    pub from_package: Vec<String>,
    pub from_config: Vec<String>,
    /// Other module packages it depends on: module sources.
    pub sources: Vec<String>,
}

/// The extra packages for building `mv` (from the package `origin`) on `profile`'s kernels; what
/// the repository lacks is said as a warning and left out.
pub fn extra_packages(
    config: &Config,
    report: &dyn Reporter,
    mv: &ModuleVersion,
    origin: Option<&Origin>,
    profile: &Profile,
    index: &Index,
) -> Extra {
    let from_config = config.module_packages(&mv.module);
    let mut extra = Extra { packages: from_config.clone(), from_config, ..Extra::default() };
    let Some(origin) = origin else { return extra };
    let groups = match origin.relations() {
        Ok(groups) => groups,
        Err(e) => {
            report.warn_once(format!("{mv}: {e}: its dependencies are left out of the builder image"));
            return extra;
        }
    };
    let deps = build_deps(&groups, profile, index);
    for missing in &deps.unavailable {
        // Once: the farm asks for every kernel of the profile.
        report.warn_once(format!(
            "{mv}: {missing} (from {}'s Depends) is not in {}'s repository: left out of the builder image",
            origin.package, profile.name
        ));
    }
    for p in &deps.packages {
        if !extra.packages.contains(p) {
            extra.packages.push(p.clone());
            extra.from_package.push(p.clone());
        }
    }
    extra.sources = deps.sources;
    extra.origin = Some(origin.clone());
    extra
}

/// dkms's override files in `conf_dir` that exist for this (module, version, kernel, arch):
/// (name, bytes).
pub fn overrides(conf_dir: &Path, mv: &ModuleVersion, kernel: &str, arch: &str) -> Vec<(String, Vec<u8>)> {
    let (m, v) = (&mv.module, &mv.version);
    [
        format!("{m}.conf"),
        format!("{m}-{v}.conf"),
        format!("{m}-{v}-{kernel}.conf"),
        format!("{m}-{v}-{kernel}-{arch}.conf"),
    ]
    .into_iter()
    .filter_map(|name| std::fs::read(conf_dir.join(&name)).ok().map(|bytes| (name, bytes)))
    .collect()
}

/// A builder image: a kernel's, with an extra layer when a module's package needs one.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub profile: String,
    pub kernel: usize,
    pub extra: Vec<String>,
    pub plan: Plan,
    /// Digest of the packages in its layers (name, version, SHA-256): its identity in keys.
    pub lock: String,
}

/// One (module source, kernel), keyed.
#[derive(Debug, Clone)]
pub struct KeyedPair {
    pub source: usize,
    pub kernel: usize,
    pub arch: String,
    pub image: usize,
    pub key: String,
    /// Pairs (same kernel) built against: BUILD_DEPENDS.
    pub after: Vec<usize>,
    /// The other modules the build sees.
    pub visible: Vec<ModuleVersion>,
}

/// One kernel, as [`kernel_pairs`] keys pairs for it.
pub struct KernelAt<'k> {
    pub profile: &'k Profile,
    pub index: &'k Index,
    /// A kernel of another architecture: the build machine's side.
    pub cross: Option<image::Cross<'k>>,
    pub kernel: &'k Kernel,
    /// Its position in the plan's kernels.
    pub number: usize,
}

/// Images and pairs keyed so far.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub images: Vec<ImageSpec>,
    pub pairs: Vec<KeyedPair>,
}

/// Keys the pairs of `sources` (those of the kernel's profile) for one kernel, dependencies
/// first, into `out`.
pub fn kernel_pairs(
    ctx: &Context,
    at: &KernelAt<'_>,
    sources: &[Source],
    recipe: &str,
    out: &mut Evaluation,
) -> Result<(), PairError> {
    let (images, pairs) = (&mut out.images, &mut out.pairs);
    let (profile, index, kernel, ki) = (at.profile, at.index, at.kernel, at.number);
    let arch = profile.machine.clone();
    let here: Vec<usize> = (0..sources.len()).filter(|&s| sources[s].profile == profile.name).collect();
    let conf_dir = ctx.config.conf_dir();
    let mut keyed: BTreeMap<usize, usize> = BTreeMap::new(); // source → pair
    for &s in &order(sources, &here) {
        let src = &sources[s];
        let extra = extra_packages(&ctx.config, ctx.reporter(), &src.mv, src.origin.as_ref(), profile, index);
        let image = match images.iter().position(|i| i.kernel == ki && i.extra == extra.packages) {
            Some(i) => i,
            None => {
                let recipe = ctx.catalog.recipe("builder")?;
                let sources = image::Sources { profile, index, cross: at.cross };
                let plan = image::plan(sources, recipe, kernel, &extra.packages)?;
                let lock = lock_digest(&plan, profile);
                images.push(ImageSpec {
                    profile: profile.name.clone(),
                    kernel: ki,
                    extra: extra.packages.clone(),
                    plan,
                    lock,
                });
                images.len() - 1
            }
        };
        let declared = |other: &Source| {
            extra.sources.iter().any(|p| {
                other.origin.as_ref().is_some_and(|o| &o.package == p)
                    || p.strip_suffix("-dkms") == Some(other.mv.module.as_str())
            }) || src.build_depends.contains(&other.mv.module)
        };
        let visible: Vec<usize> = here.iter().copied().filter(|&o| o != s && declared(&sources[o])).collect();
        let after: Vec<usize> = visible
            .iter()
            .filter(|&&o| src.build_depends.contains(&sources[o].mv.module))
            .filter_map(|o| keyed.get(o).copied())
            .collect();
        let inputs = Inputs {
            recipe: recipe.to_string(),
            module: src.mv.module.clone(),
            version: src.mv.version.clone(),
            source: src.digest.clone(),
            overrides: overrides(&conf_dir, &src.mv, &kernel.release, &arch)
                .into_iter()
                .map(|(name, bytes)| (name, sha256_hex(&bytes)))
                .collect(),
            image_lock: images[image].lock.clone(),
            kernel: kernel.release.clone(),
            arch: arch.clone(),
            siblings: visible
                .iter()
                .map(|&o| SiblingInput {
                    module: sources[o].mv.module.clone(),
                    version: sources[o].mv.version.clone(),
                    digest: sources[o].digest.clone(),
                })
                .collect(),
            depends: after.iter().map(|&p| pairs[p].key.clone()).collect(),
        };
        keyed.insert(s, pairs.len());
        pairs.push(KeyedPair {
            source: s,
            kernel: ki,
            arch: arch.clone(),
            image,
            key: inputs.key(),
            after,
            visible: visible.iter().map(|&o| sources[o].mv.clone()).collect(),
        });
    }
    Ok(())
}

/// `here` with every source after the ones its BUILD_DEPENDS name (a cycle keeps the given
/// order; it is reported when the pair is built).
fn order(sources: &[Source], here: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    let mut left: Vec<usize> = here.to_vec();
    while !left.is_empty() {
        let ready = left.iter().position(|&s| {
            sources[s].build_depends.iter().all(|d| {
                out.iter().any(|&o| sources[o].mv.module == *d) || !left.iter().any(|&l| sources[l].mv.module == *d)
            })
        });
        out.push(left.remove(ready.unwrap_or(0)));
    }
    out
}

/// What the image holds, package by package, and how the profile lays it out: the suites'
/// dates are left out, so that a fresh index with the same packages keeps the keys.
fn lock_digest(plan: &Plan, profile: &Profile) -> String {
    let lock = plan.lock();
    // The profile's file system settings (links its maintainer scripts would have made) shape
    // the image as much as its packages do.
    let filesystem = format!("{:?}", profile.filesystem);
    let doc = serde_json::json!({ "recipe": lock.recipe, "kernel": lock.kernel, "layers": lock.layers, "filesystem": filesystem });
    sha256_hex(doc.to_string().as_bytes())
}

/// The build's own scripts and the builder recipe: the first of a key's inputs.
pub fn recipe_digest(ctx: &Context) -> Result<String, PairError> {
    let recipe = ctx.catalog.recipe("builder")?;
    let text = format!("{}\n{}\n{recipe:?}", DRIVER, eval_script());
    Ok(sha256_hex(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_build_depends_are_read_in_every_form() {
        let conf = "PACKAGE_NAME=x\nBUILD_DEPENDS[0]=\"base\"\nBUILD_DEPENDS=(\"a\" 'b') # two\n  BUILD_DEPENDS=c\n";
        assert_eq!(build_depends(conf), ["base", "a", "b", "c"]);
        assert!(build_depends("BUILD_DEPENDS=\"$(ls)\"\n").iter().all(|d| !d.contains('$')));
    }

    fn source(module: &str, deps: &[&str]) -> Source {
        Source {
            given: module.into(),
            profile: "p".into(),
            mv: ModuleVersion { module: module.into(), version: "1".into() },
            digest: String::new(),
            size: 0,
            origin: None,
            build_depends: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn dependencies_come_first_and_a_cycle_does_not_hang() {
        let s = vec![source("top", &["mid"]), source("mid", &["base"]), source("base", &[])];
        let names = |o: Vec<usize>| o.into_iter().map(|i| s[i].mv.module.clone()).collect::<Vec<_>>();
        assert_eq!(names(order(&s, &[0, 1, 2])), ["base", "mid", "top"]);
        let c = vec![source("a", &["b"]), source("b", &["a"])];
        assert_eq!(order(&c, &[0, 1]).len(), 2);
    }

    #[test]
    fn only_the_override_files_that_apply_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["m.conf", "m-1-k-x86_64.conf", "other.conf", "m-2.conf"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mv = ModuleVersion { module: "m".into(), version: "1".into() };
        let names: Vec<String> = overrides(dir.path(), &mv, "k", "x86_64").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["m.conf", "m-1-k-x86_64.conf"]);
    }
}
