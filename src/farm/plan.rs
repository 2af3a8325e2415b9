//! Evaluation: sources × kernels → pairs, each with its key, its builder image and the pairs it
//! builds against. Nothing here starts a container: the sources are put into the farm's own
//! trees, the images are planned from the signed indexes, and the keys are digests.
//!
//! The farm's work area (under ckms's cache, one per store) holds, per profile, a source tree
//! and one dkms tree per kernel, so that builds of one module for several kernels never share
//! a directory. A pair sees only the module sources it declares: its package's `*-dkms`
//! Depends and its BUILD_DEPENDS, whose contents are in its key.

use std::path::{Path, PathBuf};

use super::report::Cell;
use super::select::Selector;
use super::FarmError;
use crate::cache::sha256_hex;
use crate::context::Context;
use crate::error::Usage;
use crate::kernel::{self, Kernel};
use crate::lifecycle::{AddSource, Lifecycle, ModuleVersion, Options};
use crate::pair::inputs::{self, Evaluation, ImageSpec, KernelAt, KeyedPair, Source};
use crate::profile::Profile;
use crate::tree::{self, Roots};

/// The evaluated farm: sources × kernels → keyed pairs, and the builder images they need.
#[derive(Debug, Clone)]
pub struct FarmPlan {
    pub sources: Vec<Source>,
    pub kernels: Vec<Kernel>,
    pub images: Vec<ImageSpec>,
    pub pairs: Vec<KeyedPair>,
}

impl FarmPlan {
    /// The matrix's record of pair `pair`.
    pub fn cell(&self, pair: usize, cached: bool) -> Cell {
        let p = &self.pairs[pair];
        let mv = &self.sources[p.source].mv;
        let (module, version) = (mv.module.clone(), mv.version.clone());
        Cell { key: p.key.clone(), cached, module, version, kernel: self.kernels[p.kernel].release.clone() }
    }

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
        let id = sha256_hex(store.to_string_lossy().as_bytes());
        Work { root: ctx.config.cache_root().join("farm").join(&id[..16]) }
    }

    /// A fresh directory a pair is realised in: beside the sources, not in the store, so that
    /// only finished entries take the store's space.
    pub fn scratch(&self) -> Result<tempfile::TempDir, FarmError> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).map_err(FarmError::io(&dir))?;
        tempfile::Builder::new().prefix("pair.").tempdir_in(&dir).map_err(FarmError::io(&dir))
    }

    /// Where sources are added for `profile`.
    pub fn sources(&self, profile: &str) -> Roots {
        let base = self.root.join(profile);
        Roots { source_tree: base.join("src"), dkms_tree: base.join("sources"), install_tree: base.join("lib/modules") }
    }
}

/// The kernels `selectors` name, among what every profile offers (or `profile`'s).
pub async fn kernels(ctx: &Context, selectors: &[Selector], profile: Option<&str>) -> Result<Vec<Kernel>, FarmError> {
    let mut offered = Vec::new();
    let profiles = ctx.profiles(profile)?;
    // Only the indexes a selector can pick from: loading one takes a while.
    let wanted = |p: &Profile| {
        selectors.iter().any(|s| match s {
            Selector::Release(r) => p.may_offer(r),
            other => other.profile().is_none_or(|n| n == p.name),
        })
    };
    for p in profiles.iter().filter(|p| wanted(p)) {
        let index = ctx.index(p).await?;
        offered.extend(kernel::list(p, &index));
    }
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    super::select::select(selectors, &offered, &names)
}

/// Puts every source into the source tree of every profile among `kernels`.
pub async fn sources(
    ctx: &Context,
    work: &Work,
    given: &[String],
    kernels: &[Kernel],
) -> Result<Vec<Source>, FarmError> {
    let mut profiles: Vec<&str> = kernels.iter().map(|k| k.profile.as_str()).collect();
    profiles.sort();
    profiles.dedup();
    let multi = profiles.len() > 1;
    let mut out = Vec::new();
    for profile in profiles {
        let opts = Options { force: true, profile: Some(profile.to_string()), ..Options::default() };
        let lc = Lifecycle::new(ctx, work.sources(profile), opts);
        let index = ctx.index(ctx.catalog.profile(profile)?).await?;
        for g in given {
            // A package one suite has and another has not: built where it is.
            let offered = g.strip_prefix("deb:").is_none_or(|p| index.candidate(p).is_some());
            if multi && !offered {
                ctx.reporter().warn(format!("{g}: not in {profile}'s repository; not built for its kernels"));
                continue;
            }
            let mv = add(&lc, g).await?;
            out.push(Source::of(&lc.source_dir(&mv), g, profile, mv.clone(), lc.origin(&mv))?);
        }
    }
    Ok(out)
}

/// Adds one source as given: `deb:PACKAGE`, a directory, a tarball or `.deb`, or `M/V` from
/// the host's source tree.
async fn add(lc: &Lifecycle<'_>, given: &str) -> Result<ModuleVersion, FarmError> {
    if let Some(package) = given.strip_prefix("deb:") {
        return Ok(lc.add_package(package, None).await?.mv);
    }
    let path = PathBuf::from(given);
    let source = if path.is_dir() {
        AddSource::Dir(path)
    } else if path.is_file() && path.extension().is_some_and(|e| e == "deb") {
        AddSource::Deb { file: path, learned_from: None }
    } else if path.is_file() {
        AddSource::Tarball(path)
    } else if let Some((m, v)) = given.split_once('/').filter(|_| tree::module_version_like(given)) {
        AddSource::Dir(Roots::system().source_tree.join(format!("{m}-{v}")))
    } else {
        return Err(Usage {
            message: format!("{given}: not a directory, a tarball, a .deb, M/V or deb:PACKAGE"),
            hint: Some(
                "a farm source is a directory with a dkms.conf, a dkms tarball, a *-dkms .deb, MODULE/VERSION \
             from /usr/src, or deb:PACKAGE from the kernels' repository"
                    .into(),
            ),
        }
        .into());
    };
    Ok(lc.add(&source, None)?.mv)
}

/// The pairs of `sources` × `kernels` (each source with its own profile's kernels), their
/// images and keys.
pub async fn pairs(ctx: &Context, sources: Vec<Source>, kernels: Vec<Kernel>) -> Result<FarmPlan, FarmError> {
    let recipe = inputs::recipe_digest(ctx)?;
    let mut evaluation = Evaluation::default();
    for (number, kernel) in kernels.iter().enumerate() {
        let profile = ctx.catalog.profile(&kernel.profile)?;
        let index = ctx.index(profile).await?;
        let build = ctx.build_machine(profile).await?;
        let at = KernelAt { profile, index: &index, cross: build.as_ref().map(|b| b.cross()), kernel, number };
        inputs::kernel_pairs(ctx, &at, &sources, &recipe, &mut evaluation)?;
    }
    Ok(FarmPlan { sources, kernels, images: evaluation.images, pairs: evaluation.pairs })
}
