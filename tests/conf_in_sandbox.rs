//! Real dkms.conf files from Debian's *-dkms packages, evaluated by bash inside the builder
//! image of a real kernel (whose own .config they read), on both engines.
mod support;

#[path = "scenario/builder_images.rs"]
#[allow(dead_code)]
mod scenario;

use std::path::Path;
use std::time::Duration;

use ckms::build::evaluate_conf;
use ckms::conf::{resolve, DestPolicy, EvalContext, KernelFacts, Resolved};
use ckms::diagnose::{code, Diagnose};
use ckms::engine::DockerApi;

const KERNEL: &str = "6.1.0-56-amd64";

fn ctx(module: &str, version: &str) -> EvalContext {
    EvalContext {
        conf_path: String::new(),
        override_dir: None,
        kernelver: KERNEL.into(),
        arch: "x86_64".into(),
        kernel_source_dir: format!("/lib/modules/{KERNEL}/build"),
        dkms_tree: "/var/lib/dkms".into(),
        source_tree: "/usr/src".into(),
        install_tree: "/lib/modules".into(),
        module: module.into(),
        module_version: version.into(),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkms").join(name)).unwrap()
}

async fn evaluate_real_confs(var: &str) {
    let engine_host = support::engine_host(var);
    let built = scenario::json_result(&engine_host, &["image", "build", "-k", KERNEL]);
    let image = built[0]["reference"].as_str().unwrap().to_string();
    let api = DockerApi::connect(&engine_host, Duration::from_secs(10)).await.expect("engine answers");
    let catalog = ckms::profile::Catalog::load(&[]).unwrap();
    let recipe = catalog.recipe("builder").unwrap();
    let facts = KernelFacts { release: KERNEL.into(), arch: "x86_64".into(), config: None };
    let dest = DestPolicy::Override("/updates/dkms".into());

    for (file, module, version, expect_modules) in [
        ("v4l2loopback-dkms.conf", "v4l2loopback", "0.12.7", 1),
        // Debian's kernel has CONFIG_USB_HID, which this conf checks itself in the .config.
        ("digimend-dkms.conf", "digimend", "11", 4),
        ("jool-dkms.conf", "jool-dkms", "4.1.9", 3),
    ] {
        let raw = evaluate_conf(&api, recipe, &image, &fixture(file), &[], &ctx(module, version), file).await.unwrap();
        match resolve(&raw, &facts, &dest).unwrap() {
            Resolved::Build(plan) => assert_eq!(plan.modules.len(), expect_modules, "{file}: {plan:?}"),
            other => panic!("{file} should build for {KERNEL}: {other:?}"),
        }
    }

    let err = evaluate_conf(&api, recipe, &image, b"PACKAGE_NAME=x\nif then fi\n", &[], &ctx("x", "1"), "broken.conf")
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), code::BAD_CONF, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn real_confs_in_podman() {
    evaluate_real_confs("CKMS_TEST_PODMAN_HOST").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_confs_in_docker() {
    evaluate_real_confs("CKMS_TEST_DOCKER_HOST").await;
}
