//! The runner of the in-pod command: a [`RunSpec`] run as child processes of the pod, which
//! is the sandbox (non-root, read-only root, no network, no capabilities: the pod's security
//! context). Inputs are unpacked into the pod's emptyDir volumes at the paths a container
//! would have them, the exchange is answered from files, and everything the collecting
//! machine needs is written as a [`Transcript`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::transcript::{self, Transcript};
use crate::artifact::pack_dir;
use crate::engine::{self, Answer, EngineError, Exchange, Input, LogSink, Owner, RunOutcome, RunSpec, Runner};

/// The most of a run's output kept (the rest is dropped: a log flood must not fill the volume),
/// which is what collect reads at most.
const LOG_MAX: usize = transcript::MAX_LOG as usize;
/// How often the exchange's request is looked for.
const POLL: Duration = Duration::from_millis(50);

pub struct ProcessRunner {
    /// Where the transcript goes.
    dir: PathBuf,
    /// The image's own environment (its config's `Env`), which an engine gives every run
    /// before the run's own: the same for a build in a pod as in a local container.
    image_env: Vec<String>,
}

impl ProcessRunner {
    pub fn new(dir: &Path, image_env: &[String]) -> ProcessRunner {
        ProcessRunner { dir: dir.to_path_buf(), image_env: image_env.to_vec() }
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::api("pod", what, e)
    }

    async fn go(&self, spec: &RunSpec, exchange: Option<(&Exchange, &Answer<'_>)>) -> Result<RunOutcome, EngineError> {
        let (uid, gid) = engine::parse_user(&spec.user)?;
        // Started as root (never in a pod, whose security context forbids it): the run gets the
        // spec's user, as an engine would give it.
        let as_root = rustix::process::geteuid().is_root();
        if !spec.scratch.starts_with('/') {
            return Err(EngineError::BadSpec(format!("scratch path {:?} is not absolute", spec.scratch)));
        }
        let own = as_root.then_some((uid, gid));
        self.unpack(&spec.scratch, &spec.input, own)?;
        for v in &spec.volumes {
            self.unpack(&v.path, &v.input, own)?;
        }

        let mut cmd =
            tokio::process::Command::new(spec.cmd.first().ok_or_else(|| EngineError::BadSpec("no command".into()))?);
        // Nothing of the pod's own environment (its index, Kubernetes's variables): the image's,
        // then the run's, as an engine gives them.
        cmd.args(&spec.cmd[1..]).env_clear().current_dir(&spec.workdir);
        for kv in self.image_env.iter().chain(&spec.env) {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if as_root {
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| self.fail(&format!("starting {}", spec.cmd.join(" ")), e))?;
        let pgid = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));

        let log = Arc::new(Mutex::new(Vec::new()));
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|r| tokio::spawn(collect(r, log.clone(), spec.follow.clone())))
        .collect();

        let started = std::time::Instant::now();
        let mut record = Transcript::default();
        let mut asked = exchange.is_none();
        let deadline = tokio::time::Instant::now() + spec.limits.timeout;
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status.map_err(|e| self.fail("waiting", e))?),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = tokio::time::sleep(POLL), if !asked => {
                    if let Some((ex, answer)) = exchange {
                        asked = self.answer(ex, answer, &mut record)?;
                    }
                }
            }
        };
        let timed_out = status.is_none();
        if timed_out {
            if let Some(pgid) = pgid {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
        }
        for r in readers {
            let _ = r.await;
        }
        // A signal is the shell's 128 + signal, as engines report it.
        let exit_code = status
            .map(|s| {
                s.code()
                    .map(i64::from)
                    .unwrap_or_else(|| 128 + i64::from(std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9)))
            })
            .unwrap_or(137);
        let log = log.lock().map(|l| l.clone()).unwrap_or_default();

        let mut outputs = Vec::new();
        for (n, path) in spec.outputs.iter().enumerate() {
            let Some(tar) = output_tar(Path::new(path)).map_err(|e| self.fail(&format!("reading {path}"), e))? else {
                continue;
            };
            let file = format!("output-{n}.tar");
            record.put(&self.dir, &file, &tar).map_err(|e| self.fail("writing the transcript", e))?;
            record.outputs.push((path.clone(), file));
            outputs.push((path.clone(), tar));
        }
        record.exit_code = exit_code;
        record.timed_out = timed_out;
        record.seconds = started.elapsed().as_secs_f64();
        record.put(&self.dir, transcript::LOG, &log).map_err(|e| self.fail("writing the transcript", e))?;
        record.finish(&self.dir).map_err(|e| self.fail("writing the transcript", e))?;
        Ok(RunOutcome { exit_code, timed_out, log, outputs })
    }

    /// Answers the run's question if it has asked: true once answered.
    fn answer(&self, ex: &Exchange, answer: &Answer<'_>, record: &mut Transcript) -> Result<bool, EngineError> {
        let request = Path::new(&ex.request);
        let Ok(bytes) = std::fs::read(request) else { return Ok(false) };
        let werr = |e: super::KubeError| self.fail("writing the transcript", e);
        record.put(&self.dir, transcript::REQUEST, &bytes).map_err(werr)?;
        record.asked = true;
        let reply_dir = Path::new(&ex.reply_dir);
        for (name, body) in answer(&bytes) {
            record.put(&self.dir, &transcript::reply_file(&name), &body).map_err(werr)?;
            record.replies.push(name.clone());
            // Each file whole before the run can see it: written aside, then renamed.
            let tmp = reply_dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &body)
                .and_then(|_| std::fs::rename(&tmp, reply_dir.join(&name)))
                .map_err(|e| self.fail(&format!("answering in {}", reply_dir.display()), e))?;
        }
        Ok(true)
    }

    /// Unpacks `inputs` into `dir`; uid 0's are made read-only (the run's user cannot change
    /// them, as it cannot in a container where uid 0 owns them); `own` gives the rest to the
    /// run's user when ckms runs as root.
    fn unpack(&self, dir: &str, inputs: &[Input], own: Option<(u32, u32)>) -> Result<(), EngineError> {
        let dir = Path::new(dir);
        let err = |e: std::io::Error| EngineError::Io { path: dir.display().to_string(), source: e };
        std::fs::create_dir_all(dir).map_err(err)?;
        if let Some((uid, gid)) = own {
            chown(dir, uid, gid).map_err(err)?;
        }
        for input in inputs {
            let tar = input.tar().map_err(err)?;
            let mut ar = tar::Archive::new(&tar[..]);
            ar.set_preserve_permissions(true);
            ar.set_overwrite(true);
            let mut paths = Vec::new();
            for entry in ar.entries().map_err(err)? {
                let mut entry = entry.map_err(err)?;
                let rel = entry.path().map_err(err)?.into_owned();
                if entry.unpack_in(dir).map_err(err)? {
                    paths.push(dir.join(rel));
                }
            }
            for path in &paths {
                let meta = std::fs::symlink_metadata(path).map_err(err)?;
                if meta.is_symlink() {
                    continue;
                }
                match (input.owner, own) {
                    (Owner::Root, _) => {
                        use std::os::unix::fs::PermissionsExt;
                        let mode = meta.permissions().mode() & !0o222;
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
                    }
                    (Owner::User, Some((uid, gid))) => chown(path, uid, gid).map_err(err)?,
                    (Owner::User, None) => {}
                }
            }
        }
        Ok(())
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

async fn collect(
    mut from: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    log: Arc<Mutex<Vec<u8>>>,
    follow: Option<LogSink>,
) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Some(sink) = &follow {
            (sink.0)(&buf[..n]);
        }
        if let Ok(mut l) = log.lock() {
            let room = LOG_MAX.saturating_sub(l.len());
            l.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// An output as an engine returns it: a tar whose entries are relative to the path (a
/// directory's contents, or the one file). None when the path does not exist.
fn output_tar(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        return pack_dir(path, "").map(Some).map_err(std::io::Error::other);
    }
    let mut b = tar::Builder::new(Vec::new());
    let name = path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("output"));
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len());
    h.set_mode(0o644);
    b.append_data(&mut h, name, std::fs::File::open(path)?)?;
    b.into_inner().map(Some)
}

#[async_trait::async_trait]
impl Runner for ProcessRunner {
    async fn run(&self, spec: &RunSpec) -> Result<RunOutcome, EngineError> {
        self.go(spec, None).await
    }
    async fn run_exchange(
        &self,
        spec: &RunSpec,
        exchange: &Exchange,
        answer: &Answer<'_>,
    ) -> Result<RunOutcome, EngineError> {
        self.go(spec, Some((exchange, answer))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Limits, Volume};
    use crate::testutil::tar_of;

    fn spec(root: &Path, script: &str) -> RunSpec {
        let scratch = root.join("scratch").display().to_string();
        RunSpec {
            image: "unused".into(),
            cmd: vec!["bash".into(), "-c".into(), script.into()],
            env: vec!["GREETING=hello".into()],
            user: "1000:1000".into(),
            workdir: scratch.clone(),
            scratch: scratch.clone(),
            input: vec![Input::user(tar_of(&[("in/a.txt", b"a\n")])), Input::root(tar_of(&[("ro/b.txt", b"b\n")]))],
            volumes: vec![Volume { path: root.join("vol").display().to_string(), input: vec![] }],
            outputs: vec![format!("{scratch}/out"), format!("{scratch}/missing")],
            limits: Limits { timeout: Duration::from_secs(20), ..Limits::default() },
            network: false,
            follow: None,
        }
    }

    fn path_env() -> Vec<String> {
        vec![format!("PATH={}", std::env::var("PATH").unwrap())]
    }

    fn root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        // The run's user (when the tests run as root) must reach its directories.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        t
    }

    #[tokio::test]
    async fn a_run_answers_its_question_and_leaves_a_transcript_that_checks() {
        let root = root();
        let results = root.path().join("results");
        let s = spec(
            root.path(),
            "set -e; mkdir -p out plan; echo \"$GREETING $(cat in/a.txt)\" > out/said; \
             if echo x > ro/b.txt 2>/dev/null && [ \"$(id -u)\" != 0 ]; then echo writable; exit 3; fi; \
             echo question > ask.tmp && mv ask.tmp ask; until [ -e plan/ready ]; do sleep 0.05; done; \
             cat plan/make >> out/said; echo done",
        );
        let ex = Exchange { request: format!("{}/ask", s.scratch), reply_dir: format!("{}/plan", s.scratch) };
        let answer = |req: &[u8]| {
            assert_eq!(req, b"question\n");
            vec![("make".to_string(), b"make -j2\n".to_vec()), ("ready".to_string(), Vec::new())]
        };
        let out = ProcessRunner::new(&results, &path_env()).run_exchange(&s, &ex, &answer).await.unwrap();
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.log));
        assert!(!out.timed_out);
        assert_eq!(out.outputs.len(), 1, "a missing output is left out");
        let said = engine::first_file(&out.outputs[0].1).unwrap();
        assert_eq!(said, b"hello a\nmake -j2\n");

        let t = Transcript::read(&results).unwrap();
        assert!(t.asked);
        assert_eq!(t.replies, ["make", "ready"]);
        assert_eq!(t.get(&results, transcript::REQUEST).unwrap(), b"question\n");
        assert_eq!(t.get(&results, &t.outputs[0].1).unwrap(), out.outputs[0].1);
        assert!(String::from_utf8_lossy(&t.get(&results, transcript::LOG).unwrap()).contains("done"));

        std::fs::write(results.join("reply/make"), b"make evil\n").unwrap();
        let e = t.get(&results, "reply/make").unwrap_err();
        assert!(matches!(e, super::super::KubeError::Tampered { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_is_killed_with_its_children() {
        let root = root();
        let mut s = spec(root.path(), "sleep 30 & sleep 30; echo never");
        s.limits.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let out = ProcessRunner::new(&root.path().join("results"), &path_env()).run(&s).await.unwrap();
        assert!(out.timed_out && out.exit_code == 137);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(Transcript::read(&root.path().join("results")).unwrap().timed_out);
    }

    #[tokio::test]
    async fn a_failing_run_reports_its_status_and_output() {
        let root = root();
        let s = spec(root.path(), "echo to-stderr >&2; exit 10");
        let out = ProcessRunner::new(&root.path().join("results"), &path_env()).run(&s).await.unwrap();
        assert_eq!(out.exit_code, 10);
        assert!(String::from_utf8_lossy(&out.log).contains("to-stderr"));
    }
}
