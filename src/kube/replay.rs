//! The runner of `farm kube collect`: a pod's [`Transcript`] played back to the build code
//! that made it. The conf the pod evaluated goes to the collecting machine's resolver, whose
//! answer must be the one the pod got; the outputs go through the same unpacking and checks
//! as a local build's, and signing follows on this machine.

use std::path::{Path, PathBuf};

use super::transcript::{self, Transcript};
use super::KubeError;
use crate::engine::{Answer, EngineError, Exchange, RunOutcome, RunSpec, Runner};

pub struct ReplayRunner {
    /// The pair's result directory.
    dir: PathBuf,
    /// Its transcript, as read (and checked) before the replay.
    transcript: Transcript,
}

impl ReplayRunner {
    pub fn new(dir: &Path, transcript: Transcript) -> ReplayRunner {
        ReplayRunner { dir: dir.to_path_buf(), transcript }
    }

    fn refuse(&self, message: String) -> EngineError {
        EngineError::Runner(Box::new(KubeError::Replay { dir: self.dir.clone(), message }))
    }

    fn replay(&self, spec: &RunSpec, answer: Option<&Answer<'_>>) -> Result<RunOutcome, EngineError> {
        let wrap = |e: KubeError| EngineError::Runner(Box::new(e));
        let t = &self.transcript;
        if t.asked {
            let request = t.get(&self.dir, transcript::REQUEST).map_err(wrap)?;
            let answer = answer.ok_or_else(|| self.refuse("the pod asked a question no one asks here".into()))?;
            let ours = answer(&request);
            let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
            if names != t.replies.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(
                    self.refuse(format!("the pod was answered {:?}, this machine answers {names:?}", t.replies))
                );
            }
            for (name, body) in &ours {
                if t.get(&self.dir, &transcript::reply_file(name)).map_err(wrap)? != *body {
                    return Err(self.refuse(format!(
                        "the pod built with another {name} than this machine decides: {:?}",
                        String::from_utf8_lossy(body)
                    )));
                }
            }
        }
        let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
        for (path, file) in &t.outputs {
            if !spec.outputs.contains(path) {
                return Err(self.refuse(format!("{path} is not an output of this build")));
            }
            // Each output once: a container has one tar per path, which bounds what is read.
            if outputs.iter().any(|(p, _)| p == path) {
                return Err(self.refuse(format!("{path} is listed twice")));
            }
            outputs.push((path.clone(), t.get(&self.dir, file).map_err(wrap)?));
        }
        let log = t.get(&self.dir, transcript::LOG).map_err(wrap)?;
        Ok(RunOutcome { exit_code: t.exit_code, timed_out: t.timed_out, log, outputs })
    }
}

#[async_trait::async_trait]
impl Runner for ReplayRunner {
    async fn run(&self, spec: &RunSpec) -> Result<RunOutcome, EngineError> {
        self.replay(spec, None)
    }
    async fn run_exchange(
        &self,
        spec: &RunSpec,
        _exchange: &Exchange,
        answer: &Answer<'_>,
    ) -> Result<RunOutcome, EngineError> {
        self.replay(spec, Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};

    fn spec() -> RunSpec {
        RunSpec {
            image: "i".into(),
            cmd: vec![],
            env: vec![],
            user: "1000:1000".into(),
            workdir: "/w".into(),
            scratch: "/w".into(),
            input: vec![],
            volumes: vec![],
            outputs: vec!["/w/out".into()],
            limits: Default::default(),
            network: false,
            follow: None,
        }
    }

    fn recorded(dir: &Path, reply: &[u8]) -> Transcript {
        let mut t = Transcript { exit_code: 0, asked: true, ..Default::default() };
        t.put(dir, transcript::REQUEST, b"conf").unwrap();
        t.put(dir, &transcript::reply_file("make"), reply).unwrap();
        t.replies.push("make".into());
        t.put(dir, "output-0.tar", b"tar").unwrap();
        t.outputs.push(("/w/out".into(), "output-0.tar".into()));
        t.put(dir, transcript::LOG, b"log").unwrap();
        t.finish(dir).unwrap();
        t
    }

    fn ours(req: &[u8]) -> Vec<(String, Vec<u8>)> {
        assert_eq!(req, b"conf");
        vec![("make".into(), b"make -j2".to_vec())]
    }

    #[tokio::test]
    async fn the_same_answer_replays_the_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let e = ReplayRunner::new(dir.path(), recorded(dir.path(), b"make -j2"));
        let ex = Exchange { request: String::new(), reply_dir: String::new() };
        let out = e.run_exchange(&spec(), &ex, &ours).await.unwrap();
        assert_eq!(out.outputs, vec![("/w/out".to_string(), b"tar".to_vec())]);
        assert_eq!(out.log, b"log");
    }

    #[tokio::test]
    async fn another_answer_or_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = ReplayRunner::new(dir.path(), recorded(dir.path(), b"make -j2; curl evil"));
        let ex = Exchange { request: String::new(), reply_dir: String::new() };
        let err = e.run_exchange(&spec(), &ex, &ours).await.unwrap_err();
        assert!(err.to_string().contains("another make"), "{err}");

        let e = ReplayRunner::new(dir.path(), recorded(dir.path(), b"make -j2"));
        std::fs::write(dir.path().join("output-0.tar"), b"other").unwrap();
        let err = e.run_exchange(&spec(), &ex, &ours).await.unwrap_err();
        assert!(err.to_string().contains("changed after its pod wrote it"), "{err}");
        assert_eq!(Diagnose::exit_code(&err), code::CHECKSUM_MISMATCH);
    }
}
