//! [`Error`]: any ckms failure, as the binary and the verbs that compose many steps see it.
//!
//! It carries one module's error (anything implementing [`Diagnose`]) without naming the
//! modules: `?` converts every module's error into it, and nothing here imports them back,
//! so the errors form no circle (the enum this replaces imported all 14 module errors, each
//! of which imported it). It is only ever shown: outcomes a caller must tell apart are values
//! (e.g. [`crate::pair::realise::Realised`]), never found by downcasting this.

use crate::diagnose::{code, Diagnose};

/// One module's error, with its exit code and hint.
pub struct Error(Box<dyn Diagnose + Send + Sync>);

impl<E: Diagnose + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Self {
        Error(Box::new(e))
    }
}

impl Error {
    /// A bad command line or setting, with what to do about it.
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> Error {
        Usage { message: message.into(), hint }.into()
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        self.0.exit_code()
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        self.0.hint()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A bad command line or setting.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Usage {
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnose for Usage {
    fn exit_code(&self) -> i32 {
        code::USAGE
    }
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}
