//! What every module error tells the user besides its message: the process exit code and a
//! hint saying what to do. The codes follow dkms where dkms has one for the same failure;
//! the rest are ckms's own (see docs/exit-codes.md). This module is the bottom of the error
//! graph: every module's error implements [`Diagnose`], and none needs more than this.

/// Exit codes shared by all modules, named so that the table lives in one place.
pub mod code {
    /// dkms: not root / no write access to a tree.
    pub const NO_ACCESS: i32 = 1;
    /// Bad command line or configuration; dkms: bad option, source directory missing.
    pub const USAGE: i32 = 2;
    /// dkms: already added with other contents / module version not in the tree.
    pub const NOT_IN_TREE: i32 = 3;
    /// dkms: dkms.conf not found, broken tree entry.
    pub const NO_CONF: i32 = 4;
    /// dkms: bad patch path, already installed by someone else.
    pub const REFUSED: i32 = 5;
    /// dkms: patch failed, install aborted, depmod failed (rolled back).
    pub const INSTALL_FAILED: i32 = 6;
    /// dkms: a module named in BUILT_MODULE_NAME was not produced by the build.
    pub const MODULE_MISSING: i32 = 7;
    /// dkms: bad conf.
    pub const BAD_CONF: i32 = 8;
    /// dkms: make returned non-zero.
    pub const BUILD_FAILED: i32 = 10;
    /// dkms: autoinstall: one or more modules failed (the others were still done).
    pub const AUTOINSTALL_FAILED: i32 = 11;
    /// dkms: a BUILD_DEPENDS module is not in the tree.
    pub const MISSING_DEPENDS: i32 = 13;
    /// ckms verify: a module did not load into its target kernel in the VM.
    pub const NOT_LOADED: i32 = 12;
    /// dkms: kernel hook failed.
    pub const HOOK_FAILED: i32 = 14;
    /// dkms: kernel headers not found. ckms: no profile offers that kernel.
    pub const UNKNOWN_KERNEL: i32 = 21;
    /// A profile or image recipe under profiles/ or images/ is broken.
    pub const BAD_PROFILE: i32 = 22;
    /// A package mirror could not be reached or answered with an error.
    pub const MIRROR_UNREACHABLE: i32 = 30;
    /// A repository index failed its signature or Valid-Until check.
    pub const BAD_SIGNATURE: i32 = 31;
    /// Downloaded data did not match the checksum the signed index gives, even after a retry.
    pub const CHECKSUM_MISMATCH: i32 = 32;
    /// Packages could not be resolved (missing dependency, unsatisfiable version).
    pub const UNRESOLVABLE: i32 = 33;
    /// The local cache or an output file could not be read or written (disk full, permissions).
    pub const IO: i32 = 34;
    /// The farm's store holds damaged entries (a record that does not read, a file whose
    /// digest is not its record's, a name leaving its entry): `farm status|report|publish`.
    pub const DAMAGED_STORE: i32 = 35;
    /// No container engine answered and none could be started.
    pub const NO_ENGINE: i32 = 40;
    /// The container engine answered but refused or failed an operation.
    pub const ENGINE_FAILED: i32 = 41;
    /// A build inside a container did not finish in its time limit.
    pub const TIMEOUT: i32 = 42;
    /// A module could not be signed: the key or certificate is missing, unreadable, locked
    /// by a passphrase not given, or they do not match.
    pub const SIGNING_FAILED: i32 = 50;
    /// A module's signature is missing where one is required, malformed, or does not verify.
    pub const BAD_MODULE_SIGNATURE: i32 = 51;
    /// dkms: skipped by BUILD_EXCLUSIVE.
    pub const SKIPPED: i32 = 77;
    /// dkms: PRE_INSTALL failed.
    pub const PRE_INSTALL_FAILED: i32 = 101;
}

/// Implemented by every module's error type.
pub trait Diagnose: std::error::Error + std::any::Any {
    /// The process exit code for this failure.
    fn exit_code(&self) -> i32;
    /// One or two sentences on what the user can do about it.
    fn hint(&self) -> Option<String> {
        None
    }
    /// The same failure in dkms's words, for callers of `dkms` (see [`crate::dialect`]); `None`
    /// where dkms has no such failure or says it as ckms does.
    fn dkms(&self) -> Option<Said> {
        None
    }
}

/// A line of dkms's, by its key in a dialect file, with the values its template names.
#[derive(Debug, Clone)]
pub struct Said {
    pub key: &'static str,
    pub values: serde_json::Value,
}
