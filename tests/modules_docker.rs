//! Modules through the dkms verbs on Docker Engine (CKMS_TEST_DOCKER_HOST); fails when it is
//! missing: hostile modules contained, the whole cycle in a realistic --root tree, what a
//! build sees beyond its source (its package's Depends, other modules' sources), and prebuilt
//! modules installed on a machine with no engine and no compiler.
mod support;

#[path = "scenario/hostile.rs"]
mod hostile;

#[path = "scenario/root_install.rs"]
mod root_install;

#[path = "scenario/srctree.rs"]
mod srctree;

#[path = "scenario/binaries_only.rs"]
mod binaries_only;

#[test]
fn hostile_modules_on_docker() {
    hostile::scenario("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn root_install_on_docker() {
    root_install::scenario("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn source_tree_on_docker() {
    srctree::scenario("CKMS_TEST_DOCKER_HOST");
}

#[test]
fn binaries_only_across_machines_on_docker() {
    binaries_only::scenario("CKMS_TEST_DOCKER_HOST");
}
