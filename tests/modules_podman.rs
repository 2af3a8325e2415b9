//! Modules through the dkms verbs on rootless Podman (CKMS_TEST_PODMAN_HOST); fails when it is
//! missing: hostile modules contained, and the whole cycle in a realistic --root tree.
mod support;

#[path = "scenario/hostile.rs"]
mod hostile;

#[path = "scenario/root_install.rs"]
mod root_install;

#[test]
fn hostile_modules_on_podman() {
    hostile::scenario("CKMS_TEST_PODMAN_HOST");
}

#[test]
fn root_install_on_podman() {
    root_install::scenario("CKMS_TEST_PODMAN_HOST");
}
