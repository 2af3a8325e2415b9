//! What dkms prints, release by release: the lines of `profiles/dkms/<release>.toml`
//! (minijinja templates), printed where dkms prints them so that callers of `dkms` that parse
//! its output read the same text from ckms. Which release: `CKMS_DKMS_RELEASE`, else the one
//! the host's distribution ships (its profile's `dkms`), else the newest known.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::diagnose::Said;

/// Every key the code prints by; each dialect file has them all (a unit test checks).
pub const KEYS: &[&str] = &[
    "error",
    "added",
    "in_tree",
    "in_tree_more",
    "no_source",
    "no_source_more",
    "sign_prologue",
    "default_sign_file",
    "build_begin",
    "build_done",
    "sign_failed",
    "build_failing",
    "build_failed",
    "build_failed_more",
    "no_headers",
    "no_headers_more",
    "make_log_header",
    "autoinstall_disabled",
    "autoinstall_broken",
    "autoinstall_module",
    "autoinstall_summary",
    "autoinstall_failed",
    "autoinstall_failed_more",
    "removing",
    "removing_end",
    "missing_depends",
    "missing_depends_more",
    "depends_forced",
    "post_transaction",
    "implicitly_added",
    "build_end",
    "build_exclusive_full",
    "broken",
    "broken_more",
    "status_broken_full",
    "bad_conf_full",
    "not_newer_full",
    "already_built",
    "installed",
    "already_installed",
    "uninstalled",
    "not_installed",
    "not_built",
    "missing_built",
    "no_module_source",
    "no_module_source_more",
    "bad_patch",
    "deprecated",
    "rebuilding",
    "removed",
    "depmod",
];

/// One dkms release's lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialect {
    pub release: String,
    /// Whether this release refuses every command (4) on a host without os-release.
    #[serde(default)]
    pub os_release_required: bool,
    pub(crate) lines: BTreeMap<String, String>,
}

impl Dialect {
    /// The line `key` says with `values`; empty when its template renders nothing.
    pub fn line(&self, key: &str, values: impl Serialize) -> String {
        let Some(template) = self.lines.get(key) else { return String::new() };
        let env = minijinja::Environment::new();
        // A template that does not render is a data bug the dialect tests catch; the caller
        // then prints nothing rather than failing the command it reports on.
        env.render_str(template, values).unwrap_or_default()
    }

    /// The line `key` says as printed (one newline is added): None when the template renders
    /// nothing; one final newline of the rendering is dropped, so that a template rendering
    /// `{{ "\n" }}` prints an empty line and one ending in two newlines is followed by one.
    pub fn said(&self, key: &str, values: impl Serialize) -> Option<String> {
        let line = self.line(key, values);
        match line.strip_suffix('\n') {
            _ if line.is_empty() => None,
            Some(shorter) => Some(shorter.to_string()),
            None => Some(line),
        }
    }

    /// A failure as dkms shows it: `said` in this release's words (its `<key>_full` line when
    /// the dialect has one: the whole text, as for dkms's warnings that exit), else `message`
    /// and `hint`.
    pub fn error(&self, said: Option<&Said>, message: &str, hint: Option<&str>) -> String {
        if let Some(whole) = said.map(|s| self.line(&format!("{}_full", s.key), &s.values)).filter(|w| !w.is_empty()) {
            return whole;
        }
        let (message, more) = match said {
            Some(said) => {
                let more = self.line(&format!("{}_more", said.key), &said.values);
                (self.line(said.key, &said.values), more)
            }
            None => (message.to_string(), hint.unwrap_or_default().to_string()),
        };
        self.line("error", serde_json::json!({ "message": message, "more": more }))
    }
}

/// The dialect to speak: `wanted` (CKMS_DKMS_RELEASE), else `host`'s (the host profile's
/// `dkms`), else the newest release known.
pub fn choose<'d>(dialects: &'d BTreeMap<String, Dialect>, wanted: Option<&str>, host: Option<&str>) -> &'d Dialect {
    let newest = || dialects.values().max_by(|a, b| release_order(&a.release, &b.release));
    wanted
        .and_then(|w| dialects.get(w))
        .or_else(|| host.and_then(|h| dialects.get(h)))
        .or_else(newest)
        .unwrap_or(&FALLBACK)
}

static FALLBACK: Dialect = Dialect { release: String::new(), os_release_required: false, lines: BTreeMap::new() };

fn release_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parts(a).cmp(&parts(b))
}
