//! Engine integration tests against Docker Engine at $CKMS_TEST_DOCKER_HOST (required).

#[macro_use]
#[path = "common/engine_suite.rs"]
mod suite;

engine_tests!("CKMS_TEST_DOCKER_HOST", ckms::engine::EngineKind::Docker, false);
