//! The little of the Kubernetes API the follow pod uses: Jobs in its own namespace, created,
//! read and deleted with its service account ([`Jobs`]); [`InCluster`] is the client a pod
//! has (the service account's token and CA, the API server from the environment). Kubernetes
//! schedules the Jobs' pods; ckms only creates Jobs and waits for them ([`wait`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;

use super::KubeError;

/// Where a pod finds its service account's credentials.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Jobs in one namespace.
#[async_trait::async_trait]
pub trait Jobs: Send + Sync {
    /// Creates `job`; one of that name already there (the same pairs: the name is a hash of
    /// their keys) is taken as created.
    async fn create(&self, job: &Job) -> Result<(), KubeError>;
    /// The Job `name` with its status; None when there is none.
    async fn get(&self, name: &str) -> Result<Option<Job>, KubeError>;
    /// Deletes the Job `name` and its pods; none there is not an error.
    async fn delete(&self, name: &str) -> Result<(), KubeError>;
}

/// The API server as a pod reaches it: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
/// trusting the service account's `ca.crt`, authenticated with its `token` (read again for
/// every request: the kubelet rotates projected tokens), in its `namespace`.
pub struct InCluster {
    client: reqwest::Client,
    base: String,
    namespace: String,
    /// None: the API is reached through a proxy that authenticates (`kubectl proxy`).
    token_file: Option<PathBuf>,
}

fn api_err(message: impl Into<String>) -> KubeError {
    KubeError::Api { message: message.into() }
}

impl InCluster {
    /// The client of the pod this runs in.
    pub fn from_pod() -> Result<InCluster, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| api_err("KUBERNETES_SERVICE_HOST is not set: not in a pod"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        // An IPv6 address needs brackets in a URL.
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        InCluster::new(&format!("https://{host}:{port}"), Path::new(SERVICE_ACCOUNT))
    }

    /// A client of the API server at `base`, with the credentials in `dir` (token, ca.crt,
    /// namespace).
    pub fn new(base: &str, dir: &Path) -> Result<InCluster, KubeError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(KubeError::io(&path))
        };
        let namespace = String::from_utf8_lossy(&read("namespace")?).trim().to_string();
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if base.starts_with("https:") {
            let cert = reqwest::Certificate::from_pem(&read("ca.crt")?)
                .map_err(|e| api_err(format!("{}: {e}", dir.join("ca.crt").display())))?;
            b = b.add_root_certificate(cert);
        }
        let client = b.build().map_err(|e| api_err(e.to_string()))?;
        let token_file = Some(dir.join("token"));
        Ok(InCluster { client, base: base.trim_end_matches('/').into(), namespace, token_file })
    }

    /// A client of the API at `base` through a proxy that authenticates (`kubectl proxy`), in
    /// `namespace`: follow outside the cluster, its builds in it.
    pub fn proxied(base: &str, namespace: &str) -> Result<InCluster, KubeError> {
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| api_err(e.to_string()))?;
        Ok(InCluster { client, base: base.trim_end_matches('/').into(), namespace: namespace.into(), token_file: None })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn url(&self, name: Option<&str>) -> String {
        let jobs = format!("{}/apis/batch/v1/namespaces/{}/jobs", self.base, self.namespace);
        match name {
            Some(n) => format!("{jobs}/{n}"),
            None => jobs,
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, KubeError> {
        let r = self.client.request(method, url);
        let Some(file) = &self.token_file else { return Ok(r) };
        let token = std::fs::read_to_string(file).map_err(KubeError::io(file))?;
        Ok(r.bearer_auth(token.trim()))
    }
}

/// The status's message of a refused request, or its body.
async fn refused(what: &str, r: reqwest::Response) -> KubeError {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    api_err(format!("{what}: {status}: {message}"))
}

#[async_trait::async_trait]
impl Jobs for InCluster {
    async fn create(&self, job: &Job) -> Result<(), KubeError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let r = self
            .request(reqwest::Method::POST, &self.url(None))?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(job)?)
            .send()
            .await
            .map_err(|e| api_err(format!("create Job {name}: {e}")))?;
        if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        Err(refused(&format!("create Job {name}"), r).await)
    }

    async fn get(&self, name: &str) -> Result<Option<Job>, KubeError> {
        let r = self
            .request(reqwest::Method::GET, &self.url(Some(name)))?
            .send()
            .await
            .map_err(|e| api_err(format!("get Job {name}: {e}")))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(refused(&format!("get Job {name}"), r).await);
        }
        let body = r.bytes().await.map_err(|e| api_err(format!("get Job {name}: {e}")))?;
        serde_json::from_slice(&body).map(Some).map_err(|e| api_err(format!("get Job {name}: {e}")))
    }

    async fn delete(&self, name: &str) -> Result<(), KubeError> {
        // Background: the Job goes now, its pods after it (without it they would stay).
        let url = format!("{}?propagationPolicy=Background", self.url(Some(name)));
        let r = self
            .request(reqwest::Method::DELETE, &url)?
            .send()
            .await
            .map_err(|e| api_err(format!("delete Job {name}: {e}")))?;
        if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(refused(&format!("delete Job {name}"), r).await)
    }
}

/// How a Job ended: its `Complete` or `Failed` condition (a Job with failed indexes fails
/// once every index has run: `maxFailedIndexes` is its completions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Complete,
    Failed,
}

/// How `job` ended, if it has.
pub fn ended(job: &Job) -> Option<Ended> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some(Ended::Complete),
        "Failed" => Some(Ended::Failed),
        _ => None,
    })
}

/// Waits until every Job of `names` has ended, asking every `every`, for at most `timeout`.
/// A Job that is gone (deleted by someone else) ends as Failed: its results may be partial,
/// and collect says which indexes have none.
pub async fn wait(
    api: &dyn Jobs,
    names: &[String],
    every: Duration,
    timeout: Duration,
) -> Result<Vec<(String, Ended)>, KubeError> {
    let started = Instant::now();
    let mut done: Vec<(String, Ended)> = Vec::new();
    loop {
        let pending: Vec<&String> = names.iter().filter(|n| !done.iter().any(|(d, _)| d == *n)).collect();
        for name in pending {
            let state = match api.get(name).await? {
                Some(job) => ended(&job),
                None => Some(Ended::Failed),
            };
            if let Some(e) = state {
                done.push((name.clone(), e));
            }
        }
        if done.len() == names.len() {
            return Ok(done);
        }
        if started.elapsed() >= timeout {
            let left: Vec<&str> =
                names.iter().filter(|n| !done.iter().any(|(d, _)| d == *n)).map(String::as_str).collect();
            return Err(api_err(format!("Jobs not done after {} s: {}", timeout.as_secs(), left.join(", "))));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording fake of the API: Jobs kept in memory, each ending as the test says.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};

    use super::{Jobs, KubeError};

    #[derive(Default)]
    pub struct FakeJobs {
        /// Every call, as `create NAME`, `get NAME`, `delete NAME`.
        pub calls: Mutex<Vec<String>>,
        pub jobs: Mutex<BTreeMap<String, Job>>,
        /// How many gets a Job stays running before it ends with this condition.
        pub end_after: usize,
        pub condition: String,
    }

    impl FakeJobs {
        pub fn ending(after: usize, condition: &str) -> FakeJobs {
            FakeJobs { end_after: after, condition: condition.into(), ..Default::default() }
        }

        fn record(&self, call: String) -> usize {
            let mut calls = self.calls.lock().unwrap();
            calls.push(call.clone());
            calls.iter().filter(|c| **c == call).count()
        }
    }

    #[async_trait::async_trait]
    impl Jobs for FakeJobs {
        async fn create(&self, job: &Job) -> Result<(), KubeError> {
            let name = job.metadata.name.clone().unwrap();
            self.record(format!("create {name}"));
            self.jobs.lock().unwrap().entry(name).or_insert_with(|| job.clone());
            Ok(())
        }

        async fn get(&self, name: &str) -> Result<Option<Job>, KubeError> {
            let n = self.record(format!("get {name}"));
            let mut job = match self.jobs.lock().unwrap().get(name) {
                Some(j) => j.clone(),
                None => return Ok(None),
            };
            if n > self.end_after {
                let c = JobCondition { type_: self.condition.clone(), status: "True".into(), ..Default::default() };
                job.status = Some(JobStatus { conditions: Some(vec![c]), ..Default::default() });
            }
            Ok(Some(job))
        }

        async fn delete(&self, name: &str) -> Result<(), KubeError> {
            self.record(format!("delete {name}"));
            self.jobs.lock().unwrap().remove(name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::fake::FakeJobs;
    use super::*;

    fn job(name: &str) -> Job {
        Job { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() }
    }

    #[tokio::test]
    async fn wait_asks_until_every_job_has_ended() {
        let api = FakeJobs::ending(2, "Complete");
        for n in ["a", "b"] {
            api.create(&job(n)).await.unwrap();
        }
        let names = vec!["a".to_string(), "b".to_string()];
        let done = wait(&api, &names, Duration::from_millis(1), Duration::from_secs(5)).await.unwrap();
        assert_eq!(done, [("a".to_string(), Ended::Complete), ("b".to_string(), Ended::Complete)]);
        let calls = api.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| *c == "get a").count(), 3, "{calls:?}");
    }

    #[tokio::test]
    async fn a_job_that_never_ends_times_out_and_a_gone_one_failed() {
        let api = FakeJobs::ending(usize::MAX, "Complete");
        api.create(&job("slow")).await.unwrap();
        let err =
            wait(&api, &["slow".to_string()], Duration::from_millis(1), Duration::from_millis(20)).await.unwrap_err();
        assert!(err.to_string().contains("not done after"), "{err}");
        let gone = wait(&api, &["gone".to_string()], Duration::from_millis(1), Duration::from_secs(1)).await.unwrap();
        assert_eq!(gone, [("gone".to_string(), Ended::Failed)]);
    }

    /// One answer on loopback; the request's head, as received.
    async fn answer_once(status: &str, body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // The whole request (head and body), before answering: an unread body would reset.
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    if n == 0 || got.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            sock.write_all(head.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, task)
    }

    #[tokio::test]
    async fn in_a_pod_each_request_carries_the_accounts_current_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("namespace"), "ckms-farm\n").unwrap();
        std::fs::write(dir.path().join("token"), "first\n").unwrap();
        let (url, seen) = answer_once("200 OK", r#"{"metadata": {"name": "j"}}"#).await;
        let api = InCluster::new(&url, dir.path()).unwrap();
        // Rotated by the kubelet after the client was made: the new one is sent.
        std::fs::write(dir.path().join("token"), "second\n").unwrap();
        let job = api.get("j").await.unwrap().unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("j"));
        let head = seen.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /apis/batch/v1/namespaces/ckms-farm/jobs/j "), "{head}");
        assert!(head.contains("authorization: bearer second\r\n"), "{head}");

        let (url, seen) =
            answer_once("403 Forbidden", r#"{"kind": "Status", "message": "jobs.batch is forbidden"}"#).await;
        let api = InCluster::new(&url, dir.path()).unwrap();
        let err = api.create(&job).await.unwrap_err();
        assert!(err.to_string().contains("403 Forbidden: jobs.batch is forbidden"), "{err}");
        assert!(seen.await.unwrap().starts_with("POST /apis/batch/v1/namespaces/ckms-farm/jobs "));
    }

    #[test]
    fn a_failed_condition_ends_the_job() {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        let mut j = job("x");
        assert_eq!(ended(&j), None);
        let c = |t: &str, s: &str| JobCondition { type_: t.into(), status: s.into(), ..Default::default() };
        j.status = Some(JobStatus {
            conditions: Some(vec![c("FailureTarget", "True"), c("Failed", "True")]),
            ..Default::default()
        });
        assert_eq!(ended(&j), Some(Ended::Failed));
        j.status = Some(JobStatus { conditions: Some(vec![c("Complete", "False")]), ..Default::default() });
        assert_eq!(ended(&j), None);
    }
}
