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

/// What dkms refuses a verb with a code of its own: several kernels where it takes one (4),
/// `--all` where it has no meaning (5).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
    pub code: i32,
}

impl Refused {
    /// dkms's `have_one_kernel` for `action`, given `kernels` on the command line.
    pub fn one_kernel(action: &str, kernels: usize, all: bool) -> Result<(), Refused> {
        if all {
            return Err(Refused {
                message: format!("The action {action} does not support the --all parameter."),
                code: 5,
            });
        }
        if kernels == 1 || (kernels == 0 && !action.starts_with("kernel_")) {
            return Ok(());
        }
        let message = match action.starts_with("kernel_") {
            true => format!("The action {action} requires exactly one kernel version parameter on the command line."),
            false => {
                format!("The action {action} does not support multiple kernel version parameters on the command line.")
            }
        };
        Err(Refused { message, code: 4 })
    }

    /// dkms's check_module_args for `action`: no module and version were named (1).
    pub fn module_args(action: &str) -> Refused {
        let message = format!(
            "Arguments <module> and <module-version> are not specified.\nUsage: {action} <module>/<module-version> or\n       \
             {action} -m <module>/<module-version> or\n       {action} -m <module> -v <module-version>"
        );
        Refused { message, code: 1 }
    }

    /// dkms 3.2's first step, whatever the verb: the distribution from os-release, or 4.
    pub fn without_os_release(required: bool, os_release: Option<&str>) -> Result<(), Refused> {
        match required && os_release.is_none() {
            true => Err(Refused { message: "System is missing os-release file.".into(), code: 4 }),
            false => Ok(()),
        }
    }
}

impl Diagnose for Refused {
    fn exit_code(&self) -> i32 {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kernel_as_dkms_says_it() {
        assert!(Refused::one_kernel("autoinstall", 0, false).is_ok());
        assert!(Refused::one_kernel("kernel_prerm", 1, false).is_ok());
        let e = Refused::one_kernel("kernel_prerm", 0, false).unwrap_err();
        assert_eq!((e.code, e.message.contains("requires exactly one")), (4, true));
        assert_eq!(Refused::one_kernel("autoinstall", 2, false).unwrap_err().code, 4);
        assert_eq!(Refused::one_kernel("autoinstall", 1, true).unwrap_err().code, 5);
        assert_eq!(Refused::without_os_release(true, None).unwrap_err().code, 4);
        assert!(Refused::without_os_release(true, Some("ID=debian")).is_ok());
        assert!(Refused::without_os_release(false, None).is_ok());
    }
}
