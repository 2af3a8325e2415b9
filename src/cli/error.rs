//! [`Error`]: any ckms failure, as the command line sees it: one module's error (anything
//! implementing [`Diagnose`]), erased here at the edge only to be shown with its exit code
//! and hint. Outcomes a caller must tell apart are values (e.g.
//! [`ckms::pair::realise::Realised`]), never found by downcasting this.

use ckms::diagnose::{Diagnose, Said};
use ckms::error::Usage;

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

    /// The failure in dkms's words, where dkms has it.
    pub fn dkms(&self) -> Option<Said> {
        self.0.dkms()
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
