//! Discovery against the real environment: an explicit dead endpoint is an error (no
//! fallback), and a private rootless Podman service starts and stops with its Connection.
//! One test per concern, in one binary, because they change the process environment.

use ckms::diagnose::{code, Diagnose};
use ckms::engine::{connect, start_private, EngineError, EngineKind, EngineSettings};
use ckms::report::{Event, Recorder, Silent};
use std::time::Duration;

mod support;

/// Tests that read or change the process environment take this.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn explicit_dead_endpoint_is_no_engine_without_fallback() {
    let _env = ENV.lock().await;
    std::env::set_var("CKMS_ENGINE_HOST", "unix:///nonexistent/ckms-dead.sock");
    let res = connect(&EngineSettings::default(), &Silent).await;
    std::env::remove_var("CKMS_ENGINE_HOST");
    let err = match res {
        Ok(c) => panic!("connected to {} although CKMS_ENGINE_HOST was dead", c.info.endpoint),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), code::NO_ENGINE);
    match &err {
        EngineError::NoEngine { tried, explicit } => {
            assert!(explicit);
            assert_eq!(tried.len(), 1, "{tried:?}");
            assert_eq!(tried[0].0, "unix:///nonexistent/ckms-dead.sock");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.hint().unwrap().contains("did not fall back"));

    // The same through the setting, which beats the environment.
    let s = EngineSettings { host: Some("unix:///nonexistent/other.sock".into()), rootless_user: None };
    let err = connect(&s, &Silent).await.err().expect("dead setting");
    assert!(err.to_string().contains("other.sock"), "{err}");
}

#[tokio::test]
async fn private_podman_service_starts_and_stops() {
    if rustix::process::getuid().as_raw() != 0 {
        panic!("this test starts podman as the rootless user and must run as root");
    }
    let rec = Recorder::default();
    let conn = start_private(&EngineSettings::default(), &rec)
        .await
        .unwrap_or_else(|e| panic!("private podman service did not start: {e}\n{}", e.hint().unwrap_or_default()));
    assert_eq!(conn.info.kind, EngineKind::Podman);
    assert!(conn.info.rootless, "{:?}", conn.info);
    assert!(conn.is_private());
    let sock = conn.info.endpoint.trim_start_matches("unix://").to_string();
    assert!(sock.starts_with("/run/user/"), "{sock}");
    // Said by the commands that run containers (Context::engine), once per process.
    let warning = conn.limits_warning();
    assert!(warning.as_ref().is_none_or(|w| w.contains("cannot enforce")), "{warning:?}");
    assert_eq!(warning.is_some(), !support::cgroup_v2(), "a limits warning exactly on cgroup v1");
    let said = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Detail { message } if message.contains("cannot enforce")));
    assert!(!said, "not said while connecting: image commands need no word on build limits");
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!std::path::Path::new(&sock).exists(), "{sock} still exists after drop");
    let again = ckms::engine::DockerApi::connect(&format!("unix://{sock}"), Duration::from_secs(1)).await;
    assert!(again.is_err(), "service still answers after drop");
}

#[tokio::test]
async fn missing_rootless_user_names_useradd() {
    if rustix::process::getuid().as_raw() != 0 {
        panic!("must run as root");
    }
    let s = EngineSettings { host: None, rootless_user: Some("ckms-no-such-user".into()) };
    let err = start_private(&s, &Silent).await.err().expect("no such user");
    assert!(matches!(err, EngineError::NoRootlessUser { .. }), "{err:?}");
    assert!(err.hint().unwrap().contains("useradd --create-home ckms-no-such-user"));
}

#[tokio::test]
async fn root_finds_the_rootless_users_podman_first() {
    let _env = ENV.lock().await;
    for v in ["CKMS_ENGINE_HOST", "DOCKER_HOST", "CONTAINER_HOST"] {
        assert!(std::env::var_os(v).is_none(), "{v} is set; this test checks discovery without it");
    }
    assert_eq!(rustix::process::getuid().as_raw(), 0, "must run as root");
    let conn = connect(&EngineSettings::default(), &Silent).await.expect("an engine answers (ci/setup-engines.sh)");
    assert_eq!(conn.info.kind, EngineKind::Podman);
    assert!(conn.info.rootless);
    assert!(conn.info.endpoint.starts_with("unix:///run/user/"), "{}", conn.info.endpoint);
    assert!(!conn.is_private());
}

#[tokio::test]
async fn doctor_reports_engine_and_limits() {
    let host = std::env::var("CKMS_TEST_PODMAN_HOST").expect("CKMS_TEST_PODMAN_HOST must be set");
    let checks = ckms::engine::doctor::doctor(&EngineSettings { host: Some(host), rootless_user: None }).await;
    let get = |name: &str| checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} in {checks:#?}"));
    assert!(get("engine").ok, "{checks:#?}");
    assert!(get("rootless").ok);
    let limits = get("resource limits");
    // Rootless Podman has limits on cgroup v2, none on v1 (said, with the fix).
    assert_eq!(limits.ok, support::cgroup_v2(), "{limits:?}");
    assert_eq!(limits.fix.is_some(), !limits.ok, "{limits:?}");
    assert!(get("leftover containers").detail.contains("ckms containers"));
}
