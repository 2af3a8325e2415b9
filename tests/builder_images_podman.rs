//! Builder images on rootless Podman (CKMS_TEST_PODMAN_HOST); fails when it is missing.
mod support;

#[path = "scenario/builder_images.rs"]
mod scenario;

#[tokio::test(flavor = "multi_thread")]
async fn builder_images_on_podman() {
    scenario::scenario("CKMS_TEST_PODMAN_HOST").await;
}

#[test]
fn kernels_lists_every_release() {
    let engine = support::engine_host("CKMS_TEST_PODMAN_HOST");
    let ks = scenario::kernels(&engine);
    for (pattern, gcc) in [
        (r"^6\.1\.0-\d+-amd64$", "gcc-12"),
        (r"^6\.12\.\d+\+deb12-amd64$", "gcc-12"),
        (r"^6\.12\.\d+\+deb13-amd64$", "gcc-14"),
        (r"^7\.\d+\.\d+\+deb14-amd64$", "gcc-16"),
    ] {
        let re = regex::Regex::new(pattern).unwrap();
        let found: Vec<_> = ks.iter().filter(|(k, _)| re.is_match(k)).collect();
        assert!(!found.is_empty(), "no kernel matching {pattern} in {ks:?}");
        assert!(found.iter().all(|(_, c)| c == gcc), "{pattern} should be built with {gcc}: {found:?}");
    }
}
