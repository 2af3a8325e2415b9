//! Uninstall, and the undo of a failed or interrupted install: the steps of the module docs
//! of [`super`], each idempotent.

use super::*;

pub(super) fn uninstall_with(
    t: &Target,
    files: &[ModuleFile],
    depmod: Option<&dyn Depmod>,
    ops: &Ops,
) -> Result<Uninstalled, InstallError> {
    let marked = check_marker(t)?;
    let journal = match read_journal(t)? {
        Some(j) => j,
        None if marked => synthesized_journal(t, &prepare(t, files)?)?,
        None => {
            // At most the journal's temporary file of an install that crashed writing it.
            ops.sweep(&t.roots.dkms_tree.join(t.module))?;
            return Ok(Uninstalled::default());
        }
    };
    if let Some(d) = depmod {
        d.check(&t.roots.install_tree)?;
    }
    let mut done = undo(t, &journal, depmod.map(|d| (d, true)), ops)?;
    done.was_installed = marked;
    Ok(done)
}

/// Uninstall's steps (see the module docs). `depmod`'s flag: whether its failure is an
/// error (uninstall) or is ignored (rolling back a failed install, which reports its own).
pub(super) fn undo(
    t: &Target,
    journal: &Journal,
    depmod: Option<(&dyn Depmod, bool)>,
    ops: &Ops,
) -> Result<Uninstalled, InstallError> {
    let mut done = Uninstalled::default();
    let marker = t.roots.installed_link(t.module, t.kernel, t.arch);
    if fs::symlink_metadata(&marker).is_ok() {
        ops.remove_file(&marker)?;
    }

    let tree = &t.roots.install_tree;
    for f in &journal.files {
        let path = tree.join(&f.path);
        if let Some(dir) = path.parent() {
            ops.sweep(dir)?;
        }
        // Something else in our place (changed since) is not ours to remove.
        if read_file(&path)?.is_some_and(|b| sha256(&b) == f.sha256) {
            ops.remove_file(&path)?;
            done.removed.push(path);
        }
    }

    let kdir = kernel_dir(t);
    let odir = t.roots.original_dir(t.module, t.kernel, t.arch);
    ops.sweep(&odir)?;
    for rel in backups(t)? {
        let backup = odir.join(&rel);
        let target = kdir.join(&rel);
        if let Some(dir) = target.parent() {
            ops.sweep(dir)?;
        }
        let saved = fs::read(&backup).map_err(|e| InstallError::fs(&backup, e))?;
        let mode = fs::metadata(&backup).map_err(|e| InstallError::fs(&backup, e))?.permissions().mode() & 0o7777;
        let present = fs::symlink_metadata(&target).is_ok();
        if !present && target.parent().is_some_and(Path::is_dir) {
            ops.write(&target, &saved, mode)?;
            done.restored.push(target);
        } else if read_file(&target)?.is_some_and(|b| b == saved) {
            // Put back by an interrupted run already.
            done.restored.push(target);
        } else {
            // A newer file took its place (a kernel package update), or its kernel is gone.
            done.dropped.push(target);
        }
        ops.remove_file(&backup)?;
    }
    remove_empty_dirs(&odir, ops)?;
    for dir in [odir.as_path(), &t.roots.dkms_tree.join(t.module).join("original_module").join(t.kernel)] {
        ops.remove_dir_if_empty(dir)?;
    }
    ops.remove_dir_if_empty(&t.roots.dkms_tree.join(t.module).join("original_module"))?;

    for dir in journal.created_dirs.iter().rev() {
        ops.remove_dir_if_empty(&tree.join(dir))?;
    }

    // Nothing to index once the kernel's directory is gone (ckms created it, and took it away).
    if let Some((d, must_succeed)) = depmod.filter(|_| kdir.is_dir()) {
        let ran = ops.step(tree).and_then(|()| {
            d.run(tree, t.kernel).map_err(|stderr| InstallError::DepmodAfterUninstall {
                module: t.module.into(),
                kernel: t.kernel.into(),
                stderr,
            })
        });
        if must_succeed {
            ran?;
        }
    }
    let dkms_dir = t.roots.dkms_tree.join(t.module);
    ops.sweep(&dkms_dir)?;
    ops.remove_file(&journal_path(t))?;
    Ok(done)
}

/// Removes the empty directories below `root` (not `root` itself), deepest first, sweeping
/// temporary files out of them on the way.
fn remove_empty_dirs(root: &Path, ops: &Ops) -> Result<(), InstallError> {
    let Ok(rd) = fs::read_dir(root) else { return Ok(()) };
    for e in rd.filter_map(Result::ok) {
        if e.file_type().is_ok_and(|k| k.is_dir()) {
            let dir = e.path();
            ops.sweep(&dir)?;
            remove_empty_dirs(&dir, ops)?;
            ops.remove_dir_if_empty(&dir)?;
        }
    }
    Ok(())
}
