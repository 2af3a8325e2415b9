//! Engine failures, each naming the endpoint (and image or container) involved.

use crate::diagnose::{code, Diagnose};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No candidate endpoint answered and no private service could be started.
    #[error("no container engine answered; tried:\n{}", format_tried(.tried))]
    NoEngine {
        tried: Vec<(String, String)>,
        /// The endpoint came from --engine/config/environment, so no other was tried.
        explicit: bool,
    },
    /// Running as root, but the unprivileged user whose rootless Podman builds use is missing.
    #[error("user {user:?} (whose rootless Podman ckms uses when run as root) does not exist")]
    NoRootlessUser { user: String },
    /// The private `podman system service` could not be started or did not answer.
    #[error("could not start a private Podman service: {detail}")]
    ServiceStart { detail: String },
    /// The engine answered but refused or failed an operation.
    #[error("{op} failed on {endpoint}: {message}")]
    Api { endpoint: String, op: String, message: String },
    #[error("image {reference:?} not found on {endpoint}")]
    ImageNotFound { endpoint: String, reference: String },
    #[error("loading image archive {archive} into {endpoint} failed: {message}")]
    Load { endpoint: String, archive: String, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The caller asked for something ckms never does (root user, relative scratch path).
    #[error("refusing to run: {0}")]
    BadSpec(String),
    /// A runner's own failure (a run made in a pod that does not play back), with that error's
    /// message, exit code and hint: held as any module's error, so the engine imports no runner.
    #[error("{0}")]
    Runner(Box<dyn Diagnose + Send + Sync>),
}

fn format_tried(tried: &[(String, String)]) -> String {
    tried.iter().map(|(e, why)| format!("  {e}: {why}")).collect::<Vec<_>>().join("\n")
}

impl Diagnose for EngineError {
    fn exit_code(&self) -> i32 {
        match self {
            EngineError::NoEngine { .. } | EngineError::NoRootlessUser { .. } | EngineError::ServiceStart { .. } => {
                code::NO_ENGINE
            }
            EngineError::Io { .. } => code::IO,
            EngineError::BadSpec(_) => code::USAGE,
            EngineError::Runner(e) => e.exit_code(),
            EngineError::Api { .. } | EngineError::ImageNotFound { .. } | EngineError::Load { .. } => {
                code::ENGINE_FAILED
            }
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            EngineError::NoEngine { explicit: true, .. } => "The engine was set explicitly \
                (--engine, config `engine.host`, CKMS_ENGINE_HOST, DOCKER_HOST or CONTAINER_HOST), \
                so ckms did not fall back to another one: start that engine, or unset the setting \
                to let ckms find one."
                .into(),
            EngineError::NoEngine { explicit: false, .. } => "Install Podman (`apt-get install \
                podman uidmap slirp4netns`; ckms then starts a private rootless service itself), \
                or start Docker, or point CKMS_ENGINE_HOST at a running engine's socket \
                (e.g. unix:///run/user/1000/podman/podman.sock)."
                .into(),
            EngineError::NoRootlessUser { user } => format!(
                "Builds never run as root on the host. Create the user with subordinate ids: \
                 `useradd --create-home {user} && usermod --add-subuids 200000-265535 \
                 --add-subgids 200000-265535 {user}`, or set engine.rootless_user."
            ),
            EngineError::ServiceStart { .. } => "Check `podman info` as that user (subuid/subgid \
                ranges in /etc/subuid and /etc/subgid, newuidmap installed); `ckms doctor` runs \
                these checks."
                .into(),
            EngineError::Api { .. } => "Run `ckms doctor` to check the engine; the engine's own \
                log (journalctl, podman-service.log) may say more."
                .into(),
            EngineError::ImageNotFound { .. } => "The builder image is not loaded in this engine; \
                it is built and loaded again on the next `ckms build`."
                .into(),
            EngineError::Load { .. } => "The archive may be truncated or the engine's storage \
                full: remove the cached archive to rebuild it, and check free space where the \
                engine stores images."
                .into(),
            EngineError::Io { .. } => "Check the file exists and is readable.".into(),
            EngineError::BadSpec(_) => return None,
            EngineError::Runner(e) => return e.hint(),
        })
    }
}

impl EngineError {
    pub(crate) fn api(endpoint: &str, op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        EngineError::Api { endpoint: endpoint.to_string(), op: op.into(), message: err.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Usage;

    #[test]
    fn explicit_host_hint_says_no_fallback() {
        let e = EngineError::NoEngine {
            tried: vec![("unix:///nope.sock".into(), "socket not found".into())],
            explicit: true,
        };
        assert_eq!(e.exit_code(), code::NO_ENGINE);
        assert!(e.hint().unwrap().contains("did not fall back"));
        assert!(e.to_string().contains("unix:///nope.sock: socket not found"));
    }

    #[test]
    fn no_engine_hint_names_the_ways_out() {
        let e = EngineError::NoEngine { tried: vec![], explicit: false };
        let h = e.hint().unwrap();
        assert!(h.contains("podman") && h.contains("Docker") && h.contains("CKMS_ENGINE_HOST"));
    }

    #[test]
    fn missing_user_hint_has_useradd_and_subids() {
        let e = EngineError::NoRootlessUser { user: "ckms".into() };
        assert_eq!(e.exit_code(), code::NO_ENGINE);
        let h = e.hint().unwrap();
        assert!(h.contains("useradd --create-home ckms") && h.contains("--add-subuids"));
    }

    #[test]
    fn a_runners_error_keeps_its_message_code_and_hint() {
        let e = EngineError::Runner(Box::new(Usage {
            message: "the result does not replay".into(),
            hint: Some("render again".into()),
        }));
        assert_eq!(e.to_string(), "the result does not replay");
        assert_eq!(e.exit_code(), code::USAGE);
        assert_eq!(e.hint().as_deref(), Some("render again"));
    }

    #[test]
    fn api_errors_are_engine_failed() {
        let e = EngineError::api("unix:///x", "create container from image a:b", "boom");
        assert_eq!(e.exit_code(), code::ENGINE_FAILED);
        assert!(e.to_string().contains("unix:///x") && e.to_string().contains("a:b"));
    }
}
