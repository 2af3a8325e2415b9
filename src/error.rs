//! [`Usage`]: a bad command line or setting, the one error that belongs to no module. Every
//! module's error is its own enum (see docs/architecture.md, "Errors"); the binary erases them
//! into one only to print them.

use crate::diagnose::{code, Diagnose};

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
