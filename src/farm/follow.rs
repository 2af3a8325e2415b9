//! `farm follow`: the farm as a service that follows the distribution's archive. Its settings
//! ([`FollowConfig`]: the options of `farm build` and of each `farm publish`, as tables), its
//! state (kept in the store, so a restart goes on where it stopped), and what it tells a
//! monitoring system ([`State::metrics`], Prometheus's text format). The loop itself is the
//! command's (`cli::farm_follow`): it runs the same build and publish as the commands do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ready::KernelReadiness;
use super::store::Store;
use super::FarmError;

/// The follow configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    /// The store every cycle builds into.
    pub store: PathBuf,
    /// Seconds between polls of the archive (default 300).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Where the status JSON is written (default `<store>/follow/status.json`).
    pub status_file: Option<PathBuf>,
    /// Serve the metrics in Prometheus's text format at http://ADDR/metrics (a loopback
    /// address, e.g. 127.0.0.1:9464).
    pub metrics: Option<String>,
    /// The options of `ckms farm build` (`kernel`, `sources`, `verify`, `key`, ...).
    pub build: toml::Table,
    /// Each output: the options of `ckms farm publish` (`format`, `out`, `key`, ...).
    #[serde(default)]
    pub publish: Vec<toml::Table>,
    /// Build through Kubernetes Jobs (the follow pod of `farm kube follow-render`): the
    /// options of `ckms farm kube render`, and `results`, where this pod sees the results claim.
    pub kube: Option<toml::Table>,
}

fn default_interval() -> u64 {
    300
}

impl FollowConfig {
    pub fn load(path: &Path) -> Result<FollowConfig, FarmError> {
        let bad = |message: String| FarmError::Follow { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let cfg: FollowConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(addr) = &cfg.metrics {
            let ip = addr.parse::<std::net::SocketAddr>().map_err(|e| bad(format!("metrics = {addr:?}: {e}")))?;
            if !ip.ip().is_loopback() {
                return Err(bad(format!(
                    "metrics = {addr:?}: not a loopback address; put a proxy in front to serve it further"
                )));
            }
        }
        Ok(cfg)
    }

    /// Every absolute path the configuration names (the store, the status file, any option's
    /// value), by where it is named: a pod has only the directories its volumes mount.
    pub fn paths(&self) -> Vec<(String, String)> {
        let mut out = vec![("store".to_string(), self.store.display().to_string())];
        if let Some(f) = &self.status_file {
            out.push(("status_file".into(), f.display().to_string()));
        }
        let tables = [("build".to_string(), &self.build)].into_iter();
        let publish = self.publish.iter().enumerate().map(|(i, t)| (format!("publish #{}", i + 1), t));
        for (name, table) in tables.chain(publish).chain(self.kube.iter().map(|t| ("kube".to_string(), t))) {
            for (key, value) in table {
                let values = match value {
                    toml::Value::Array(a) => a.clone(),
                    v => vec![v.clone()],
                };
                for v in values.iter().filter_map(|v| v.as_str()).filter(|v| v.starts_with('/')) {
                    out.push((format!("[{name}] {key}"), v.to_string()));
                }
            }
        }
        out
    }

    pub fn status_file(&self) -> PathBuf {
        self.status_file.clone().unwrap_or_else(|| self.store.join("follow/status.json"))
    }

    /// The profiles whose archives the build's kernel selectors reach: `@PROFILE...` names
    /// one, `profile` restricts to one; a plain release or pattern may be in any.
    pub fn profiles(&self, all: &[String]) -> Vec<String> {
        if let Some(p) = self.build.get("profile").and_then(|v| v.as_str()) {
            return vec![p.to_string()];
        }
        let selectors: Vec<&str> = match self.build.get("kernel") {
            Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(toml::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        };
        let named: BTreeSet<String> = selectors
            .iter()
            .filter_map(|s| s.strip_prefix('@'))
            .map(|s| s.split(':').next().unwrap_or(s).to_string())
            .collect();
        if named.is_empty() || selectors.iter().any(|s| !s.starts_with('@')) {
            return all.to_vec();
        }
        named.into_iter().collect()
    }
}

/// A table of options as a command line: `key = "v"` → `--key v`, `flag = true` → `--flag`,
/// `list = ["a", "b"]` → `--list a --list b`; the `positional` key's values come last.
pub fn argv(table: &toml::Table, positional: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut rest = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let values = match value {
            toml::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(true) => {
                    args.push(flag.clone());
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                other => return Err(format!("{key} = {other}: a string, number, boolean or a list of them")),
            };
            if key == positional {
                rest.push(text);
            } else {
                args.extend([flag.clone(), text]);
            }
        }
    }
    args.extend(rest);
    Ok(args)
}

/// What follow keeps between cycles and restarts: `<store>/follow/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub polls: u64,
    pub cycles: u64,
    /// Seconds since 1970 of the last poll that reached the mirrors.
    pub last_poll: Option<u64>,
    /// Bytes the last poll received (0: every index unchanged).
    pub last_poll_bytes: u64,
    /// CPU seconds the last poll took.
    pub last_poll_cpu_seconds: f64,
    /// When a change was seen that is not published yet (kept over a restart).
    pub pending_since: Option<u64>,
    pub last_publication: Option<u64>,
    /// From an index change to its publication, the last time.
    pub last_latency_seconds: Option<f64>,
    pub kernels_seen: BTreeSet<String>,
    /// Pairs the cycles built (not from the store).
    pub pairs_built: u64,
    /// Pairs of the matrix whose build failed, after the last cycle.
    pub pairs_failed: u64,
    pub mirror_errors: u64,
    /// Mirror errors in a row: the next poll waits longer.
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    /// The readiness of each kernel after the last publication.
    pub kernels: Vec<KernelReadiness>,
    /// The last publication per output, by its `out`.
    pub outputs: BTreeMap<String, u64>,
    /// A digest of the build's and the outputs' options the last cycle ran with: another
    /// configuration (a module added, an output) is a change to publish too.
    pub config: Option<String>,
}

const STATE: &str = "follow/state.json";

impl State {
    /// The store's follow state; a new one when there is none or it does not read.
    pub fn load(store: &Store) -> State {
        store.read_file(STATE).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save(&self, store: &Store) -> Result<(), FarmError> {
        let dir = store.root().join("follow");
        std::fs::create_dir_all(&dir).map_err(FarmError::io(&dir))?;
        store.write_file(STATE, &serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    /// How long to wait before the next poll: the interval, or after mirror errors in a row a
    /// back-off from 15 s doubling up to the interval.
    pub fn wait(&self, interval: Duration) -> Duration {
        if self.consecutive_errors == 0 {
            return interval;
        }
        let backoff = Duration::from_secs(15 << self.consecutive_errors.min(10).saturating_sub(1));
        backoff.min(interval)
    }

    /// Prometheus's text exposition format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out += &format!("# HELP ckms_follow_{name} {help}\n# TYPE ckms_follow_{name} {kind}\n");
            for (labels, v) in samples {
                out += &format!("ckms_follow_{name}{labels} {v}\n");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        let opt = |v: Option<f64>| v.map(one).unwrap_or_default();
        put("polls_total", "counter", "Polls of the archives' indexes.", one(self.polls as f64));
        put("cycles_total", "counter", "Cycles run (poll, build, publish).", one(self.cycles as f64));
        put(
            "last_poll_timestamp_seconds",
            "gauge",
            "When the archives were last reached.",
            opt(self.last_poll.map(|t| t as f64)),
        );
        put("last_poll_bytes", "gauge", "Bytes the last poll received.", one(self.last_poll_bytes as f64));
        put("kernels_seen", "gauge", "Kernels the selectors have reached.", one(self.kernels_seen.len() as f64));
        put("pairs_built_total", "counter", "Pairs built.", one(self.pairs_built as f64));
        put("pairs_failed", "gauge", "Pairs of the matrix whose build failed.", one(self.pairs_failed as f64));
        put("mirror_errors_total", "counter", "Polls the mirrors did not answer.", one(self.mirror_errors as f64));
        put(
            "pending",
            "gauge",
            "1 while an index change is not published yet.",
            one(f64::from(u8::from(self.pending_since.is_some()))),
        );
        put(
            "last_publication_timestamp_seconds",
            "gauge",
            "When every output was last published.",
            opt(self.last_publication.map(|t| t as f64)),
        );
        put(
            "publication_latency_seconds",
            "gauge",
            "From the last index change to its publication.",
            opt(self.last_latency_seconds),
        );
        let ready = self.kernels.iter().map(|k| (format!("{{kernel=\"{}\"}}", k.kernel), f64::from(u8::from(k.ready))));
        put(
            "kernel_ready",
            "gauge",
            "1 when every module is built, signed and proven to load for the kernel.",
            ready.collect(),
        );
        out
    }
}

/// Seconds since 1970, now.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> FollowConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn tables_become_the_commands_options() {
        let cfg = config(
            "store = '/s'\n[build]\nkernel = ['@debian-bookworm:latest', '6.1.0-56-amd64']\nsources = ['deb:a', './b']\nverify = true\ncheck = false\njobs = 2\n[[publish]]\nformat = 'cache'\nout = '/srv/cache'\n",
        );
        let build = argv(&cfg.build, "sources").unwrap();
        assert_eq!(
            build,
            [
                "--jobs",
                "2",
                "--kernel",
                "@debian-bookworm:latest",
                "--kernel",
                "6.1.0-56-amd64",
                "--verify",
                "deb:a",
                "./b"
            ]
        );
        assert_eq!(argv(&cfg.publish[0], "").unwrap(), ["--format", "cache", "--out", "/srv/cache"]);
        assert_eq!(cfg.interval_secs, 300);
        let all = ["debian-bookworm".to_string(), "debian-trixie".to_string()];
        assert_eq!(cfg.profiles(&all), all, "a plain release may be in any profile");
        let only = config("store = '/s'\n[build]\nkernel = ['@debian-trixie:latest=2']\n");
        assert_eq!(only.profiles(&all), ["debian-trixie"]);
    }

    #[test]
    fn metrics_and_back_off() {
        let mut s = State { polls: 3, last_poll_bytes: 0, ..State::default() };
        s.kernels.push(KernelReadiness { kernel: "6.1.0-56-amd64".into(), ready: true, modules: vec![] });
        let text = s.metrics();
        assert!(text.contains("# TYPE ckms_follow_polls_total counter\nckms_follow_polls_total 3\n"), "{text}");
        assert!(text.contains("ckms_follow_kernel_ready{kernel=\"6.1.0-56-amd64\"} 1\n"), "{text}");
        assert!(!text.contains("\nckms_follow_publication_latency_seconds "), "no sample before a publication: {text}");
        let interval = Duration::from_secs(300);
        assert_eq!(s.wait(interval), interval);
        s.consecutive_errors = 1;
        assert_eq!(s.wait(interval), Duration::from_secs(15));
        s.consecutive_errors = 3;
        assert_eq!(s.wait(interval), Duration::from_secs(60));
        s.consecutive_errors = 9;
        assert_eq!(s.wait(interval), interval);
    }

    #[test]
    fn paths_are_every_absolute_one_the_config_names() {
        let cfg = config(
            "store = '/var/lib/ckms/store'\n[build]\nkey = '/keys/mok.key'\nsources = ['deb:a', '/src/b']\n[[publish]]\nout = '/srv/out'\n[kube]\nresults = '/results'\n",
        );
        let paths: Vec<String> = cfg.paths().into_iter().map(|(w, p)| format!("{w}={p}")).collect();
        assert_eq!(
            paths,
            [
                "store=/var/lib/ckms/store",
                "[build] key=/keys/mok.key",
                "[build] sources=/src/b",
                "[publish #1] out=/srv/out",
                "[kube] results=/results"
            ]
        );
    }

    #[test]
    fn the_metrics_address_must_be_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("follow.toml");
        std::fs::write(&path, "store = '/s'\nmetrics = '0.0.0.0:9464'\n[build]\n").unwrap();
        let e = FollowConfig::load(&path).unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
    }
}
