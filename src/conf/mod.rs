//! dkms.conf semantics: evaluating the file and turning its directives into a build plan.
//!
//! A dkms.conf is bash, so it is evaluated by bash, and only inside the sandboxed builder
//! container (never on the host): [`eval_script`] is the script to run there with the
//! variables of [`eval_env`]; it prints one JSON object with the whitelisted directives, which
//! [`parse`] reads into a [`RawConf`]. [`resolve`] then applies dkms's rules for one kernel
//! (MAKE_MATCH, PATCH_MATCH, BUILD_EXCLUSIVE_*, defaults, validation) and gives either a
//! [`BuildPlan`] or [`Resolved::Skipped`].

mod literal;
mod resolve;
mod version;

#[cfg(test)]
mod tests;

pub use literal::{Findings, Literal};
pub use resolve::{resolve, BuildPlan, DestPolicy, Hooks, KernelFacts, Module, Resolved};
pub use version::compare as version_compare;

use std::collections::BTreeMap;
use thiserror::Error;

use crate::diagnose::{code, Diagnose};

#[derive(Debug, Error)]
pub enum ConfError {
    /// bash could not evaluate the file (syntax error, unreadable file).
    #[error("{origin}: bash could not evaluate it: {stderr}")]
    Eval { origin: String, stderr: String },
    /// The evaluation printed something that is not the expected JSON.
    #[error("{origin}: unexpected output from the dkms.conf evaluation: {message}")]
    Output { origin: String, message: String },
    /// A directive is missing or has a value dkms rejects.
    #[error("{origin}: {directive}: {message}")]
    Invalid { origin: String, directive: String, message: String, hint: String },
}

impl Diagnose for ConfError {
    fn exit_code(&self) -> i32 {
        code::BAD_CONF
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ConfError::Eval { origin, .. } => {
                format!("fix the file; `bash -n {origin}` shows bash's complaint")
            }
            ConfError::Output { .. } => {
                "the builder image's bash misbehaved; rebuild the image with `ckms image build --force`".into()
            }
            ConfError::Invalid { hint, .. } => hint.clone(),
        })
    }
}

pub(crate) fn invalid(origin: &str, directive: &str, message: impl Into<String>, hint: impl Into<String>) -> ConfError {
    ConfError::Invalid {
        origin: origin.to_string(),
        directive: directive.to_string(),
        message: message.into(),
        hint: hint.into(),
    }
}

/// The bash script that evaluates a dkms.conf (see its header for input and output).
pub fn eval_script() -> &'static str {
    include_str!("eval.sh")
}

/// What dkms makes visible to a dkms.conf, plus where ckms's script finds the files.
#[derive(Debug, Clone)]
pub struct EvalContext {
    /// The dkms.conf path as the container sees it.
    pub conf_path: String,
    /// Directory of the /etc/dkms/<m>[-<v>[-<kver>[-<arch>]]].conf overrides, as the container
    /// sees it; None when no overrides are mounted.
    pub override_dir: Option<String>,
    pub kernelver: String,
    pub arch: String,
    pub kernel_source_dir: String,
    pub dkms_tree: String,
    pub source_tree: String,
    pub install_tree: String,
    pub module: String,
    pub module_version: String,
}

/// `NAME=value` pairs to run [`eval_script`] with.
pub fn eval_env(ctx: &EvalContext) -> Vec<String> {
    [
        ("ckms_conf", ctx.conf_path.as_str()),
        ("ckms_override_dir", ctx.override_dir.as_deref().unwrap_or("")),
        ("kernelver", &ctx.kernelver),
        ("arch", &ctx.arch),
        ("kernel_source_dir", &ctx.kernel_source_dir),
        ("dkms_tree", &ctx.dkms_tree),
        ("source_tree", &ctx.source_tree),
        ("install_tree", &ctx.install_tree),
        ("module", &ctx.module),
        ("module_version", &ctx.module_version),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}"))
    .collect()
}

/// The directives a dkms.conf set, as bash left them: every directive is an index map because
/// in bash `NAME=x` is `NAME[0]=x`; sparse arrays keep their gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConf {
    /// Where the conf came from, for messages.
    pub origin: String,
    /// The dkms variables the conf was evaluated with (kernel_source_dir, dkms_tree, ...).
    pub context: BTreeMap<String, String>,
    pub directives: BTreeMap<String, BTreeMap<u32, String>>,
}

impl RawConf {
    /// A scalar directive: element 0, as `$NAME` reads it in bash.
    pub fn scalar(&self, name: &str) -> Option<&str> {
        self.directives.get(name)?.get(&0).map(String::as_str)
    }

    /// A scalar that is set and not empty (dkms tests `[[ $NAME ]]`).
    pub fn nonempty(&self, name: &str) -> Option<&str> {
        self.scalar(name).filter(|s| !s.is_empty())
    }

    /// An array directive by index; empty if unset.
    pub fn array(&self, name: &str) -> &BTreeMap<u32, String> {
        static EMPTY: BTreeMap<u32, String> = BTreeMap::new();
        self.directives.get(name).unwrap_or(&EMPTY)
    }

    /// Element `index` of an array, if set and not empty.
    pub fn at(&self, name: &str, index: u32) -> Option<&str> {
        self.array(name).get(&index).map(String::as_str).filter(|s| !s.is_empty())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    context: BTreeMap<String, String>,
    directives: BTreeMap<String, BTreeMap<String, String>>,
}

/// Reads the JSON [`eval_script`] printed.
pub fn parse(json: &str, origin: &str) -> Result<RawConf, ConfError> {
    let output = |message: String| ConfError::Output { origin: origin.to_string(), message };
    let wire: Wire = serde_json::from_str(json).map_err(|e| output(e.to_string()))?;
    let mut directives = BTreeMap::new();
    for (name, values) in wire.directives {
        let mut array = BTreeMap::new();
        for (index, value) in values {
            // An associative array (`declare -A MAKE`) would give non-numeric keys; dkms reads
            // its directives as indexed arrays only, so such a conf is broken.
            let i: u32 = index.parse().map_err(|_| {
                invalid(
                    origin,
                    &name,
                    format!("index '{index}' is not a number"),
                    "dkms directives are indexed arrays: use NAME[0]=..., not declare -A",
                )
            })?;
            array.insert(i, value);
        }
        directives.insert(name, array);
    }
    Ok(RawConf { origin: origin.to_string(), context: wire.context, directives })
}

/// Interprets a finished run of [`eval_script`]: its exit status, stdout and stderr.
pub fn from_output(status: i32, stdout: &[u8], stderr: &[u8], origin: &str) -> Result<RawConf, ConfError> {
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    if status != 0 {
        return Err(ConfError::Eval { origin: origin.to_string(), stderr });
    }
    let stdout = String::from_utf8_lossy(stdout);
    if stdout.trim().is_empty() {
        // The conf itself called `exit`: dkms would have read nothing back either.
        return Err(ConfError::Eval {
            origin: origin.to_string(),
            stderr: if stderr.is_empty() { "it exited before its directives could be read".into() } else { stderr },
        });
    }
    parse(stdout.trim(), origin)
}
