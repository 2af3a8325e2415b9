//! Trees and contexts for the lifecycle's unit tests: no engine, no index, no network.

use std::path::Path;

use super::{Manifest, ManifestModule};
use crate::cache::Cache;
use crate::config::Config;
use crate::context::Context;
use crate::profile::Catalog;
use crate::report::Silent;
use crate::tree::Roots;

/// A tree under `root` holding a build of m/1 for kernel k whose module is `module`; the
/// build record says the kernel signs modules when `sig_hash`.
pub fn built(root: &Path, module: &[u8], sig_hash: bool) -> Roots {
    let roots = Roots::under(root, "/var/lib/ckms");
    let dir = roots.built_dir("m", "1", "k", "x86_64");
    std::fs::create_dir_all(dir.join("module")).unwrap();
    std::fs::write(dir.join("module/m.ko"), module).unwrap();
    Manifest {
        module: "m".into(),
        version: "1".into(),
        kernel: "k".into(),
        arch: "x86_64".into(),
        profile: "debian-bookworm".into(),
        image: "img".into(),
        modules: vec![ManifestModule {
            built_name: "m".into(),
            dest_name: "m".into(),
            dest_location: "/updates/dkms".into(),
            file: "module/m.ko".into(),
        }],
        autoinstall: false,
        pre_install: None,
        post_install: None,
        post_remove: None,
        sig_hash: sig_hash.then(|| "sha256".into()),
        signed_by: None,
        make_seconds: None,
        rebuild_with: Vec::new(),
    }
    .write(&dir)
    .unwrap();
    roots
}

/// A context whose keys, dkms configuration and cache are all under `root`.
pub fn context(root: &Path) -> Context {
    let env = [
        ("CKMS_DKMS_MOK_DIR", root.join("no-dkms")),
        ("CKMS_CONF_DIR", root.join("etc-dkms")),
        ("CKMS_CACHE_DIR", root.join("cache")),
    ];
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v.display().to_string())).collect();
    let config = Config::load_from(&[], env).unwrap();
    Context::of(
        config,
        Catalog::load(&[]).unwrap(),
        Cache::open(root.join("cache")).unwrap(),
        std::sync::Arc::new(Silent),
        false,
    )
}
