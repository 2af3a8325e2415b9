//! Builder images on Docker Engine (CKMS_TEST_DOCKER_HOST); fails when it is missing.
mod support;

#[path = "scenario/builder_images.rs"]
mod scenario;

#[tokio::test(flavor = "multi_thread")]
async fn builder_images_on_docker() {
    scenario::scenario("CKMS_TEST_DOCKER_HOST").await;
}
