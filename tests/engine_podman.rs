//! Engine integration tests against rootless Podman at $CKMS_TEST_PODMAN_HOST (required).

#[macro_use]
#[path = "common/engine_suite.rs"]
mod suite;

engine_tests!("CKMS_TEST_PODMAN_HOST", ckms::engine::EngineKind::Podman, true);
