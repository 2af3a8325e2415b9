//! One (module, kernel, arch) pair: the core every feature sits on, split as Nix splits a build.
//!
//! - evaluation: [`inputs`] gathers everything that decides a pair's output (the source tree's
//!   digest, the overrides, the builder image's lock, the recipe, the kernel and arch, the
//!   siblings it sees, the pairs it builds against) into [`key::Inputs`], whose
//!   [`key::Inputs::key`] is a pure digest: no file written, no engine;
//! - realisation: [`realise::realise`] builds one pair in its sandbox through the
//!   [`crate::engine::Runner`] seam and stages the result (modules unsigned and signed,
//!   make.log, the [`manifest::Manifest`]); failures, skips and missing dependencies are
//!   [`realise::Realised`] values, not errors;
//! - substitution: [`substitute::Substituter`] is where a finished pair is fetched by its key
//!   instead of being built (a farm's binary cache).
//!
//! Where a staged result goes is the caller's: the dkms verbs commit it into a dkms tree
//! ([`crate::lifecycle`]), the farm into its store ([`crate::farm`]), `farm kube collect` after
//! replaying a pod's transcript ([`crate::kube`]).

mod error;
pub mod inputs;
pub mod key;
pub mod manifest;
pub mod realise;
pub mod substitute;

pub use error::PairError;
pub use key::Inputs;
pub use manifest::{Manifest, ManifestModule};

/// A module version: what `-m M -v V` or `M/V` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ModuleVersion {
    pub module: String,
    pub version: String,
}

impl std::fmt::Display for ModuleVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.module, self.version)
    }
}
