//! Substitution: a finished pair fetched by its key instead of built here (Nix's substituters).
//! A dkms tree asks its [`Substituter`] before it realises a pair for `install`; the binary
//! cache of a farm ([`crate::prebuilt`]) is one. The substituter computes the pair's key from
//! what [`Want`] names, exactly as the farm did ([`super::inputs::kernel_pairs`]).

use std::path::PathBuf;

use super::ModuleVersion;
use crate::diagnose::Diagnose;
use crate::source::Origin;

/// A module source as a tree holds it.
#[derive(Debug, Clone)]
pub struct SourceDir {
    pub mv: ModuleVersion,
    /// `<source_tree>/<m>-<v>`, with its dkms.conf.
    pub dir: PathBuf,
    /// The Debian package it came from, when known.
    pub origin: Option<Origin>,
}

/// The pair a tree wants: its module for a kernel, and what else the build would see.
#[derive(Debug, Clone)]
pub struct Want {
    pub module: SourceDir,
    pub kernel: String,
    /// Look for the kernel only in this profile.
    pub profile: Option<String>,
    /// The tree's other modules (the newest version of each): the ones the module declares
    /// are part of its key.
    pub siblings: Vec<SourceDir>,
}

/// A pair fetched whole: its modules as they install (signed, compressed), and where from.
#[derive(Debug, Clone)]
pub struct Substitute {
    /// Where it came from, for the build record (e.g. "prebuilt <url> <key>").
    pub from: String,
    /// The profile the pair was built for.
    pub profile: String,
    pub modules: Vec<SubstitutedModule>,
    /// The SHA-256 of the certificate the modules were signed with, as the source says (to
    /// name it when this host cannot verify them); whether they must be signed is the host's
    /// kernel's decision.
    pub signed_by: Option<String>,
    /// The certificate (DER) that source publishes for `signed_by`, vouched for as the modules
    /// are: a host verifies the modules with it or with its own.
    pub certificate: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct SubstitutedModule {
    /// The module's name as the kernel knows it.
    pub name: String,
    /// Where it installs under /lib/modules/<kver>.
    pub dest: String,
    /// Its file name (e.g. `m.ko.xz`).
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// Where finished pairs can be fetched from.
#[async_trait::async_trait]
pub trait Substituter: Send + Sync {
    /// The pair `want`, checked; `None` when this substituter does not have it (the caller
    /// builds it), an error when it must not be built here instead (or what it has is bad).
    async fn substitute(&self, want: &Want) -> Result<Option<Substitute>, SubstituteError>;
}

/// Why a substituter refused: its own error (a cache's), with its exit code and hint. Boxed
/// because substituters live above this seam, which names none of them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubstituteError(pub Box<dyn Diagnose + Send + Sync>);

impl Diagnose for SubstituteError {
    fn exit_code(&self) -> i32 {
        self.0.exit_code()
    }
    fn hint(&self) -> Option<String> {
        self.0.hint()
    }
}
