//! Builder images: assembled from distro packages into OCI layers, loaded into an engine.
//!
//! [`plan()`] decides which package goes into which layer; [`build`] fetches what is missing,
//! writes each missing layer once into the cache, and loads the image unless the engine has
//! it already. [`list`], [`remove`] and [`prune`] manage what ckms loaded.

pub mod archive;
mod assemble;
pub mod layer;
mod paths;
mod plan;

pub use assemble::{assemble, build, list, prune, remove, Assembled, Built, ImageRow};
pub use plan::{plan, Cross, Lock, LockedLayer, LockedPackage, Plan, PlannedLayer, Sources};

use thiserror::Error;

use crate::cache::CacheError;
use crate::deb::DebError;
use crate::diagnose::{code, Diagnose};
use crate::engine::{Content, EngineError, Input, Limits, RunSpec};
use crate::profile::Recipe;
use crate::repo::RepoError;

/// Image labels ckms sets; `image ls` and `prune` find ckms's images by them.
pub mod label {
    pub const RECIPE: &str = "io.ckms.recipe";
    pub const PROFILE: &str = "io.ckms.profile";
    pub const KERNEL: &str = "io.ckms.kernel";
    pub const COMPILER: &str = "io.ckms.compiler";
    pub const LOCK: &str = "io.ckms.lock";
    /// The packages of an image's extra layer (what modules declared), space-separated.
    pub const EXTRA: &str = "io.ckms.extra";
}

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("kernel {kernel}: {source}")]
    Resolve { kernel: String, source: RepoError },
    #[error("kernel {kernel}: no compiler matching the profile {profile}'s [kernel].compiler among its headers' dependencies")]
    NoCompiler { kernel: String, profile: String },
    /// Boxed: inline, it made this the largest error of every caller's (clippy's result_large_err).
    #[error("kernel {}: its {} is version {}, the build machine's ({}) {}", .0.kernel, .0.package, .0.wanted, .0.build_arch, .0.found.as_deref().map_or("has none".to_string(), |v| format!("is {v}")))]
    CrossMismatch(Box<CrossMismatch>),
    #[error("image recipe '{recipe}' names an unknown layer '{layer}' (known: base, toolchain, tools, kernel, extra, packages)")]
    UnknownLayer { recipe: String, layer: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the engine reports image {reference} as {actual}, expected {expected}")]
    Mismatch { reference: String, expected: String, actual: String },
    #[error("no ckms image matches '{0}'")]
    NotFound(String),
    #[error("building layers: {0}")]
    Task(String),
}

/// A cross build's package of the build machine's architecture (its kbuild) that is not the
/// version the kernel's headers need.
#[derive(Debug)]
pub struct CrossMismatch {
    pub kernel: String,
    pub package: String,
    pub wanted: String,
    pub build_arch: String,
    /// The build machine's version, if its index has the package at all.
    pub found: Option<String>,
}

impl Diagnose for ImageError {
    fn exit_code(&self) -> i32 {
        match self {
            ImageError::Resolve { source, .. } | ImageError::Repo(source) => source.exit_code(),
            ImageError::NoCompiler { .. } | ImageError::UnknownLayer { .. } => code::BAD_PROFILE,
            ImageError::CrossMismatch(_) => code::UNRESOLVABLE,
            ImageError::Cache(e) => e.exit_code(),
            ImageError::Deb(e) => e.exit_code(),
            ImageError::Layer(e) => e.exit_code(),
            ImageError::Archive(e) => e.exit_code(),
            ImageError::Engine(e) => e.exit_code(),
            ImageError::Mismatch { .. } | ImageError::Task(_) => code::ENGINE_FAILED,
            ImageError::NotFound(_) => code::USAGE,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ImageError::Resolve { source, .. } | ImageError::Repo(source) => source.hint(),
            ImageError::NoCompiler { .. } => Some("check the profile's [kernel].compiler pattern".into()),
            ImageError::UnknownLayer { .. } => Some("fix `layers` in the recipe under images/".into()),
            ImageError::CrossMismatch(_) => Some(
                "the architectures' indexes disagree (a mirror mid-update?): try again later with --refresh".into(),
            ),
            ImageError::Cache(e) => e.hint(),
            ImageError::Deb(e) => e.hint(),
            ImageError::Layer(e) => e.hint(),
            ImageError::Archive(e) => e.hint(),
            ImageError::Engine(e) => e.hint(),
            ImageError::Mismatch { .. } => Some("run `ckms image build --force` to load it again".into()),
            ImageError::NotFound(_) => Some("`ckms image ls` lists ckms's images".into()),
            ImageError::Task(_) => None,
        }
    }
}

/// Process limit of a sandboxed run unless `[build] pids` says otherwise.
pub const DEFAULT_PIDS: i64 = 4096;
/// Memory limit of a sandboxed run unless `[build] memory_mib` says otherwise.
pub const DEFAULT_MEMORY_BYTES: i64 = 4 << 30;

/// A sandboxed run in a builder image: the recipe's non-root user, its workdir as the one
/// writable volume (sources in, results out), no network, bounded resources and time.
pub fn run_spec(
    recipe: &Recipe,
    image: &str,
    cmd: Vec<String>,
    input: Option<Content>,
    timeout: std::time::Duration,
) -> RunSpec {
    let dir = recipe.config.workdir.clone();
    RunSpec {
        image: image.to_string(),
        cmd,
        env: recipe.config.env.clone(),
        user: format!("{}:{}", recipe.user.uid, recipe.user.gid),
        workdir: dir.clone(),
        scratch: dir.clone(),
        input: input.map(Input::user).into_iter().collect(),
        volumes: vec![],
        outputs: vec![dir],
        limits: Limits {
            memory_bytes: Some(DEFAULT_MEMORY_BYTES),
            pids: Some(DEFAULT_PIDS),
            nano_cpus: None,
            tmpfs_bytes: 1 << 30,
            timeout,
        },
        network: false,
        follow: None,
    }
}
