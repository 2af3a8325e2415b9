//! User settings: `/etc/ckms/config.toml`, then `$XDG_CONFIG_HOME/ckms/config.toml` (or the
//! single file named by `CKMS_CONFIG`), then environment variables, each overriding the last.
//! Mirror URLs come from here or from the host's apt sources, never from the repository.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

use crate::cache::Cache;
use crate::diagnose::{code, Diagnose};
use crate::engine::EngineSettings;
use crate::profile::{Catalog, Profile};
use crate::repo::sources::{host_check_valid_until, read_host_sources, AptSource};
use crate::repo::{RepoError, RepoOptions, SuiteSpec};
use crate::sign::Locations;
use crate::tree::DEFAULT_TREE;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no mirror for '{role}' (needed by suite {suite})")]
    NoMirror { role: String, suite: String, env: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl Diagnose for ConfigError {
    fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Repo(e) => e.exit_code(),
            _ => code::USAGE,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { .. } => Some("fix the file; docs/configuration.md lists every setting".into()),
            ConfigError::NoMirror { role, env, .. } => Some(format!(
                "set {env}=http://<mirror>/<path>, or `{role} = \"...\"` under [mirrors] in /etc/ckms/config.toml; \
                 ckms also takes it from a matching entry in the host's apt sources"
            )),
            ConfigError::Repo(e) => e.hint(),
        }
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where downloads, indexes and layers are kept.
    pub cache_dir: Option<PathBuf>,
    /// How long a fetched repository index is trusted before the mirror is asked again.
    pub index_max_age_secs: Option<u64>,
    /// Refuse expired repository indexes. Default: what the host's apt does, else true.
    pub check_valid_until: Option<bool>,
    /// The host's apt configuration directory (mirrors, Check-Valid-Until).
    pub apt_dir: Option<PathBuf>,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Mirror role -> base URL, e.g. `debian = "http://mirror.example/debian"`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub sign: SignConfig,
    /// Per-module settings, by module name: `[modules.v4l2loopback] packages = ["pkg-config"]`.
    #[serde(default)]
    pub modules: BTreeMap<String, ModuleConfig>,
    /// A farm's binary caches, looked in before building (docs/publish.md, "cache").
    #[serde(default)]
    pub prebuilt: PrebuiltConfig,
    /// What happens when a kernel is installed that the host's modules are not ready for.
    #[serde(default)]
    pub gate: GateConfig,
    /// Environment overrides, captured at load time (kept out of serde).
    #[serde(skip)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// e.g. unix:///run/user/1000/podman/podman.sock or tcp://host:2375
    pub host: Option<String>,
    /// When ckms runs as root: the unprivileged user whose rootless Podman runs the builds.
    pub rootless_user: Option<String>,
}

/// How builds run. Every field has a default (see [`BuildConfig::timeout`] and friends).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// The dkms tree (default /var/lib/ckms).
    pub dkms_tree: Option<PathBuf>,
    /// Where dkms.conf overrides live (default /etc/dkms, as for dkms).
    pub conf_dir: Option<PathBuf>,
    /// Wall-clock limit of one build, in seconds (default 1800).
    pub timeout_secs: Option<u64>,
    /// Disk space one build may use in its volume (on the host's disk), in MiB (default 4096).
    pub space_mib: Option<i64>,
    /// Memory limit of one build container, in MiB (default 4096).
    pub memory_mib: Option<i64>,
    /// Process limit of one build container (default 4096).
    pub pids: Option<i64>,
}

/// Module signing (docs/signing.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignConfig {
    /// Sign built modules when the kernel has CONFIG_MODULE_SIG_HASH (default true, as dkms).
    pub enabled: Option<bool>,
    /// Where dkms keeps its key pair (default /var/lib/dkms; CKMS_DKMS_MOK_DIR).
    pub dkms_mok_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// Extra packages the module's build needs, layered onto its builder image.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// `[prebuilt]`: binary caches written by `ckms farm publish --format cache`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrebuiltConfig {
    /// The caches' base URLs (http, https, file) or directories, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// OpenPGP public keys (armored or binary) whose signatures of a cache's index are trusted.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Whether plain http:// caches are allowed (https, file and directories always are).
    #[serde(default)]
    pub allow_http: bool,
    /// Module certificates (DER or PEM) a cache's modules must be signed by; empty: the one the
    /// cache publishes, vouched for by its index's signature.
    #[serde(default)]
    pub module_certs: Vec<PathBuf>,
    /// The architecture (Debian's name) of the machines the caches' farm builds on, when it is
    /// not this host's: an arm64 host of an amd64 farm keys its pairs as that farm's cross
    /// builds (docs/arm64.md).
    #[serde(default)]
    pub built_on: Option<String>,
}

/// `[gate]`: the kernel hooks' policy (docs/gate.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// What a kernel whose modules are not ready gets: refuse, keep-default (the default) or warn.
    pub on_failure: Option<OnFailure>,
    /// Prove the modules load by booting the kernel in a VM before it counts as ready.
    pub verify: Option<bool>,
    /// Take the modules only from the [prebuilt] caches: never build on this host.
    pub prebuilt_only: Option<bool>,
    /// Where each kernel's last readiness is kept (default /var/lib/ckms/gate).
    pub state_dir: Option<PathBuf>,
}

/// `[gate] on_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The kernel's installation fails; the installed kernels and modules stay as they were.
    Refuse,
    /// The kernel is installed; the boot loader's default stays on the newest ready kernel.
    #[default]
    KeepDefault,
    /// The kernel is installed and becomes the default, as with dkms; a warning says what failed.
    Warn,
}

impl GateConfig {
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure.unwrap_or_default()
    }

    pub fn verify(&self) -> bool {
        self.verify.unwrap_or(false)
    }

    pub fn prebuilt_only(&self) -> bool {
        self.prebuilt_only.unwrap_or(false)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/ckms/gate"))
    }
}

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// Reads the usual files and the process environment.
    pub fn load() -> Result<Config> {
        let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CKMS_")).collect();
        let files = match env.get("CKMS_CONFIG") {
            Some(one) => vec![PathBuf::from(one)],
            None => {
                let mut f = vec![PathBuf::from("/etc/ckms/config.toml")];
                let user = std::env::var_os("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
                f.extend(user.map(|d| d.join("ckms/config.toml")));
                f
            }
        };
        Self::load_from(&files, env)
    }

    /// Reads `files` (missing ones are skipped), later ones overriding earlier ones.
    pub fn load_from(files: &[PathBuf], env: BTreeMap<String, String>) -> Result<Config> {
        let mut cfg = Config::default();
        for path in files {
            let Ok(text) = std::fs::read_to_string(path) else { continue };
            let next: Config = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid { path: path.clone(), message: e.to_string() })?;
            cfg.merge(next);
        }
        cfg.env = env;
        Ok(cfg)
    }

    fn merge(&mut self, o: Config) {
        self.cache_dir = o.cache_dir.or(self.cache_dir.take());
        self.index_max_age_secs = o.index_max_age_secs.or(self.index_max_age_secs);
        self.check_valid_until = o.check_valid_until.or(self.check_valid_until);
        self.apt_dir = o.apt_dir.or(self.apt_dir.take());
        self.engine.host = o.engine.host.or(self.engine.host.take());
        self.engine.rootless_user = o.engine.rootless_user.or(self.engine.rootless_user.take());
        self.mirrors.extend(o.mirrors);
        let (b, n) = (&mut self.build, o.build);
        b.dkms_tree = n.dkms_tree.or(b.dkms_tree.take());
        b.conf_dir = n.conf_dir.or(b.conf_dir.take());
        b.timeout_secs = n.timeout_secs.or(b.timeout_secs);
        b.space_mib = n.space_mib.or(b.space_mib);
        b.memory_mib = n.memory_mib.or(b.memory_mib);
        b.pids = n.pids.or(b.pids);
        self.sign.enabled = o.sign.enabled.or(self.sign.enabled);
        self.sign.dkms_mok_dir = o.sign.dkms_mok_dir.or(self.sign.dkms_mok_dir.take());
        self.modules.extend(o.modules);
        // A later file naming caches replaces the list (and whether it may use http): caches
        // are tried in order.
        if !o.prebuilt.urls.is_empty() {
            self.prebuilt.urls = o.prebuilt.urls;
            self.prebuilt.allow_http = o.prebuilt.allow_http;
        }
        if !o.prebuilt.keys.is_empty() {
            self.prebuilt.keys = o.prebuilt.keys;
        }
        if !o.prebuilt.module_certs.is_empty() {
            self.prebuilt.module_certs = o.prebuilt.module_certs;
        }
        self.prebuilt.built_on = o.prebuilt.built_on.or(self.prebuilt.built_on.take());
        let (g, n) = (&mut self.gate, o.gate);
        g.on_failure = n.on_failure.or(g.on_failure);
        g.verify = n.verify.or(g.verify);
        g.prebuilt_only = n.prebuilt_only.or(g.prebuilt_only);
        g.state_dir = n.state_dir.or(g.state_dir.take());
    }

    /// Whether builds sign modules (for kernels with a CONFIG_MODULE_SIG_HASH).
    pub fn sign_enabled(&self) -> bool {
        self.sign.enabled.unwrap_or(true)
    }

    /// Where the signing key pair is looked for; `dkms_tree` holds ckms's own pair.
    pub fn key_locations(&self, dkms_tree: &std::path::Path) -> Locations {
        let dkms_dir = self
            .env("CKMS_DKMS_MOK_DIR")
            .map(PathBuf::from)
            .or_else(|| self.sign.dkms_mok_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/dkms"));
        Locations { conf_dir: self.conf_dir(), dkms_dir, own_dir: dkms_tree.to_path_buf(), kernel: None }
    }

    /// The dkms tree: CKMS_DKMS_TREE, else the config's, else /var/lib/ckms.
    pub fn dkms_tree(&self) -> PathBuf {
        self.env("CKMS_DKMS_TREE")
            .map(PathBuf::from)
            .or_else(|| self.build.dkms_tree.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TREE))
    }

    /// Where /etc/dkms/<module>*.conf overrides are read from.
    pub fn conf_dir(&self) -> PathBuf {
        self.env("CKMS_CONF_DIR")
            .map(PathBuf::from)
            .or_else(|| self.build.conf_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/etc/dkms"))
    }

    /// One build's wall-clock limit: CKMS_BUILD_TIMEOUT (seconds), else the config's, else 30 min.
    pub fn build_timeout(&self) -> Duration {
        let secs = self.env("CKMS_BUILD_TIMEOUT").and_then(|v| v.parse().ok()).or(self.build.timeout_secs);
        Duration::from_secs(secs.unwrap_or(1800))
    }

    /// Extra packages `module`'s builds need.
    pub fn module_packages(&self, module: &str) -> Vec<String> {
        self.modules.get(module).map(|m| m.packages.clone()).unwrap_or_default()
    }

    fn env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The dkms release whose lines ckms prints as `dkms` (CKMS_DKMS_RELEASE), when set.
    pub fn dkms_release(&self) -> Option<&str> {
        self.env("CKMS_DKMS_RELEASE")
    }

    pub fn cache_root(&self) -> PathBuf {
        self.env("CKMS_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| self.cache_dir.clone())
            .unwrap_or_else(Cache::default_root)
    }

    fn apt_dir(&self) -> PathBuf {
        self.env("CKMS_APT_DIR")
            .map(PathBuf::from)
            .or_else(|| self.apt_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/etc/apt"))
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings { host: self.engine.host.clone(), rootless_user: self.engine.rootless_user.clone() }
    }

    pub fn repo_options(&self, profile: &Profile, refresh: bool) -> RepoOptions {
        let max_age = self
            .env("CKMS_INDEX_MAX_AGE")
            .and_then(|s| s.parse().ok())
            .or(self.index_max_age_secs)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_MAX_AGE);
        let check_valid_until =
            self.check_valid_until.or_else(|| host_check_valid_until(&self.apt_dir())).unwrap_or(true);
        RepoOptions { keyrings: profile.existing_keyrings(), check_valid_until, max_age, refresh }
    }

    /// The suites a profile reads, each with its mirror URL resolved.
    pub fn suites(&self, catalog: &Catalog, profile: &Profile) -> Result<Vec<SuiteSpec>> {
        let host = read_host_sources(&self.apt_dir())?;
        profile
            .suites
            .iter()
            .map(|s| {
                let mirror = self.mirror(catalog, &s.mirror, &host).ok_or_else(|| ConfigError::NoMirror {
                    role: s.mirror.clone(),
                    suite: s.suite.clone(),
                    env: env_name(&s.mirror),
                })?;
                Ok(SuiteSpec {
                    mirror,
                    suite: s.suite.clone(),
                    components: s.components.clone(),
                    arch: profile.arch.clone(),
                })
            })
            .collect()
    }

    fn mirror(&self, catalog: &Catalog, role: &str, host: &[AptSource]) -> Option<String> {
        let url = self.env(&env_name(role)).map(str::to_string).or_else(|| self.mirrors.get(role).cloned()).or_else(
            || {
                let pattern = &catalog.mirrors.get(role)?.host_suites;
                host.iter()
                    .filter(|s| s.enabled && s.types.iter().any(|t| t == "deb"))
                    .find(|s| s.suites.iter().any(|suite| pattern.is_match(suite)))
                    .and_then(|s| s.uris.first().cloned())
            },
        )?;
        Some(url.trim_end_matches('/').to_string())
    }
}

/// `debian-security` -> `CKMS_MIRROR_DEBIAN_SECURITY`
pub fn env_name(role: &str) -> String {
    format!("CKMS_MIRROR_{}", role.to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn catalog() -> Catalog {
        Catalog::load(&[]).unwrap()
    }

    fn host() -> Vec<AptSource> {
        let src = |uri: &str, suites: &[&str]| AptSource {
            types: vec!["deb".into()],
            uris: vec![uri.into()],
            suites: suites.iter().map(|s| s.to_string()).collect(),
            components: vec!["main".into()],
            signed_by: None,
            enabled: true,
        };
        vec![
            src("http://vendor.example/apt", &["nodistro"]),
            src("http://mirror.example/debian/", &["bookworm", "bookworm-updates"]),
            src("http://mirror.example/debian-security", &["bookworm-security"]),
        ]
    }

    #[test]
    fn mirrors_come_from_the_host_by_suite_pattern() {
        let cfg = Config::default();
        let c = catalog();
        assert_eq!(cfg.mirror(&c, "debian", &host()).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(
            cfg.mirror(&c, "debian-security", &host()).as_deref(),
            Some("http://mirror.example/debian-security")
        );
    }

    #[test]
    fn build_settings_and_module_packages() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(
            &a,
            "[build]\ntimeout_secs = 60\nspace_mib = 64\n[modules.v4l2loopback]\npackages = [\"pkg-config\"]\n",
        )
        .unwrap();
        std::fs::write(&b, "[build]\ndkms_tree = \"/srv/tree\"\n").unwrap();
        let env = BTreeMap::from([("CKMS_BUILD_TIMEOUT".to_string(), "20".to_string())]);
        let cfg = Config::load_from(&[a, b], env).unwrap();
        assert_eq!(cfg.build_timeout(), Duration::from_secs(20), "the environment wins");
        assert_eq!(cfg.build.space_mib, Some(64), "a later file keeps what it does not set");
        assert_eq!(cfg.dkms_tree(), PathBuf::from("/srv/tree"));
        assert_eq!(cfg.module_packages("v4l2loopback"), ["pkg-config"]);
        assert!(cfg.module_packages("other").is_empty());
        assert_eq!(Config::default().dkms_tree(), PathBuf::from("/var/lib/ckms"));
        assert_eq!(Config::default().conf_dir(), PathBuf::from("/etc/dkms"));
    }

    #[test]
    fn env_beats_config_beats_host() {
        let c = catalog();
        let mut cfg = Config::default();
        cfg.mirrors.insert("debian".into(), "http://cfg.example/d".into());
        assert_eq!(cfg.mirror(&c, "debian", &host()).as_deref(), Some("http://cfg.example/d"));
        cfg.env.insert("CKMS_MIRROR_DEBIAN".into(), "http://env.example/d/".into());
        assert_eq!(cfg.mirror(&c, "debian", &host()).as_deref(), Some("http://env.example/d"));
    }

    #[test]
    fn signing_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(&a, "[sign]\nenabled = false\ndkms_mok_dir = '/srv/dkms'\n").unwrap();
        std::fs::write(&b, "[build]\nconf_dir = '/srv/etc'\n").unwrap();
        let cfg = Config::load_from(&[a.clone(), b], BTreeMap::new()).unwrap();
        assert!(!cfg.sign_enabled(), "a later file keeps [sign] enabled = false");
        let loc = cfg.key_locations(Path::new("/tree"));
        assert_eq!(
            (loc.conf_dir, loc.dkms_dir, loc.own_dir),
            (PathBuf::from("/srv/etc"), PathBuf::from("/srv/dkms"), PathBuf::from("/tree"))
        );
        let env = BTreeMap::from([("CKMS_DKMS_MOK_DIR".to_string(), "/env/dkms".to_string())]);
        let cfg = Config::load_from(&[a], env).unwrap();
        assert_eq!(cfg.key_locations(Path::new("/t")).dkms_dir, PathBuf::from("/env/dkms"));
        assert!(Config::default().sign_enabled(), "signing is on by default, as in dkms");
        assert_eq!(Config::default().key_locations(Path::new("/t")).dkms_dir, PathBuf::from("/var/lib/dkms"));
    }

    #[test]
    fn no_mirror_is_none() {
        assert_eq!(Config::default().mirror(&catalog(), "debian", &[]), None);
        assert_eq!(env_name("debian-security"), "CKMS_MIRROR_DEBIAN_SECURITY");
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "cache_dir = '/a'\n[mirrors]\ndebian = 'http://a'\n").unwrap();
        std::fs::write(&b, "[engine]\nhost = 'unix:///b.sock'\n[mirrors]\ndebian = 'http://b'\n").unwrap();
        let cfg = Config::load_from(&[a, b, dir.path().join("missing.toml")], BTreeMap::new()).unwrap();
        assert_eq!(cfg.cache_dir.as_deref(), Some(Path::new("/a")));
        assert_eq!(cfg.engine.host.as_deref(), Some("unix:///b.sock"));
        assert_eq!(cfg.mirrors["debian"], "http://b");
    }

    #[test]
    fn prebuilt_caches_are_replaced_as_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        let caches = "[prebuilt]\nurls = ['https://one/', 'https://two/']\nkeys = ['/etc/ckms/farm.pub.asc']\n";
        std::fs::write(&a, caches).unwrap();
        std::fs::write(&b, "[prebuilt]\nurls = ['/srv/cache']\n").unwrap();
        let cfg = Config::load_from(std::slice::from_ref(&a), BTreeMap::new()).unwrap();
        assert_eq!(cfg.prebuilt.urls, ["https://one/", "https://two/"]);
        let cfg = Config::load_from(&[a.clone(), b.clone()], BTreeMap::new()).unwrap();
        assert_eq!(cfg.prebuilt.urls, ["/srv/cache"], "a later file's caches replace the order, not extend it");
        assert_eq!(cfg.prebuilt.keys, [PathBuf::from("/etc/ckms/farm.pub.asc")], "keys kept when not named");
        assert!(Config::default().prebuilt.urls.is_empty(), "no cache unless configured");
        std::fs::write(&b, "[prebuilt]\nmodule_certs = ['/etc/ckms/farm-b.der']\n").unwrap();
        let cfg = Config::load_from(&[a, b], BTreeMap::new()).unwrap();
        assert_eq!(cfg.prebuilt.module_certs, [PathBuf::from("/etc/ckms/farm-b.der")]);
    }

    #[test]
    fn a_typo_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "cache_dirr = '/a'\n").unwrap();
        let err = Config::load_from(&[a], BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("a.toml"), "{err}");
    }
}
