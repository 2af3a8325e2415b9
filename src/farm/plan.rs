//! Evaluation: sources × kernels → pairs, each with its key, its builder image and the pairs it
//! builds against. Nothing here starts a container: the sources are put into the farm's own
//! trees, the images are planned from the signed indexes, and the keys are digests.
//!
//! The farm's work area (under ckms's cache, one per store) holds, per profile, a source tree
//! and one dkms tree per kernel, so that builds of one module for several kernels never share
//! a directory. A pair sees only the module sources it declares: its package's `*-dkms`
//! Depends and its BUILD_DEPENDS, whose contents are in its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::key::{tree_digest, KeyInputs, SiblingInput};
use super::select::Selector;
use super::FarmError;
use crate::context::Context;
use crate::error::Error;
use crate::kernel::Kernel;
use crate::lifecycle::{AddSource, Lifecycle, ModuleVersion, Options};
use crate::profile::Profile;
use crate::source::Origin;
use crate::tree::Roots;

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

/// A builder image: a kernel's, with an extra layer when a module's package needs one.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub profile: String,
    pub kernel: usize,
    pub extra: Vec<String>,
    pub plan: crate::image::Plan,
    /// Digest of the packages in its layers (name, version, SHA-256): its identity in keys.
    pub lock: String,
}

/// One (module source, kernel).
#[derive(Debug, Clone)]
pub struct Pair {
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

#[derive(Debug, Clone)]
pub struct Plan {
    pub sources: Vec<Source>,
    pub kernels: Vec<Kernel>,
    pub images: Vec<ImageSpec>,
    pub pairs: Vec<Pair>,
}

impl Plan {
    pub fn label(&self, pair: usize) -> String {
        let p = &self.pairs[pair];
        format!("{} on {}", self.sources[p.source].mv, self.kernels[p.kernel].release)
    }

    /// Bytes of packages the images need that are not in the cache yet.
    pub fn download_bytes(&self, ctx: &Context) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.images
            .iter()
            .flat_map(|i| i.plan.packages())
            .filter(|p| seen.insert(p.sha256.clone()))
            .filter(|p| !ctx.cache.blob_path(&p.sha256).exists())
            .map(|p| p.size)
            .sum()
    }
}

/// The farm's trees, under ckms's cache: one work area per store.
#[derive(Debug, Clone)]
pub struct Work {
    root: PathBuf,
}

impl Work {
    pub fn for_store(ctx: &Context, store: &Path) -> Work {
        let id = crate::cache::sha256_hex(store.to_string_lossy().as_bytes());
        Work { root: ctx.config.cache_root().join("farm").join(&id[..16]) }
    }

    /// Where sources are added for `profile`.
    pub fn sources(&self, profile: &str) -> Roots {
        self.roots(profile, "sources")
    }

    /// Where `kernel`'s pairs are built.
    pub fn kernel(&self, profile: &str, kernel: &str) -> Roots {
        self.roots(profile, &format!("trees/{kernel}"))
    }

    fn roots(&self, profile: &str, tree: &str) -> Roots {
        let base = self.root.join(profile);
        Roots { source_tree: base.join("src"), dkms_tree: base.join(tree), install_tree: base.join("lib/modules") }
    }
}

/// The kernels `selectors` name, among what every profile offers (or `profile`'s).
pub async fn kernels(ctx: &Context, selectors: &[Selector], profile: Option<&str>) -> Result<Vec<Kernel>, Error> {
    let mut offered = Vec::new();
    let profiles = ctx.profiles(profile)?;
    // Only the indexes a selector can pick from: loading one takes a while.
    let wanted = |p: &crate::profile::Profile| {
        selectors.iter().any(|s| match s {
            Selector::Release(r) => p.may_offer(r),
            other => other.profile().is_none_or(|n| n == p.name),
        })
    };
    for p in profiles.iter().filter(|p| wanted(p)) {
        let index = ctx.index(p).await?;
        offered.extend(crate::kernel::list(p, &index));
    }
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    Ok(super::select::select(selectors, &offered, &names)?)
}

/// Puts every source into the source tree of every profile among `kernels`.
pub async fn sources(ctx: &Context, work: &Work, given: &[String], kernels: &[Kernel]) -> Result<Vec<Source>, Error> {
    let mut profiles: Vec<&str> = kernels.iter().map(|k| k.profile.as_str()).collect();
    profiles.sort();
    profiles.dedup();
    let multi = profiles.len() > 1;
    let mut out = Vec::new();
    for profile in profiles {
        let opts = Options { force: true, profile: Some(profile.to_string()), ..Options::default() };
        let lc = Lifecycle::new(ctx, work.sources(profile), opts);
        for g in given {
            let mv = match add(&lc, g).await {
                Ok(mv) => mv,
                // A package one suite has and another has not: built where it is.
                Err(e) if multi && is_missing_package(&e) => {
                    ctx.reporter().warn(format!("{g}: not in {profile}'s repository; not built for its kernels"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            out.push(Source::of(&lc, g, profile, mv)?);
        }
    }
    Ok(out)
}

impl Source {
    /// `mv` as `lc`'s source tree holds it, for `profile`'s kernels.
    pub fn of(lc: &Lifecycle<'_>, given: &str, profile: &str, mv: ModuleVersion) -> Result<Source, Error> {
        let dir = lc.source_dir(&mv);
        let (digest, size) = tree_digest(&dir).map_err(FarmError::io(&dir))?;
        let conf = std::fs::read_to_string(dir.join("dkms.conf")).unwrap_or_default();
        Ok(Source {
            given: given.to_string(),
            profile: profile.to_string(),
            origin: lc.origin(&mv),
            build_depends: build_depends(&conf),
            mv,
            digest,
            size,
        })
    }
}

fn is_missing_package(e: &Error) -> bool {
    matches!(e.downcast_ref::<crate::source::SourceError>(), Some(crate::source::SourceError::NoPackage { .. }))
}

/// Adds one source as given: `deb:PACKAGE`, a directory, a tarball or `.deb`, or `M/V` from
/// the host's source tree.
async fn add(lc: &Lifecycle<'_>, given: &str) -> Result<ModuleVersion, Error> {
    if let Some(package) = given.strip_prefix("deb:") {
        return lc.add_package(package, None).await;
    }
    let path = PathBuf::from(given);
    let source = if path.is_dir() {
        AddSource::Dir(path)
    } else if path.is_file() && path.extension().is_some_and(|e| e == "deb") {
        AddSource::Deb { file: path, learned_from: None }
    } else if path.is_file() {
        AddSource::Tarball(path)
    } else if let Some((m, v)) = given.split_once('/').filter(|(m, v)| !m.is_empty() && !v.is_empty()) {
        AddSource::Dir(Roots::system().source_tree.join(format!("{m}-{v}")))
    } else {
        return Err(Error::usage(
            format!("{given}: not a directory, a tarball, a .deb, M/V or deb:PACKAGE"),
            Some(
                "a farm source is a directory with a dkms.conf, a dkms tarball, a *-dkms .deb, MODULE/VERSION \
             from /usr/src, or deb:PACKAGE from the kernels' repository"
                    .into(),
            ),
        ));
    };
    lc.add(&source, None)
}

/// BUILD_DEPENDS written as plain words: `BUILD_DEPENDS[0]="a"`, `BUILD_DEPENDS=("a" "b")`,
/// `BUILD_DEPENDS="a"`. What a conf computes is seen only when it is built (and the
/// lifecycle then builds the dependency first within the pair).
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

/// The pairs of `sources` × `kernels` (each source with its own profile's kernels), their
/// images and keys.
pub async fn pairs(ctx: &Context, work: &Work, sources: Vec<Source>, kernels: Vec<Kernel>) -> Result<Plan, Error> {
    let recipe = recipe_digest(ctx)?;
    let mut keyed = Keyed::default();
    for (ki, kernel) in kernels.iter().enumerate() {
        let profile = ctx.catalog.profile(&kernel.profile)?;
        let index = ctx.index(profile).await?;
        let roots = work.kernel(&profile.name, &kernel.release);
        let at = KernelAt { profile, index: &index, kernel, number: ki, roots };
        kernel_pairs(ctx, &at, &sources, &recipe, &mut keyed)?;
    }
    Ok(Plan { sources, kernels, images: keyed.images, pairs: keyed.pairs })
}

/// One kernel, as [`kernel_pairs`] keys pairs for it.
pub struct KernelAt<'k> {
    pub profile: &'k Profile,
    pub index: &'k crate::repo::Index,
    pub kernel: &'k Kernel,
    /// Its position in the plan's kernels.
    pub number: usize,
    /// The tree the pairs are built in (the farm's for this kernel; a host's own).
    pub roots: Roots,
}

/// Images and pairs keyed so far.
#[derive(Debug, Default)]
pub struct Keyed {
    pub images: Vec<ImageSpec>,
    pub pairs: Vec<Pair>,
}

/// Keys the pairs of `sources` (those of the kernel's profile) for one kernel, dependencies
/// first. The farm plans every kernel so; a host computes the same for its own tree and
/// kernel to find a pair in a binary cache ([`crate::prebuilt`]): one function, so that a
/// host's key is the farm's whenever their inputs are the same.
pub fn kernel_pairs(
    ctx: &Context,
    at: &KernelAt<'_>,
    sources: &[Source],
    recipe: &str,
    out: &mut Keyed,
) -> Result<(), Error> {
    let (images, pairs) = (&mut out.images, &mut out.pairs);
    let (profile, index, kernel, ki, roots) = (at.profile, at.index, at.kernel, at.number, &at.roots);
    let arch = profile.machine.clone();
    let here: Vec<usize> = (0..sources.len()).filter(|&s| sources[s].profile == profile.name).collect();
    let lc = Lifecycle::new(ctx, roots.clone(), Options { profile: Some(profile.name.clone()), ..Options::default() });
    let mut keyed: BTreeMap<usize, usize> = BTreeMap::new(); // source → pair
    for &s in &order(sources, &here) {
        let src = &sources[s];
        // The kernel's tree knows where the source came from, as the sources' tree does.
        let module_dir = roots.module_dir(&src.mv.module, &src.mv.version);
        std::fs::create_dir_all(&module_dir).map_err(FarmError::io(&module_dir))?;
        if let Some(origin) = &src.origin {
            origin.write(&module_dir).map_err(FarmError::io(&module_dir))?;
        }
        let extra = lc.extra_packages(&src.mv, profile, index);
        let image = match images.iter().position(|i| i.kernel == ki && i.extra == extra.packages) {
            Some(i) => i,
            None => {
                let plan = ctx.plan_image(profile, index, kernel, &extra.packages)?;
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
        let inputs = KeyInputs {
            recipe: recipe.to_string(),
            module: src.mv.module.clone(),
            version: src.mv.version.clone(),
            source: src.digest.clone(),
            overrides: lc
                .overrides(&src.mv, &kernel.release, &arch)
                .into_iter()
                .map(|(name, bytes)| (name, crate::cache::sha256_hex(&bytes)))
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
        pairs.push(Pair {
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
/// order; the lifecycle reports it when the pair is built).
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
fn lock_digest(plan: &crate::image::Plan, profile: &Profile) -> String {
    let lock = plan.lock();
    // The profile's file system settings (links its maintainer scripts would have made) shape
    // the image as much as its packages do.
    let filesystem = format!("{:?}", profile.filesystem);
    let doc = serde_json::json!({ "recipe": lock.recipe, "kernel": lock.kernel, "layers": lock.layers, "filesystem": filesystem });
    crate::cache::sha256_hex(doc.to_string().as_bytes())
}

/// The build's own scripts and the builder recipe: the first of a key's inputs.
pub fn recipe_digest(ctx: &Context) -> Result<String, Error> {
    let recipe = ctx.catalog.recipe("builder")?;
    let text = format!("{}\n{}\n{recipe:?}", crate::build::DRIVER, crate::conf::eval_script());
    Ok(crate::cache::sha256_hex(text.as_bytes()))
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
}
