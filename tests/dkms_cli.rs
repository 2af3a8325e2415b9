//! The dkms verbs' command line through the binary, with no engine: each verb's --help,
//! dkms's argv forms when called as `dkms`, and tree paths relative to the current directory.
mod support;

use std::path::Path;

use support::{ckms, dkms};

fn hello_source(dir: &Path) {
    let src = dir.join("src/hello-1.0");
    std::fs::create_dir_all(&src).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello-dkms");
    for f in ["dkms.conf", "Kbuild", "hello.c"] {
        std::fs::copy(fixture.join(f), src.join(f)).unwrap();
    }
}

#[test]
fn relative_trees_are_taken_from_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    hello_source(&cwd);
    let trees = ["--sourcetree", "src", "--dkmstree", "tree", "--installtree", "lib/modules"];
    let add = ckms(["add", "-m", "hello", "-v", "1.0"].iter().chain(&trees)).current_dir(&cwd).run();
    add.expect_code(0);
    let link = std::fs::read_link(cwd.join("tree/hello/1.0/source")).unwrap();
    assert_eq!(link, cwd.join("src/hello-1.0"), "the source link is absolute{add}");
    let status = ckms(["status"].iter().chain(&trees)).current_dir(&cwd).run();
    assert_eq!(status.expect_code(0).stdout.trim(), "hello/1.0: added", "{status}");
    // From elsewhere, with the absolute paths: the same tree, not broken.
    let (src, tree) = (cwd.join("src"), cwd.join("tree"));
    let elsewhere = ckms(["status", "--sourcetree", src.to_str().unwrap(), "--dkmstree", tree.to_str().unwrap()]);
    let elsewhere = elsewhere.current_dir(Path::new("/")).run();
    assert_eq!(elsewhere.expect_code(0).stdout.trim(), "hello/1.0: added", "{elsewhere}");
}

#[test]
fn dkms_command_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    hello_source(&cwd);
    let trees = ["--sourcetree", "src", "--dkmstree", "tree"];
    // Options before the verb; --module=M/V; dkms's ignored options with its notes.
    let add =
        dkms(&cwd, ["--module=hello/1.0", "add", "--no-prepare-kernel", "-k", "6.1.0-56-amd64"].iter().chain(&trees));
    let add = add.current_dir(&cwd).run();
    add.expect_code(0);
    assert!(add.stderr.contains("Deprecated feature: --no-prepare-kernel"), "{add}");
    // Options the verb has no use for are ignored, as dkms ignores them.
    let status = dkms(&cwd, ["-m", "hello", "-v", "1.0", "status", "--force", "-j", "2"].iter().chain(&trees));
    let status = status.current_dir(&cwd).run();
    assert_eq!(status.expect_code(0).stdout.trim(), "hello/1.0: added", "{status}");
    let ignored =
        dkms(&cwd, ["status", "--kernelsourcedir", "/usr/src/linux"].iter().chain(&trees)).current_dir(&cwd).run();
    assert!(ignored.expect_code(0).stderr.contains("--kernelsourcedir is ignored"), "{ignored}");
    // What dkms refuses is refused (clap's usage error, exit 2).
    let both = dkms(&cwd, ["mktarball", "hello/1.0", "--source-only", "--binaries-only"].iter().chain(&trees));
    both.current_dir(&cwd).run().expect_code(2);
    // mktarball --source-only as dkms, with --archive a bare name: in the module's tarball/.
    let tar = dkms(
        &cwd,
        ["mktarball", "-m", "hello", "-v", "1.0", "--source-only", "--archive=src.tar.gz"].iter().chain(&trees),
    );
    let tar = tar.current_dir(&cwd).run();
    let made = cwd.join("tree/hello/1.0/tarball/src.tar.gz");
    assert_eq!(tar.expect_code(0).stdout.trim(), format!("Tarball location: {}", made.display()), "{tar}");
    // ldtarball of it into another tree, dkms's --archive= form.
    let other = ["--sourcetree", "src2", "--dkmstree", "tree2"];
    let archive = format!("--archive={}", made.display());
    let load = dkms(&cwd, ["ldtarball", archive.as_str()].iter().chain(&other)).current_dir(&cwd).run();
    load.expect_code(0);
    assert_eq!(std::fs::read_link(cwd.join("tree2/hello/1.0/source")).unwrap(), cwd.join("src2/hello-1.0"), "{load}");
}

#[test]
fn each_verb_shows_its_own_options() {
    let help = |verb: &str| {
        let run = ckms([verb, "--help"]).run();
        run.expect_code(0);
        run.stdout
    };
    let mktarball = help("mktarball");
    for own in ["--binaries-only", "--source-only", "--archive", "--kernelver", "--root"] {
        assert!(mktarball.contains(own), "mktarball --help lacks {own}:\n{mktarball}");
    }
    for other in ["--templatekernel", "--verify", "--no-depmod", "--all", "--kernelsourcedir", "FILE..."] {
        assert!(!mktarball.contains(other), "mktarball --help shows {other}:\n{mktarball}");
    }
    let status = help("status");
    for other in ["--force", "--binaries-only", "--no-depmod", "-j "] {
        assert!(!status.contains(other), "status --help shows {other}:\n{status}");
    }
}
