use super::*;
use crate::config::GateConfig;
use crate::lifecycle::testing::{built, context};
use crate::lifecycle::Options;

/// A tree under `root` with m/1 (AUTOINSTALL) built for kernel k, its source in the source
/// tree, and kernel k installed (its modules.order).
fn host(root: &Path) -> crate::tree::Roots {
    let roots = built(root, b"module", true);
    let src = roots.source_tree.join("m-1");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("dkms.conf"), "PACKAGE_NAME=m\nPACKAGE_VERSION=1\nAUTOINSTALL=yes\n").unwrap();
    std::os::unix::fs::symlink(&src, roots.module_dir("m", "1").join("source")).unwrap();
    std::fs::create_dir_all(roots.install_tree.join("k")).unwrap();
    std::fs::write(roots.install_tree.join("k/modules.order"), "").unwrap();
    roots
}

fn target() -> KernelTarget {
    KernelTarget { release: "k".into(), arch: Some("x86_64".into()) }
}

#[tokio::test]
async fn a_built_module_makes_the_kernel_ready_and_an_uninstalled_one_shows_missing() {
    let root = tempfile::tempdir().unwrap();
    let roots = host(root.path());
    let ctx = context(root.path());
    let lc = Lifecycle::new(&ctx, roots, Options::default());
    let cfg = GateConfig { state_dir: Some(root.path().join("gate")), ..GateConfig::default() };
    let gate = Gate::new(&lc, &cfg);
    assert_eq!(lc.autoinstall_modules(), [ModuleVersion { module: "m".into(), version: "1".into() }]);

    // preinst: built in the tree already, so ready, and kept.
    let k = gate.prepare(&target()).await.unwrap();
    assert!(k.ready, "{k:?}");
    assert_eq!(gate.decide(&k).unwrap(), Decision::Ready);
    assert!(root.path().join("gate/k.json").is_file());

    // The kernel's status: built, but not installed.
    let status = gate.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].modules[0].state, State::Missing, "{status:?}");
    assert_eq!(status[0].modules[0].why.as_deref(), Some("not installed for k"));
    assert_eq!(gate.newest_ready(), None);
}

#[tokio::test]
async fn a_failure_kept_by_postinst_is_refused_or_warned_by_policy() {
    let root = tempfile::tempdir().unwrap();
    let ctx = context(root.path());
    let lc = Lifecycle::new(&ctx, host(root.path()), Options::default());
    let mut cfg = GateConfig { state_dir: Some(root.path().join("gate")), ..GateConfig::default() };
    let mv = ModuleVersion { module: "m".into(), version: "1".into() };
    let failed =
        crate::lifecycle::AutoResult { module: mv, code: 10, message: "Bad return status for module build".into() };
    let done = Autoinstalled { kernel: "k".into(), failed: vec![failed], ..Autoinstalled::default() };
    let k = Gate::new(&lc, &cfg).installed(&target(), &done).await.unwrap();
    assert!(!k.ready);
    assert_eq!(
        (k.modules[0].state, k.modules[0].why.as_deref()),
        (State::Failed, Some("Bad return status for module build"))
    );
    // Kept: status says why.
    assert_eq!(Gate::new(&lc, &cfg).status()[0].modules[0].state, State::Failed);

    let Ok(Decision::Warn(lines)) = Gate::new(&lc, &cfg).decide(&k) else { panic!("keep-default warns") };
    assert_eq!(lines[1], "  m/1 (failed: Bad return status for module build)");
    cfg.on_failure = Some(OnFailure::Refuse);
    let e = Gate::new(&lc, &cfg).decide(&k).unwrap_err();
    assert_eq!(e.exit_code(), code::HOOK_FAILED);
    assert!(e.to_string().contains("kernel k is not ready: m/1 (failed"), "{e}");
}

#[test]
fn installed_kernels_newest_first() {
    let root = tempfile::tempdir().unwrap();
    for k in ["6.1.0-56-amd64", "6.12.57+deb12-amd64", "6.1.0-9-amd64", "no-modules-order"] {
        std::fs::create_dir_all(root.path().join(k)).unwrap();
        if k != "no-modules-order" {
            std::fs::write(root.path().join(k).join("modules.order"), "").unwrap();
        }
    }
    assert_eq!(installed_kernels(root.path()), ["6.12.57+deb12-amd64", "6.1.0-56-amd64", "6.1.0-9-amd64"]);
}
