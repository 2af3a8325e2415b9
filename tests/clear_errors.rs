//! Mistakes a user makes before any build, through the `ckms` binary: each gets a message that
//! names what is wrong in its own terms (not another component's), its exit code, and leaves
//! the tree as it was. No engine or mirror is needed: every case fails before either.

mod support;

use std::path::Path;

use ckms::diagnose::code;
use support::ckms;

/// `ckms add ARGS` against a tree under `root`.
fn add(root: &Path, args: &[&str]) -> support::Outcome {
    let under = |p: &str| root.join(p).to_str().expect("test paths are UTF-8").to_string();
    let trees = [
        ("--dkmstree", under("var/lib/dkms")),
        ("--sourcetree", under("usr/src")),
        ("--installtree", under("lib/modules")),
    ];
    let mut all = vec!["add".to_string()];
    all.extend(trees.into_iter().flat_map(|(flag, dir)| [flag.to_string(), dir]));
    all.extend(args.iter().map(|a| a.to_string()));
    ckms(all).run()
}

fn tree_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("var/lib/dkms")).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_mistyped_directory_is_not_read_as_module_slash_version() {
    let root = tempfile::tempdir().unwrap();
    let run = add(root.path(), &["./mymodul"]);
    run.expect_code(code::USAGE);
    assert!(run.error_message().contains("./mymodul: no such directory or file"), "{run}");
    assert!(!run.stderr.contains(".-mymodul"), "read as MODULE/VERSION{run}");
    assert!(tree_is_empty(root.path()));
}

#[test]
fn a_garbage_tarball_is_the_tarball_s_fault() {
    let root = tempfile::tempdir().unwrap();
    let garbage = root.path().join("m-1.tar.gz");
    std::fs::write(&garbage, b"this is not a tarball at all, not even gzip").unwrap();
    let run = add(root.path(), &[garbage.to_str().unwrap()]);
    run.expect_code(code::NO_CONF);
    assert!(run.error_message().contains("is not a tarball ckms can read"), "{run}");
    assert!(!run.stderr.contains("engine"), "blamed on the engine{run}");
    assert!(run.hint().contains("mktarball"), "{run}");
    assert!(tree_is_empty(root.path()));
}

#[test]
fn an_unreadable_dkms_conf_is_not_called_missing() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("m-1");
    std::fs::create_dir(&src).unwrap();
    // Root reads any file whatever its mode: bytes that are not text are unreadable to anyone.
    std::fs::write(src.join("dkms.conf"), b"PACKAGE_NAME=m\n\xff\xfe\n").unwrap();
    let run = add(root.path(), &[src.to_str().unwrap()]);
    assert!(!run.stderr.contains("does not exist"), "called missing{run}");
    assert!(run.error_message().contains("dkms.conf"), "{run}");
    run.expect_code(code::IO);
    assert!(tree_is_empty(root.path()));
}

#[test]
fn a_dkms_conf_path_adds_its_directory_as_dkms_3_2_does() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("m-1.0");
    std::fs::create_dir(&src).unwrap();
    let conf = "PACKAGE_NAME=m\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/updates\n";
    std::fs::write(src.join("dkms.conf"), conf).unwrap();
    let run = add(root.path(), &[src.join("dkms.conf").to_str().unwrap()]);
    run.expect_code(0);
    assert!(root.path().join("usr/src/m-1.0/dkms.conf").is_file(), "{run}");
}

/// As dkms 3.2 checks a dkms.conf when it is added: refused with what is wrong (exit 8), and
/// not added, though its source was copied (as dkms leaves it).
#[test]
fn a_dkms_conf_dkms_refuses_is_not_added() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("m-1.0");
    std::fs::create_dir(&src).unwrap();
    let conf = "PACKAGE_NAME=m\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=m\nBUILT_MODULE_NAME[1]=m\n\
                DEST_MODULE_LOCATION[0]=/updates\nDEST_MODULE_LOCATION[1]=/updates\n";
    std::fs::write(src.join("dkms.conf"), conf).unwrap();
    let run = add(root.path(), &[src.to_str().unwrap()]);
    run.expect_code(8);
    assert!(run.error_message().contains("Duplicate module 'm' in 'BUILT_MODULE_NAME[1]'"), "{run}");
    assert!(tree_is_empty(root.path()), "{run}");
}
