//! Installing built modules on the host, as dkms does: into
//! `<install_tree>/<kernel><DEST_MODULE_LOCATION>/`, with any module of the same name moved
//! aside to `original_dir` and put back on uninstall, then `depmod`, then the installed marker.
//!
//! # Order, and why
//!
//! The goal: after a crash at any point, `tree::status` tells the truth and running the same
//! `install` or `uninstall` again finishes the job; `uninstall` (and a failed install's
//! rollback) leaves the install tree byte for byte as it was. Two records make that work:
//!
//! - the **journal** `<dkms_tree>/<m>/.install-<kernel>-<arch>.json`: which files ckms puts
//!   into the install tree (with their SHA-256) and which directories it creates. It is written
//!   *before* the install tree is touched and removed only *after* everything is undone, so
//!   "journal without marker" always means "an install or uninstall was interrupted";
//! - the **marker** `installed_link` (what `status` reads): written *last* on install,
//!   removed *first* on uninstall, so `installed` is never shown for something incomplete.
//!   While an operation is unfinished, `status` says `built`.
//!
//! `install`: (1) refuse if the marker names another version, check that depmod can run,
//! and stop if the same build is installed already; (2) if a journal is left over, undo it
//! first (below): half an install, or another build's, cannot be trusted to match this one;
//! (3) write the journal; (4) copy each same-named module (the destination path, other
//! suffixes next to it, and any under `<kernel>/kernel/`) to `original_dir`, keeping its path
//! relative to `<kernel>/` — a backup that already exists is never overwritten, and a file
//! byte-identical to ours is ours, not an original; (5) remove those originals that our files
//! do not replace by rename; (6) create missing directories; (7) write our files (temp file,
//! fsync, rename); (8) `depmod`, then `syncfs` so its output is on disk; (9) the marker. Any
//! failure after (3) undoes everything, `depmod` included, and reports the first error.
//!
//! `uninstall`, and the undo above: (1) remove the marker; (2) remove our files, only those
//! whose content still matches the journal's hash; (3) put each backup back (unless something
//! else now sits at that path, e.g. a kernel package update: that newer file is kept) and
//! remove it, then the empty `original_dir`; (4) remove the directories ckms created, if
//! empty; (5) `depmod`; (6) remove the journal. Every step is idempotent (a file counts as
//! ours only by its hash, a backup is restored only where nothing else stands), and
//! temporary files a crash left behind are removed on the way.
//!
//! Callers hold a [`TreeLock`] around these calls so two ckms never interleave.

pub mod compress;
mod depmod;
pub mod lock;
mod ops;
mod undo;

pub use compress::Compression;
pub use depmod::{depmod_argv, Depmod, HostDepmod};
pub use lock::TreeLock;
use undo::{undo, uninstall_with};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::diagnose::{code, Diagnose};
use crate::tree::Roots;
use ops::{Ops, TMP_PREFIX};

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    NoAccess { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("depmod for kernel {kernel} failed, so {module} was not installed (rolled back): {stderr}")]
    Depmod { module: String, kernel: String, stderr: String },
    #[error("{module} was removed from kernel {kernel}, but depmod failed: {stderr}")]
    DepmodAfterUninstall { module: String, kernel: String, stderr: String },
    #[error("cannot run depmod: {why}")]
    NoDepmod { why: String },
    #[error("depmod needs an install tree ending in lib/modules, not {path}")]
    DepmodTree { path: PathBuf },
    #[error("{module}: the built module {path} for kernel {kernel} is missing")]
    BuiltMissing { module: String, kernel: String, path: PathBuf },
    #[error("{module}: {what}")]
    BadName { module: String, what: String },
    #[error("{module}/{installed} is installed for kernel {kernel} ({arch}), not {module}/{version}")]
    OtherVersion { module: String, version: String, installed: String, kernel: String, arch: String },
    #[error("{path} is not a regular file; ckms will not replace it with {module}")]
    NotAFile { module: String, path: PathBuf },
    #[error("{path}: ckms's record of its install is unreadable: {why}")]
    BadJournal { path: PathBuf, why: String },
    #[error("{error}; undoing the install failed too: {rollback}")]
    RollbackFailed { error: Box<InstallError>, rollback: Box<InstallError> },
}

impl InstallError {
    /// An I/O failure on `path`; permission problems get their own exit code and hint.
    pub(crate) fn fs(path: &Path, source: io::Error) -> InstallError {
        let path = path.to_path_buf();
        if source.kind() == io::ErrorKind::PermissionDenied {
            InstallError::NoAccess { path, source }
        } else {
            InstallError::Io { path, source }
        }
    }
}

impl Diagnose for InstallError {
    fn exit_code(&self) -> i32 {
        match self {
            InstallError::NoAccess { .. } => code::NO_ACCESS,
            InstallError::Io { .. } => code::IO,
            InstallError::Depmod { .. }
            | InstallError::DepmodAfterUninstall { .. }
            | InstallError::NoDepmod { .. }
            | InstallError::BadJournal { .. }
            | InstallError::RollbackFailed { .. } => code::INSTALL_FAILED,
            InstallError::DepmodTree { .. } => code::USAGE,
            InstallError::BuiltMissing { .. } => code::MODULE_MISSING,
            InstallError::BadName { .. } => code::BAD_CONF,
            InstallError::OtherVersion { .. } | InstallError::NotAFile { .. } => code::REFUSED,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            InstallError::NoAccess { .. } => "run as root, or use --root/--installtree with a directory you own".into(),
            InstallError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                "the disk is full: free space and run again (nothing was left half-installed)".into()
            }
            InstallError::Io { .. } => "check the path and run again (nothing was left half-installed)".into(),
            InstallError::Depmod { .. } => "depmod's message above says why; fix that and run the install again".into(),
            InstallError::DepmodAfterUninstall { .. } => {
                "the module's files are gone; fix what depmod reports and run the uninstall again to refresh its output"
                    .into()
            }
            InstallError::NoDepmod { .. } => "install kmod (apt-get install kmod), or pass --no-depmod".into(),
            InstallError::DepmodTree { .. } => {
                "use --root, or an --installtree that ends in lib/modules, or pass --no-depmod".into()
            }
            InstallError::BuiltMissing { module, kernel, .. } => {
                format!("build {module} for {kernel} again (the tree entry is incomplete)")
            }
            InstallError::BadName { .. } => {
                "DEST_MODULE_NAME must be a plain name and DEST_MODULE_LOCATION a path without '..'".into()
            }
            InstallError::OtherVersion { module, installed, kernel, .. } => {
                format!("uninstall {module}/{installed} from {kernel} first")
            }
            InstallError::NotAFile { .. } => "move it out of the way yourself if it should go".into(),
            InstallError::BadJournal { .. } => {
                "it lists the files ckms put into the install tree; repair or remove it, then run again".into()
            }
            InstallError::RollbackFailed { .. } => {
                "the install tree is part-way; run the same install or uninstall again to finish it".into()
            }
        })
    }
}

/// One (module, version, kernel, arch) in the tree.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub roots: &'a Roots,
    pub module: &'a str,
    pub version: &'a str,
    pub kernel: &'a str,
    pub arch: &'a str,
}

/// One built module file and where it goes (dkms's `DEST_MODULE_NAME`/`_LOCATION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Without `.ko`.
    pub dest_name: String,
    /// Below `<install_tree>/<kernel>`, e.g. `/updates/dkms`.
    pub dest_location: String,
    /// The built file inside the tree, e.g. `<built_dir>/module/v4l2loopback.ko.xz`; its
    /// suffix (compression) is kept.
    pub file: PathBuf,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Our files in the install tree.
    pub files: Vec<PathBuf>,
    /// Where the modules we moved to `original_dir` were.
    pub originals: Vec<PathBuf>,
    /// The same files were installed already: nothing was changed.
    pub already_installed: bool,
}

/// What `uninstall` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uninstalled {
    /// The marker named this version (otherwise there was at most an interrupted run to undo).
    pub was_installed: bool,
    pub removed: Vec<PathBuf>,
    /// Originals put back.
    pub restored: Vec<PathBuf>,
    /// Backups not put back because another file took that place meanwhile (kept), or its
    /// directory is gone; they are deleted.
    pub dropped: Vec<PathBuf>,
}

/// Installs `files` for `t` (see the module docs for the order). `depmod: None` is
/// `--no-depmod`. Hold a [`TreeLock`] while calling.
pub fn install(t: &Target, files: &[ModuleFile], depmod: Option<&dyn Depmod>) -> Result<Installed, InstallError> {
    install_with(t, files, depmod, &Ops::default())
}

/// Removes what `install` put in place for `t` and restores the originals. Also finishes or
/// undoes an interrupted install or uninstall. Hold a [`TreeLock`] while calling.
pub fn uninstall(t: &Target, files: &[ModuleFile], depmod: Option<&dyn Depmod>) -> Result<Uninstalled, InstallError> {
    uninstall_with(t, files, depmod, &Ops::default())
}

/// ckms's record of one install (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    version: String,
    /// Our files, relative to the install tree.
    files: Vec<Placed>,
    /// Directories ckms created, relative to the install tree, parents first.
    created_dirs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Placed {
    path: String,
    sha256: String,
}

/// A built file read and checked, ready to go in.
struct Prepared {
    /// Relative to the install tree.
    rel: String,
    dest: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    dest_name: String,
}

fn journal_path(t: &Target) -> PathBuf {
    t.roots.dkms_tree.join(t.module).join(format!(".install-{}-{}.json", t.kernel, t.arch))
}

fn kernel_dir(t: &Target) -> PathBuf {
    t.roots.install_tree.join(t.kernel)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The version the marker names: `Ok(None)` if there is none, `Err` with the raw target if
/// it is not one of ours for this kernel and arch.
fn marker_version(t: &Target) -> Result<Option<String>, String> {
    let Ok(target) = fs::read_link(t.roots.installed_link(t.module, t.kernel, t.arch)) else { return Ok(None) };
    let parts: Vec<&str> = target.to_str().unwrap_or("").split('/').collect();
    match parts[..] {
        [v, k, a] if k == t.kernel && a == t.arch && !v.is_empty() => Ok(Some(v.to_string())),
        _ => Err(target.display().to_string()),
    }
}

/// Refuses if the marker names another version; true if it names `t.version`.
fn check_marker(t: &Target) -> Result<bool, InstallError> {
    match marker_version(t) {
        Ok(Some(v)) if v == t.version => Ok(true),
        Ok(None) => Ok(false),
        Ok(Some(other)) | Err(other) => Err(InstallError::OtherVersion {
            module: t.module.into(),
            version: t.version.into(),
            installed: other,
            kernel: t.kernel.into(),
            arch: t.arch.into(),
        }),
    }
}

fn read_journal(t: &Target) -> Result<Option<Journal>, InstallError> {
    let path = journal_path(t);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| InstallError::BadJournal { path, why: e.to_string() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InstallError::fs(&path, e)),
    }
}

/// A single path component that stays where it is put.
fn plain(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Module names are the same with `-` and `_` swapped (the kernel and kmod treat them so).
fn same_module(a: &str, b: &str) -> bool {
    let dash = |c: u8| c == b'-' || c == b'_';
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y || (dash(x) && dash(y)))
}

fn prepare(t: &Target, files: &[ModuleFile]) -> Result<Vec<Prepared>, InstallError> {
    let bad = |what: String| InstallError::BadName { module: t.module.into(), what };
    for (what, s) in [("module", t.module), ("version", t.version), ("kernel", t.kernel), ("arch", t.arch)] {
        if !plain(s) {
            return Err(bad(format!("{what} {s:?} is not a plain name")));
        }
    }
    let mut out: Vec<Prepared> = Vec::new();
    for f in files {
        if !plain(&f.dest_name) || Compression::split_file_name(&f.dest_name).is_some() {
            return Err(bad(format!("destination name {:?} must be a plain name without .ko", f.dest_name)));
        }
        let location: Vec<&str> = f.dest_location.split('/').filter(|p| !p.is_empty()).collect();
        if location.is_empty() || !location.iter().all(|p| plain(p)) {
            return Err(bad(format!(
                "destination location {:?} must be a path below the kernel's directory",
                f.dest_location
            )));
        }
        let file_name = f.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((_, compression)) = Compression::split_file_name(file_name) else {
            return Err(bad(format!(
                "{} is not a kernel module file (.ko, .ko.gz, .ko.xz, .ko.zst)",
                f.file.display()
            )));
        };
        let rel = format!("{}/{}/{}.ko{}", t.kernel, location.join("/"), f.dest_name, compression.suffix());
        if out.iter().any(|p| p.rel == rel) {
            return Err(bad(format!("two modules would be installed as {rel}")));
        }
        let bytes = fs::read(&f.file).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                InstallError::BuiltMissing { module: t.module.into(), kernel: t.kernel.into(), path: f.file.clone() }
            }
            _ => InstallError::fs(&f.file, e),
        })?;
        out.push(Prepared {
            dest: t.roots.install_tree.join(&rel),
            sha256: sha256(&bytes),
            rel,
            bytes,
            dest_name: f.dest_name.clone(),
        });
    }
    Ok(out)
}

/// Relative paths (below `<kernel>/`) of the modules ours replace: same name, any suffix,
/// next to a destination or anywhere under `kernel/`. A file at a destination identical to
/// ours is ours (left by an earlier run), not an original.
fn find_originals(t: &Target, prepared: &[Prepared]) -> Result<BTreeSet<PathBuf>, InstallError> {
    let kdir = kernel_dir(t);
    let mut found = BTreeSet::new();
    let matches = |name: &str| {
        Compression::split_file_name(name)
            .is_some_and(|(stem, _)| prepared.iter().any(|p| same_module(stem, &p.dest_name)))
    };
    let dirs: BTreeSet<&Path> = prepared.iter().filter_map(|p| p.dest.parent()).collect();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            let path = e.path();
            let ours = prepared.iter().find(|p| p.dest == path);
            if ours.is_none() && !matches(&e.file_name().to_string_lossy()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|err| InstallError::fs(&path, err))?;
            if !meta.is_file() {
                if ours.is_some() {
                    return Err(InstallError::NotAFile { module: t.module.into(), path });
                }
                continue;
            }
            if let Some(p) = ours {
                if fs::read(&path).map_err(|err| InstallError::fs(&path, err))? == p.bytes {
                    continue;
                }
            }
            if let Ok(rel) = path.strip_prefix(&kdir) {
                found.insert(rel.to_path_buf());
            }
        }
    }
    // The kernel's own modules; symlinks are not followed.
    walk_files(&kdir.join("kernel"), &mut |e| {
        let path = e.path();
        if e.file_type().is_ok_and(|k| k.is_file())
            && matches(&e.file_name().to_string_lossy())
            && !prepared.iter().any(|p| p.dest == path)
        {
            if let Ok(rel) = path.strip_prefix(&kdir) {
                found.insert(rel.to_path_buf());
            }
        }
    })?;
    Ok(found)
}

/// Every backup in `original_dir`, relative to it (= relative to `<kernel>/`).
fn backups(t: &Target) -> Result<Vec<PathBuf>, InstallError> {
    let root = t.roots.original_dir(t.module, t.kernel, t.arch);
    let mut out = Vec::new();
    walk_files(&root, &mut |e| {
        if !e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            if let Ok(rel) = e.path().strip_prefix(&root) {
                out.push(rel.to_path_buf());
            }
        }
    })?;
    out.sort();
    Ok(out)
}

/// Calls `visit` for every entry below `top` that is not a directory (symlinks are not
/// followed); a missing directory is empty.
fn walk_files(top: &Path, visit: &mut dyn FnMut(&fs::DirEntry)) -> Result<(), InstallError> {
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(InstallError::fs(&dir, e)),
        };
        for e in rd.filter_map(Result::ok) {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(e.path());
            } else {
                visit(&e);
            }
        }
    }
    Ok(())
}

/// Whether what is installed is exactly `prepared`.
fn up_to_date(t: &Target, journal: &Journal, prepared: &[Prepared]) -> bool {
    let want: BTreeMap<&str, &str> = prepared.iter().map(|p| (p.rel.as_str(), p.sha256.as_str())).collect();
    let have: BTreeMap<&str, &str> = journal.files.iter().map(|p| (p.path.as_str(), p.sha256.as_str())).collect();
    journal.version == t.version
        && want == have
        && prepared.iter().all(|p| fs::read(&p.dest).is_ok_and(|b| b == p.bytes))
}

fn install_with(
    t: &Target,
    files: &[ModuleFile],
    depmod: Option<&dyn Depmod>,
    ops: &Ops,
) -> Result<Installed, InstallError> {
    let marked = check_marker(t)?;
    let prepared = prepare(t, files)?;
    if let Some(d) = depmod {
        d.check(&t.roots.install_tree)?;
    }
    let mut journal = read_journal(t)?;
    if journal.is_none() && marked {
        // Installed without a journal (it was lost): what is at our destinations is ours.
        journal = Some(synthesized_journal(t, &prepared)?);
    }
    if let Some(j) = &journal {
        if marked && up_to_date(t, j, &prepared) {
            let kdir = kernel_dir(t);
            return Ok(Installed {
                files: prepared.into_iter().map(|p| p.dest).collect(),
                originals: backups(t)?.into_iter().map(|rel| kdir.join(rel)).collect(),
                already_installed: true,
            });
        }
        // Interrupted, or installed from another build: start from a clean tree. depmod
        // runs once the new files are in.
        undo(t, j, None, ops)?;
    }
    let undid = journal.is_some();
    ops.sweep(&t.roots.dkms_tree.join(t.module))?;

    let originals = find_originals(t, &prepared)?;
    let mut created_dirs = Vec::new();
    for p in &prepared {
        let rel = Path::new(&p.rel);
        for dir in rel.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev().skip(1) {
            let s = dir.to_string_lossy().into_owned();
            if !t.roots.install_tree.join(dir).exists() && !created_dirs.contains(&s) {
                created_dirs.push(s);
            }
        }
    }
    let journal = Journal {
        version: t.version.into(),
        files: prepared.iter().map(|p| Placed { path: p.rel.clone(), sha256: p.sha256.clone() }).collect(),
        created_dirs,
    };
    let jpath = journal_path(t);
    let applied = apply(t, &journal, &prepared, &originals, depmod, ops);
    match applied {
        Ok(()) => Ok(Installed {
            files: prepared.into_iter().map(|p| p.dest).collect(),
            originals: originals.iter().map(|rel| kernel_dir(t).join(rel)).collect(),
            already_installed: false,
        }),
        Err(error) if fs::symlink_metadata(&jpath).is_err() => {
            // Nothing of this install to undo; but if the remains of an earlier one were just
            // removed, the module index still lists them.
            if let Some(d) = depmod.filter(|_| undid && kernel_dir(t).is_dir()) {
                if ops.step(&t.roots.install_tree).is_ok() {
                    let _ = d.run(&t.roots.install_tree, t.kernel);
                }
            }
            Err(error)
        }
        Err(error) => match undo(t, &journal, depmod.map(|d| (d, false)), ops) {
            Ok(_) => Err(error),
            Err(rollback) => Err(InstallError::RollbackFailed { error: Box::new(error), rollback: Box::new(rollback) }),
        },
    }
}

/// Steps (3) to (9) of install.
fn apply(
    t: &Target,
    journal: &Journal,
    prepared: &[Prepared],
    originals: &BTreeSet<PathBuf>,
    depmod: Option<&dyn Depmod>,
    ops: &Ops,
) -> Result<(), InstallError> {
    let jpath = journal_path(t);
    let json = serde_json::to_vec_pretty(journal).map_err(|e| InstallError::fs(&jpath, e.into()))?;
    if let Some(dir) = jpath.parent() {
        ops.create_dir_all(dir)?;
    }
    ops.write(&jpath, &json, 0o644)?;

    let kdir = kernel_dir(t);
    let odir = t.roots.original_dir(t.module, t.kernel, t.arch);
    let dests: BTreeSet<&Path> = prepared.iter().map(|p| p.dest.as_path()).collect();
    for rel in originals {
        let backup = odir.join(rel);
        if fs::symlink_metadata(&backup).is_err() {
            if let Some(dir) = backup.parent() {
                ops.create_dir_all(dir)?;
            }
            ops.copy(&kdir.join(rel), &backup)?;
        }
    }
    for rel in originals {
        if !dests.contains(kdir.join(rel).as_path()) {
            ops.remove_file(&kdir.join(rel))?;
        }
    }
    if !t.roots.install_tree.is_dir() {
        // Not in the journal: an install tree is not something to remove again.
        ops.create_dir_all(&t.roots.install_tree)?;
    }
    for dir in &journal.created_dirs {
        ops.create_dir(&t.roots.install_tree.join(dir))?;
    }
    for p in prepared {
        ops.write(&p.dest, &p.bytes, 0o644)?;
    }
    if let Some(d) = depmod {
        ops.step(&t.roots.install_tree)?;
        d.run(&t.roots.install_tree, t.kernel).map_err(|stderr| InstallError::Depmod {
            module: t.module.into(),
            kernel: t.kernel.into(),
            stderr,
        })?;
        // depmod renames its files into place without syncing; they must be on disk
        // before the marker says installed.
        let f = fs::File::open(&kdir).map_err(|e| InstallError::fs(&kdir, e))?;
        rustix::fs::syncfs(&f).map_err(|e| InstallError::fs(&kdir, e.into()))?;
    }
    ops.symlink(&Path::new(t.version).join(t.kernel).join(t.arch), &t.roots.installed_link(t.module, t.kernel, t.arch))
}

/// For an install whose journal was lost: the marker says ours is installed, so what sits
/// at our destinations is ours, even from an older build. Which directories ckms created is
/// unknown; they stay.
fn synthesized_journal(t: &Target, prepared: &[Prepared]) -> Result<Journal, InstallError> {
    let mut files = Vec::new();
    for p in prepared {
        let sha256 = match read_file(&p.dest)? {
            Some(bytes) => sha256(&bytes),
            None => p.sha256.clone(),
        };
        files.push(Placed { path: p.rel.clone(), sha256 });
    }
    Ok(Journal { version: t.version.into(), files, created_dirs: Vec::new() })
}

/// The contents of the regular file `path`; `None` if there is none (or something else).
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => fs::read(path).map(Some).map_err(|e| InstallError::fs(path, e)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InstallError::fs(path, e)),
    }
}

#[cfg(test)]
mod tests;
