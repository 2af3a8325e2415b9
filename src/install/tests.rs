use super::*;
use crate::tree::{self, State};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};

const M: &str = "v4l2loopback";
const V: &str = "0.12.7";
const K: &str = "6.1.0-56-amd64";
const A: &str = "x86_64";

/// A root with a source, a built module version, and a kernel with some in-tree modules.
struct Env {
    _dir: tempfile::TempDir,
    roots: Roots,
}

impl Env {
    /// With an in-tree module of the same name as ours (mode 0600, to see modes come back).
    fn new() -> Env {
        let env = Env::bare();
        let media = env.kdir().join("kernel/drivers/media");
        fs::create_dir_all(&media).unwrap();
        fs::write(media.join("v4l2loopback.ko.xz"), b"in-tree v4l2loopback").unwrap();
        fs::set_permissions(media.join("v4l2loopback.ko.xz"), fs::Permissions::from_mode(0o600)).unwrap();
        FakeDepmod::ok().run(&env.roots.install_tree, K).unwrap();
        env
    }

    /// Nothing of ours in the kernel's tree.
    fn bare() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path(), "/var/lib/ckms");
        let src = roots.source_tree.join(format!("{M}-{V}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("dkms.conf"), "PACKAGE_NAME=v4l2loopback\n").unwrap();
        fs::create_dir_all(roots.module_dir(M, V)).unwrap();
        symlink(&src, roots.module_dir(M, V).join("source")).unwrap();
        let built = roots.built_dir(M, V, K, A).join("module");
        fs::create_dir_all(&built).unwrap();
        fs::write(built.join("v4l2loopback.ko.xz"), b"built v4l2loopback").unwrap();
        fs::write(built.join("vl-helper.ko.xz"), b"built vl-helper").unwrap();
        let kdir = roots.install_tree.join(K);
        fs::create_dir_all(kdir.join("kernel/drivers/net")).unwrap();
        fs::write(kdir.join("kernel/drivers/net/dummy.ko.xz"), b"in-tree dummy").unwrap();
        // depmod and ckms must not follow the headers link out of the tree.
        symlink("/usr/src/linux-headers-6.1.0-56-amd64", kdir.join("build")).unwrap();
        let env = Env { _dir: dir, roots };
        FakeDepmod::ok().run(&env.roots.install_tree, K).unwrap();
        env
    }

    fn target(&self) -> Target<'_> {
        self.target_v(V)
    }

    fn target_v<'a>(&'a self, version: &'a str) -> Target<'a> {
        Target { roots: &self.roots, module: M, version, kernel: K, arch: A }
    }

    fn kdir(&self) -> PathBuf {
        self.roots.install_tree.join(K)
    }

    fn files(&self) -> Vec<ModuleFile> {
        let built = self.roots.built_dir(M, V, K, A).join("module");
        ["v4l2loopback", "vl-helper"]
            .iter()
            .map(|n| ModuleFile {
                dest_name: n.to_string(),
                dest_location: "/updates/dkms".into(),
                file: built.join(format!("{n}.ko.xz")),
            })
            .collect()
    }

    fn state(&self) -> (State, bool) {
        let s = tree::status(&self.roots, Some(M));
        let line = s.iter().find(|s| s.kernel.as_deref() == Some(K)).unwrap();
        (line.state.clone(), line.original_modules)
    }

    /// The install tree and the dkms tree.
    fn snapshot(&self) -> (Snapshot, Snapshot) {
        // Link targets into this root differ between roots.
        let root = self._dir.path().display().to_string();
        let tree = |dir| snapshot(dir).into_iter().map(|(k, v)| (k, v.replace(&root, "<root>"))).collect();
        (tree(&self.roots.install_tree), tree(&self.roots.dkms_tree))
    }
}

type Snapshot = BTreeMap<String, String>;

/// Every path below `root` with its kind, mode and contents (or link target).
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", String::from_utf8_lossy(&fs::read(&path).unwrap()))
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A depmod that writes a deterministic modules.dep from the files present (as the real one
/// does), records its calls, and fails its first `failures` runs.
struct FakeDepmod {
    failures: Cell<usize>,
    calls: RefCell<Vec<String>>,
    marker: Option<PathBuf>,
}

impl FakeDepmod {
    fn ok() -> FakeDepmod {
        FakeDepmod::failing(0)
    }
    fn failing(failures: usize) -> FakeDepmod {
        FakeDepmod { failures: Cell::new(failures), calls: RefCell::new(Vec::new()), marker: None }
    }
    /// Also records whether `marker` existed when depmod ran.
    fn watching(marker: PathBuf) -> FakeDepmod {
        FakeDepmod { marker: Some(marker), ..FakeDepmod::ok() }
    }
}

impl Depmod for FakeDepmod {
    fn run(&self, install_tree: &Path, kernel: &str) -> Result<(), String> {
        let marker = self.marker.as_ref().map(|m| format!(" marker={}", fs::symlink_metadata(m).is_ok()));
        self.calls.borrow_mut().push(format!("{kernel}{}", marker.unwrap_or_default()));
        if self.failures.get() > 0 {
            self.failures.set(self.failures.get() - 1);
            return Err("depmod: FATAL: could not load /lib/modules/6.1.0-56-amd64/modules.builtin".into());
        }
        let kdir = install_tree.join(kernel);
        let modules: Vec<String> = snapshot(&kdir)
            .into_keys()
            .filter(|rel| {
                let name = rel.rsplit('/').next().unwrap();
                !rel.starts_with("build") && Compression::split_file_name(name).is_some()
            })
            .collect();
        fs::write(kdir.join("modules.dep"), modules.iter().map(|m| format!("{m}:\n")).collect::<String>()).unwrap();
        Ok(())
    }
}

fn no_fault() -> impl Fn(usize) -> bool {
    |_| false
}

#[test]
fn fresh_install_lands_in_updates_dkms_and_marks_last() {
    let env = Env::bare();
    let before = env.snapshot();
    let depmod = FakeDepmod::watching(env.roots.installed_link(M, K, A));
    let done = install(&env.target(), &env.files(), Some(&depmod)).unwrap();

    let dkms = env.kdir().join("updates/dkms");
    assert_eq!(done.files, [dkms.join("v4l2loopback.ko.xz"), dkms.join("vl-helper.ko.xz")]);
    assert!(done.originals.is_empty() && !done.already_installed);
    assert_eq!(fs::read(dkms.join("v4l2loopback.ko.xz")).unwrap(), b"built v4l2loopback");
    assert_eq!(fs::metadata(dkms.join("vl-helper.ko.xz")).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(fs::metadata(&dkms).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_to_string(env.kdir().join("modules.dep")).unwrap(),
        "kernel/drivers/net/dummy.ko.xz:\nupdates/dkms/v4l2loopback.ko.xz:\nupdates/dkms/vl-helper.ko.xz:\n"
    );
    // depmod ran before the marker existed; the marker names version/kernel/arch.
    assert_eq!(*depmod.calls.borrow(), [format!("{K} marker=false")]);
    assert_eq!(fs::read_link(env.roots.installed_link(M, K, A)).unwrap(), Path::new(V).join(K).join(A));
    assert_eq!(env.state(), (State::Installed, false));
    assert!(!env.roots.original_dir(M, K, A).exists());

    let undone = uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert!(undone.was_installed);
    assert_eq!(undone.removed.len(), 2);
    // updates/ and updates/dkms were ckms's: gone again, and everything else as it was.
    assert_eq!(env.snapshot(), before);
    assert_eq!(env.state(), (State::Built, false));
}

#[test]
fn an_in_tree_module_is_moved_aside_and_restored() {
    let env = Env::new();
    let before = env.snapshot();
    let done = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();

    let in_tree = env.kdir().join("kernel/drivers/media/v4l2loopback.ko.xz");
    assert_eq!(done.originals, std::slice::from_ref(&in_tree));
    assert!(!in_tree.exists());
    let backup = env.roots.original_dir(M, K, A).join("kernel/drivers/media/v4l2loopback.ko.xz");
    assert_eq!(fs::read(&backup).unwrap(), b"in-tree v4l2loopback");
    assert_eq!(fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(env.state(), (State::Installed, true));
    assert!(!fs::read_to_string(env.kdir().join("modules.dep")).unwrap().contains("kernel/drivers/media"));

    let undone = uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(undone.restored, [in_tree]);
    assert!(undone.dropped.is_empty());
    assert_eq!(env.snapshot(), before, "uninstall restores both trees byte for byte");
}

#[test]
fn modules_at_the_destination_are_backed_up_whatever_their_suffix() {
    let env = Env::bare();
    let dkms = env.kdir().join("updates/dkms");
    fs::create_dir_all(&dkms).unwrap();
    fs::write(dkms.join("v4l2loopback.ko.xz"), b"someone else's v4l2loopback").unwrap();
    fs::write(dkms.join("v4l2loopback.ko"), b"an uncompressed one").unwrap();
    // Same module name for the kernel: '-' and '_' are interchangeable.
    fs::write(dkms.join("vl_helper.ko.gz"), b"old vl_helper").unwrap();
    fs::write(dkms.join("unrelated.ko"), b"not ours").unwrap();
    FakeDepmod::ok().run(&env.roots.install_tree, K).unwrap();
    let before = env.snapshot();

    let done = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    let rels: Vec<_> = done.originals.iter().map(|p| p.strip_prefix(env.kdir()).unwrap().to_path_buf()).collect();
    assert_eq!(
        rels,
        [
            PathBuf::from("updates/dkms/v4l2loopback.ko"),
            "updates/dkms/v4l2loopback.ko.xz".into(),
            "updates/dkms/vl_helper.ko.gz".into()
        ]
    );
    let mut names: Vec<_> = fs::read_dir(&dkms).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["unrelated.ko", "v4l2loopback.ko.xz", "vl-helper.ko.xz"]);
    assert_eq!(fs::read(dkms.join("v4l2loopback.ko.xz")).unwrap(), b"built v4l2loopback");

    uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(env.snapshot(), before);
}

#[test]
fn a_file_identical_to_ours_is_ours_not_an_original() {
    let env = Env::bare();
    let dkms = env.kdir().join("updates/dkms");
    fs::create_dir_all(&dkms).unwrap();
    fs::write(dkms.join("v4l2loopback.ko.xz"), b"built v4l2loopback").unwrap();
    let done = install(&env.target(), &env.files(), None).unwrap();
    assert!(done.originals.is_empty());
    assert!(!env.roots.original_dir(M, K, A).exists());
}

#[test]
fn depmod_failure_rolls_back_byte_for_byte() {
    let env = Env::new();
    let before = env.snapshot();
    let depmod = FakeDepmod::failing(1);
    let err = install(&env.target(), &env.files(), Some(&depmod)).unwrap_err();
    assert!(matches!(err, InstallError::Depmod { .. }), "{err}");
    assert_eq!(err.exit_code(), code::INSTALL_FAILED);
    assert!(err.to_string().contains("could not load /lib/modules/6.1.0-56-amd64/modules.builtin"), "{err}");
    // Once for the install, once more after rolling back.
    assert_eq!(depmod.calls.borrow().len(), 2);
    assert_eq!(env.snapshot(), before);
    assert_eq!(env.state(), (State::Built, false));
}

#[test]
fn reinstalling_the_same_build_changes_nothing() {
    let env = Env::new();
    install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    let installed = env.snapshot();
    let depmod = FakeDepmod::ok();
    let again = install(&env.target(), &env.files(), Some(&depmod)).unwrap();
    assert!(again.already_installed);
    assert_eq!(again.originals, [env.kdir().join("kernel/drivers/media/v4l2loopback.ko.xz")]);
    assert!(depmod.calls.borrow().is_empty());
    assert_eq!(env.snapshot(), installed);
}

#[test]
fn reinstalling_a_rebuilt_module_replaces_it_and_keeps_the_original() {
    let env = Env::new();
    let before = env.snapshot();
    install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    let built = env.roots.built_dir(M, V, K, A).join("module/v4l2loopback.ko.xz");
    fs::write(&built, b"rebuilt v4l2loopback").unwrap();
    let again = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert!(!again.already_installed);
    assert_eq!(fs::read(env.kdir().join("updates/dkms/v4l2loopback.ko.xz")).unwrap(), b"rebuilt v4l2loopback");
    assert_eq!(env.state(), (State::Installed, true));
    uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    fs::write(&built, b"built v4l2loopback").unwrap();
    assert_eq!(env.snapshot(), before);
}

/// How many steps a clean run of `f` takes.
fn count_steps(f: impl FnOnce(&Ops)) -> usize {
    let fault = no_fault();
    let ops = Ops::with_fault(&fault);
    f(&ops);
    ops.steps()
}

#[test]
fn a_crash_during_install_at_any_step_is_finished_by_running_again() {
    let reference = Env::new();
    let before = reference.snapshot();
    let total = count_steps(|ops| {
        install_with(&reference.target(), &reference.files(), Some(&FakeDepmod::ok()), ops).unwrap();
    });
    let installed = reference.snapshot();
    assert!(total > 10, "{total} steps");

    for n in 0..total {
        // Power cut at step n: it and every later step fail, rollback included.
        for rerun_install in [true, false] {
            let env = Env::new();
            let fault = move |i: usize| i >= n;
            let err = install_with(&env.target(), &env.files(), Some(&FakeDepmod::ok()), &Ops::with_fault(&fault))
                .unwrap_err();
            // The marker comes last: an interrupted install never shows as installed.
            assert_eq!(env.state(), (State::Built, false), "crash at step {n}: {err}");
            if rerun_install {
                install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
                assert_eq!(env.snapshot(), installed, "install after a crash at step {n}");
                assert_eq!(env.state(), (State::Installed, true));
                uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
            } else {
                uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
            }
            assert_eq!(env.snapshot(), before, "uninstall after a crash at step {n} (rerun install: {rerun_install})");
        }
    }
}

#[test]
fn a_crash_during_uninstall_at_any_step_is_finished_by_running_again() {
    let reference = Env::new();
    let before = reference.snapshot();
    install(&reference.target(), &reference.files(), Some(&FakeDepmod::ok())).unwrap();
    let installed = reference.snapshot();
    let total = count_steps(|ops| {
        uninstall_with(&reference.target(), &reference.files(), Some(&FakeDepmod::ok()), ops).unwrap();
    });

    for n in 0..total {
        for rerun_install in [true, false] {
            let env = Env::new();
            install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
            let fault = move |i: usize| i >= n;
            let err = uninstall_with(&env.target(), &env.files(), Some(&FakeDepmod::ok()), &Ops::with_fault(&fault))
                .unwrap_err();
            // The marker goes first: only a crash before anything changed still shows installed.
            let state = env.state();
            if n == 0 {
                assert_eq!(state, (State::Installed, true), "{err}");
                assert_eq!(env.snapshot(), installed);
            } else {
                assert_eq!(state, (State::Built, false), "crash at step {n}: {err}");
            }
            if rerun_install {
                install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
                assert_eq!(env.snapshot(), installed, "install after a crash at uninstall step {n}");
            } else {
                uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
                assert_eq!(env.snapshot(), before, "uninstall after a crash at step {n}");
            }
        }
    }
}

#[test]
fn a_full_disk_at_any_step_leaves_the_trees_as_they_were() {
    let reference = Env::new();
    let before = reference.snapshot();
    let total = count_steps(|ops| {
        install_with(&reference.target(), &reference.files(), Some(&FakeDepmod::ok()), ops).unwrap();
    });
    for n in 0..total {
        let env = Env::new();
        let fault = move |i: usize| i == n;
        let err =
            install_with(&env.target(), &env.files(), Some(&FakeDepmod::ok()), &Ops::with_fault(&fault)).unwrap_err();
        assert_eq!(err.exit_code(), code::IO, "step {n}: {err}");
        assert!(err.hint().unwrap().contains("disk is full"), "{err}");
        // No temporary files, no backups, no journal, depmod's output as before.
        assert_eq!(env.snapshot(), before, "full disk at step {n}: {err}");
    }
}

#[test]
fn leftovers_of_another_versions_interrupted_install_are_cleaned_up() {
    let env = Env::new();
    let before = env.snapshot();
    // 0.12.6 crashed after writing one file and a temporary one; its marker was never set.
    let dkms = env.kdir().join("updates/dkms");
    fs::create_dir_all(&dkms).unwrap();
    fs::write(dkms.join("v4l2loopback.ko.xz"), b"0.12.6 v4l2loopback").unwrap();
    fs::write(dkms.join(".ckms-tmp.99.0"), b"half a module").unwrap();
    let old = Journal {
        version: "0.12.6".into(),
        files: vec![Placed {
            path: format!("{K}/updates/dkms/v4l2loopback.ko.xz"),
            sha256: sha256(b"0.12.6 v4l2loopback"),
        }],
        created_dirs: vec![format!("{K}/updates"), format!("{K}/updates/dkms")],
    };
    fs::write(journal_path(&env.target()), serde_json::to_vec(&old).unwrap()).unwrap();
    fs::write(env.roots.dkms_tree.join(M).join(".ckms-tmp.99.1"), b"").unwrap();
    assert_eq!(env.state(), (State::Built, false));

    let done = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(
        done.originals,
        [env.kdir().join("kernel/drivers/media/v4l2loopback.ko.xz")],
        "0.12.6's file is not an original"
    );
    assert_eq!(env.state(), (State::Installed, true));
    uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(env.snapshot(), before);
}

#[test]
fn a_newer_file_in_place_of_a_backup_is_kept() {
    let env = Env::new();
    install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    // A kernel package update put its module back while ours was installed.
    let in_tree = env.kdir().join("kernel/drivers/media/v4l2loopback.ko.xz");
    fs::write(&in_tree, b"updated in-tree v4l2loopback").unwrap();
    let undone = uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(undone.dropped, std::slice::from_ref(&in_tree));
    assert_eq!(fs::read(&in_tree).unwrap(), b"updated in-tree v4l2loopback");
    assert!(!env.roots.dkms_tree.join(M).join("original_module").exists());
}

#[test]
fn another_installed_version_is_refused() {
    let env = Env::new();
    install(&env.target(), &env.files(), None).unwrap();
    let installed = env.snapshot();
    for err in [
        install(&env.target_v("0.13.0"), &env.files(), None).unwrap_err(),
        uninstall(&env.target_v("0.13.0"), &env.files(), None).map(drop).unwrap_err(),
    ] {
        assert!(matches!(&err, InstallError::OtherVersion { installed, .. } if installed == V), "{err}");
        assert_eq!(err.exit_code(), code::REFUSED);
        assert_eq!(err.hint().unwrap(), format!("uninstall {M}/{V} from {K} first"));
    }
    assert_eq!(env.snapshot(), installed);
}

#[test]
fn uninstalling_what_is_not_installed_does_nothing() {
    let env = Env::new();
    let before = env.snapshot();
    let depmod = FakeDepmod::ok();
    assert_eq!(uninstall(&env.target(), &env.files(), Some(&depmod)).unwrap(), Uninstalled::default());
    assert!(depmod.calls.borrow().is_empty());
    assert_eq!(env.snapshot(), before);
}

#[test]
fn a_lost_journal_falls_back_to_the_files_given() {
    let env = Env::bare();
    let before = env.snapshot();
    install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    fs::remove_file(journal_path(&env.target())).unwrap();
    let again = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert!(again.already_installed);
    let undone = uninstall(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(undone.removed.len(), 2);
    // Without the journal ckms cannot know it created updates/dkms, so that stays.
    let mut after = env.snapshot();
    assert_eq!(after.0.remove(&format!("{K}/updates/dkms")).as_deref(), Some("dir 755"));
    assert_eq!(after.0.remove(&format!("{K}/updates")).as_deref(), Some("dir 755"));
    assert_eq!(after, before);
}

#[test]
fn bad_names_and_missing_builds_change_nothing() {
    let env = Env::new();
    let before = env.snapshot();
    let built = env.roots.built_dir(M, V, K, A).join("module");
    let file = |name: &str, loc: &str, f: &str| ModuleFile {
        dest_name: name.into(),
        dest_location: loc.into(),
        file: built.join(f),
    };
    for (files, want) in [
        (vec![file("v4l2loopback", "/../../../etc", "v4l2loopback.ko.xz")], code::BAD_CONF),
        (vec![file("a/b", "/updates/dkms", "v4l2loopback.ko.xz")], code::BAD_CONF),
        (vec![file("v4l2loopback.ko", "/updates/dkms", "v4l2loopback.ko.xz")], code::BAD_CONF),
        (vec![file("v4l2loopback", "", "v4l2loopback.ko.xz")], code::BAD_CONF),
        (vec![file("v4l2loopback", "/updates/dkms", "v4l2loopback.o")], code::BAD_CONF),
        (
            vec![file("x", "/updates/dkms", "v4l2loopback.ko.xz"), file("x", "updates/dkms/", "vl-helper.ko.xz")],
            code::BAD_CONF,
        ),
        (vec![file("v4l2loopback", "/updates/dkms", "missing.ko.xz")], code::MODULE_MISSING),
    ] {
        let err = install(&env.target(), &files, Some(&FakeDepmod::ok())).unwrap_err();
        assert_eq!(err.exit_code(), want, "{err}");
        assert!(err.hint().is_some());
    }
    let bad_kernel = Target { kernel: "../6.1", ..env.target() };
    assert_eq!(install(&bad_kernel, &env.files(), None).unwrap_err().exit_code(), code::BAD_CONF);
    assert_eq!(env.snapshot(), before);
}

#[test]
fn a_destination_that_is_not_a_file_is_refused() {
    let env = Env::bare();
    let dest = env.kdir().join("updates/dkms/v4l2loopback.ko.xz");
    fs::create_dir_all(&dest).unwrap();
    let err = install(&env.target(), &env.files(), None).unwrap_err();
    assert!(matches!(err, InstallError::NotAFile { .. }), "{err}");
    assert_eq!(err.exit_code(), code::REFUSED);
}

struct NoDepmodHere;
impl Depmod for NoDepmodHere {
    fn run(&self, _: &Path, _: &str) -> Result<(), String> {
        unreachable!("checked first")
    }
    fn check(&self, _: &Path) -> Result<(), InstallError> {
        Err(InstallError::NoDepmod { why: "depmod was not found in PATH, /usr/sbin or /sbin".into() })
    }
}

#[test]
fn an_unusable_depmod_is_reported_before_anything_changes() {
    let env = Env::new();
    let before = env.snapshot();
    let err = install(&env.target(), &env.files(), Some(&NoDepmodHere)).unwrap_err();
    assert_eq!(err.exit_code(), code::INSTALL_FAILED);
    assert_eq!(err.hint().unwrap(), "install kmod (apt-get install kmod), or pass --no-depmod");
    assert_eq!(env.snapshot(), before);

    // depmod -b only knows <base>/lib/modules.
    let odd = Roots { install_tree: env.roots.dkms_tree.join("modules"), ..env.roots.clone() };
    let t = Target { roots: &odd, ..env.target() };
    let err = install(&t, &env.files(), Some(&HostDepmod)).unwrap_err();
    assert!(matches!(err, InstallError::DepmodTree { .. }), "{err}");
    assert!(err.hint().unwrap().contains("--no-depmod"));
    assert_eq!(env.snapshot(), before);
}

#[test]
fn permission_problems_say_how_to_get_access() {
    let err =
        InstallError::fs(Path::new("/lib/modules/6.1.0-56-amd64/updates"), io::ErrorKind::PermissionDenied.into());
    assert_eq!(err.exit_code(), code::NO_ACCESS);
    assert_eq!(err.hint().unwrap(), "run as root, or use --root/--installtree with a directory you own");
    assert!(err.to_string().starts_with("/lib/modules/6.1.0-56-amd64/updates: "), "{err}");
    let err = InstallError::fs(Path::new("/x"), io::Error::from_raw_os_error(28));
    assert_eq!(err.exit_code(), code::IO);
}

#[test]
fn depmod_arguments() {
    let argv = |tree: &str| depmod_argv(Path::new(tree), "6.12.48+deb13-amd64").map_err(|e| e.to_string());
    assert_eq!(argv("/lib/modules").unwrap(), ["depmod", "-a", "6.12.48+deb13-amd64"]);
    assert_eq!(argv("/lib/modules/").unwrap(), ["depmod", "-a", "6.12.48+deb13-amd64"]);
    assert_eq!(argv("/srv/root/lib/modules").unwrap(), ["depmod", "-b", "/srv/root", "-a", "6.12.48+deb13-amd64"]);
    assert_eq!(argv("/usr/lib/modules").unwrap(), ["depmod", "-b", "/usr", "-a", "6.12.48+deb13-amd64"]);
    assert_eq!(argv("lib/modules").unwrap(), ["depmod", "-b", ".", "-a", "6.12.48+deb13-amd64"]);
    assert!(argv("/srv/modules").unwrap_err().contains("ending in lib/modules"));
    assert!(argv("/").is_err());
}

/// The real depmod (kmod) on a tree of our own. It must be installed: this test fails rather
/// than skips without it, so that CI never silently stops covering the host side.
#[test]
fn the_host_depmod_indexes_and_forgets_our_module() {
    assert!(
        depmod::find_depmod().is_some(),
        "depmod is not installed on this machine: install kmod (apt-get install kmod) to run this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots::under(dir.path(), "/var/lib/ckms");
    fs::create_dir_all(roots.install_tree.join(K)).unwrap();
    let built = roots.built_dir(M, V, K, A).join("module");
    fs::create_dir_all(&built).unwrap();
    // depmod indexes a file it cannot parse (it warns); enough to see the index change.
    fs::write(built.join("v4l2loopback.ko"), b"not an ELF object").unwrap();
    HostDepmod.run(&roots.install_tree, K).unwrap();
    let before = snapshot(&roots.install_tree);
    assert!(before.contains_key(&format!("{K}/modules.dep.bin")), "{before:?}");

    let t = Target { roots: &roots, module: M, version: V, kernel: K, arch: A };
    let files = [ModuleFile {
        dest_name: M.into(),
        dest_location: "/updates/dkms".into(),
        file: built.join("v4l2loopback.ko"),
    }];
    install(&t, &files, Some(&HostDepmod)).unwrap();
    let dep = fs::read_to_string(roots.install_tree.join(K).join("modules.dep")).unwrap();
    assert_eq!(dep, "updates/dkms/v4l2loopback.ko:\n");
    uninstall(&t, &files, Some(&HostDepmod)).unwrap();
    assert_eq!(snapshot(&roots.install_tree), before, "depmod's output is back as it was");

    let err = HostDepmod.run(&roots.install_tree, "0.0.0-missing").unwrap_err();
    assert!(err.contains("0.0.0-missing"), "{err}");
}

#[test]
fn a_lost_journal_and_a_rebuild_do_not_make_our_old_file_an_original() {
    let env = Env::new();
    install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    fs::remove_file(journal_path(&env.target())).unwrap();
    fs::write(env.roots.built_dir(M, V, K, A).join("module/v4l2loopback.ko.xz"), b"rebuilt v4l2loopback").unwrap();
    let again = install(&env.target(), &env.files(), Some(&FakeDepmod::ok())).unwrap();
    assert_eq!(again.originals, [env.kdir().join("kernel/drivers/media/v4l2loopback.ko.xz")]);
    let backups = snapshot(&env.roots.original_dir(M, K, A));
    assert_eq!(backups.len(), 4, "only the in-tree module is kept: {backups:?}");
}

#[test]
fn installing_over_an_identical_in_tree_destination_keeps_no_backup() {
    let env = Env::new();
    let built = env.roots.built_dir(M, V, K, A).join("module/v4l2loopback.ko.xz");
    fs::write(&built, b"in-tree v4l2loopback").unwrap();
    let files = [ModuleFile { dest_name: M.into(), dest_location: "/kernel/drivers/media".into(), file: built }];
    let done = install(&env.target(), &files, None).unwrap();
    assert!(done.originals.is_empty());
}

#[test]
fn a_build_of_no_modules_installs_with_nothing_placed() {
    let env = Env::new();
    let done = install(&env.target(), &[], None).unwrap();
    assert!(done.files.is_empty() && !done.already_installed);
}
