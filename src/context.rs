//! What one ckms invocation works with: settings, profiles, the cache and a reporter, and the
//! steps every command shares (load a profile's index, find a kernel, connect to an engine).

use std::sync::Arc;

use crate::cache::Cache;
use crate::cache::CacheError;
use crate::config::Config;
use crate::config::ConfigError;
use crate::diagnose::{Diagnose, Said};
use crate::dialect::{self, Dialect};
use crate::engine::EngineError;
use crate::engine::{self, Connection, Images};
use crate::image::{self, ImageError};
use crate::kernel::{self, Kernel, KernelError};
use crate::profile::{self, Catalog, Profile, ProfileError};
use crate::repo::{self, Index, RepoError};
use crate::report::{Event, Reporter};

/// What stops a step every command shares: one module's error, kept typed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl ContextError {
    fn inner(&self) -> &dyn Diagnose {
        match self {
            ContextError::Profile(e) => e,
            ContextError::Config(e) => e,
            ContextError::Cache(e) => e,
            ContextError::Repo(e) => e,
            ContextError::Kernel(e) => e,
            ContextError::Engine(e) => e,
            ContextError::Image(e) => e,
        }
    }
}

impl Diagnose for ContextError {
    fn exit_code(&self) -> i32 {
        self.inner().exit_code()
    }
    fn dkms(&self) -> Option<Said> {
        self.inner().dkms()
    }
    fn hint(&self) -> Option<String> {
        self.inner().hint()
    }
}

/// The host's os-release, where os-release(5) says to look: /etc, else /usr/lib.
pub fn os_release() -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"].iter().find_map(|f| std::fs::read_to_string(f).ok())
}

pub struct Context {
    pub config: Config,
    pub catalog: Catalog,
    pub cache: Cache,
    pub report: Arc<dyn Reporter>,
    /// Ask mirrors for fresh indexes even when the cached ones are recent.
    pub refresh: bool,
    /// Indexes loaded so far, by profile: one invocation reads each once however many builds
    /// ask (the farm's pairs; a build and its BUILD_DEPENDS).
    indexes: Arc<tokio::sync::Mutex<std::collections::HashMap<String, Arc<Index>>>>,
    /// The dkms release of the host's distribution, read from /etc/os-release once.
    host_dkms: Arc<std::sync::OnceLock<Option<String>>>,
    /// Called as `dkms`: where dkms and ckms differ on purpose, do as dkms does.
    pub as_dkms: bool,
}

impl Context {
    pub fn new(config: Config, report: Arc<dyn Reporter>, refresh: bool) -> Result<Context, ContextError> {
        let catalog = Catalog::load(&profile::data_dirs())?;
        let cache = Cache::open(config.cache_root())?;
        Ok(Context::of(config, catalog, cache, report, refresh))
    }

    /// A context of parts already loaded (tests, other profile directories).
    pub fn of(config: Config, catalog: Catalog, cache: Cache, report: Arc<dyn Reporter>, refresh: bool) -> Context {
        Context {
            config,
            catalog,
            cache,
            report,
            refresh,
            indexes: Arc::default(),
            host_dkms: Arc::default(),
            as_dkms: false,
        }
    }

    /// What dkms prints, in the release this host's distribution ships (or CKMS_DKMS_RELEASE).
    pub fn dialect(&self) -> &Dialect {
        let host = self.host_dkms.get_or_init(|| {
            let os_release = os_release().unwrap_or_default();
            self.catalog.of_os_release(&os_release).and_then(|p| p.dkms.clone())
        });
        dialect::choose(&self.catalog.dialects, self.config.dkms_release(), host.as_deref())
    }

    /// The same context, telling `report` instead.
    pub fn with_reporter(&self, report: Arc<dyn Reporter>) -> Context {
        Context {
            config: self.config.clone(),
            catalog: self.catalog.clone(),
            cache: self.cache.clone(),
            report,
            refresh: self.refresh,
            indexes: self.indexes.clone(),
            host_dkms: self.host_dkms.clone(),
            as_dkms: self.as_dkms,
        }
    }

    pub fn reporter(&self) -> &dyn Reporter {
        self.report.as_ref()
    }

    /// The profiles to consider: the named one, or all.
    pub fn profiles(&self, name: Option<&str>) -> Result<Vec<&Profile>, ContextError> {
        Ok(match name {
            Some(n) => vec![self.catalog.profile(n)?],
            None => self.catalog.profiles.iter().collect(),
        })
    }

    pub async fn index(&self, profile: &Profile) -> Result<Arc<Index>, ContextError> {
        // Held while loading, so that concurrent callers wait for one load.
        let mut loaded = self.indexes.lock().await;
        if let Some(index) = loaded.get(&profile.name) {
            return Ok(index.clone());
        }
        let suites = self.config.suites(&self.catalog, profile)?;
        let opts = self.config.repo_options(profile, self.refresh);
        let index = Arc::new(repo::load_index(&self.cache, &suites, &opts, self.reporter()).await?);
        loaded.insert(profile.name.clone(), index.clone());
        Ok(index)
    }

    /// Finds the profile offering `release` (only among `profile` when given), with its index.
    pub async fn find_kernel(
        &self,
        release: &str,
        profile: Option<&str>,
    ) -> Result<(&Profile, Arc<Index>, Kernel), ContextError> {
        let mut offered = Vec::new();
        let mut candidates = self.profiles(profile)?;
        // Read only the indexes of profiles whose naming fits; all of them if none does, so
        // that an unknown kernel still gets the closest real ones suggested.
        if candidates.iter().any(|p| p.may_offer(release)) {
            candidates.retain(|p| p.may_offer(release));
        }
        for p in &candidates {
            let index = self.index(p).await?;
            if let Some(k) = kernel::find(p, &index, release) {
                return Ok((p, index, k));
            }
            offered.extend(kernel::list(p, &index).into_iter().map(|k| k.release));
        }
        Err(KernelError::Unknown {
            release: release.to_string(),
            searched: candidates.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
            closest: kernel::closest(release, &offered, 3),
        }
        .into())
    }

    /// The engine, for a command that runs containers (builds, scripts, VMs): what its
    /// builds go without is said, once per process (a ckms detail: dkms's callers see it only
    /// with --verbose).
    pub async fn engine(&self) -> Result<Connection, ContextError> {
        let conn = self.image_engine().await?;
        if let Some(warning) = conn.limits_warning() {
            self.reporter().once(Event::Detail { message: format!("Warning: {warning}") });
        }
        Ok(conn)
    }

    /// The engine, for a command that only keeps images (loads, lists, removes them).
    pub async fn image_engine(&self) -> Result<Connection, ContextError> {
        Ok(engine::connect(&self.config.engine_settings(), self.reporter()).await?)
    }
}

/// The build machine's side of a cross build (see [`Context::build_machine`]).
pub struct BuildMachine<'c> {
    pub profile: &'c Profile,
    pub index: Arc<Index>,
    /// make's `ARCH=` for the kernel's architecture.
    pub kernel_arch: &'c str,
}

impl BuildMachine<'_> {
    pub fn cross(&self) -> image::Cross<'_> {
        image::Cross { build: self.profile, index: &self.index, kernel_arch: self.kernel_arch }
    }
}

/// A kernel's builder image, and what it was made from.
pub struct Builder<'a> {
    pub image: image::Built,
    pub profile: &'a Profile,
    pub index: Arc<Index>,
    pub kernel: Kernel,
}

impl Context {
    /// The builder image for `release` (plus `extra` packages a module needs), assembled and
    /// loaded unless the engine has it.
    pub async fn builder(
        &self,
        engine: &dyn Images,
        release: &str,
        profile: Option<&str>,
        extra: &[String],
        force: bool,
    ) -> Result<Builder<'_>, ContextError> {
        let (p, index, kernel) = self.find_kernel(release, profile).await?;
        let image = self.image_for(engine, p, &index, &kernel, extra, force).await?;
        Ok(Builder { image, profile: p, index, kernel })
    }

    /// For a profile of another architecture than this machine's: the same release on this
    /// machine's architecture and its index, which a cross build's image is made from.
    pub async fn build_machine(&self, profile: &Profile) -> Result<Option<BuildMachine<'_>>, ContextError> {
        self.build_machine_on(profile, None).await
    }

    /// [`Context::build_machine`] on a build machine of the architecture `on` (this one's when None).
    pub async fn build_machine_on(
        &self,
        profile: &Profile,
        on: Option<&str>,
    ) -> Result<Option<BuildMachine<'_>>, ContextError> {
        let Some(build) = self.catalog.build_machine_on(profile, on)? else { return Ok(None) };
        let kernel_arch = &self.catalog.architecture(profile)?.kernel;
        Ok(Some(BuildMachine { profile: build, index: self.index(build).await?, kernel_arch }))
    }

    /// The builder image for a kernel already found (see [`Context::find_kernel`]).
    pub async fn image_for(
        &self,
        engine: &dyn Images,
        profile: &Profile,
        index: &Index,
        kernel: &Kernel,
        extra: &[String],
        force: bool,
    ) -> Result<image::Built, ContextError> {
        let plan = self.plan_image(profile, index, kernel, extra).await?;
        self.image_of(engine, profile, &plan, force).await
    }

    /// What the builder image for a kernel already found holds, layer by layer.
    pub async fn plan_image(
        &self,
        profile: &Profile,
        index: &Index,
        kernel: &Kernel,
        extra: &[String],
    ) -> Result<image::Plan, ContextError> {
        let build = self.build_machine(profile).await?;
        let sources = image::Sources { profile, index, cross: build.as_ref().map(BuildMachine::cross) };
        Ok(image::plan(sources, self.catalog.recipe("builder")?, kernel, extra)?)
    }

    /// The builder image of `plan`, assembled and loaded unless the engine has it.
    pub async fn image_of(
        &self,
        engine: &dyn Images,
        profile: &Profile,
        plan: &image::Plan,
        force: bool,
    ) -> Result<image::Built, ContextError> {
        let recipe = self.catalog.recipe("builder")?;
        Ok(image::build(&self.cache, engine, profile, recipe, plan, force, self.reporter()).await?)
    }

    /// The builder image for `release`, assembled and loaded unless the engine has it.
    pub async fn builder_image(
        &self,
        engine: &dyn Images,
        release: &str,
        profile: Option<&str>,
        force: bool,
    ) -> Result<image::Built, ContextError> {
        Ok(self.builder(engine, release, profile, &[], force).await?.image)
    }
}
