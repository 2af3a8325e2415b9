//! Runs a plan's pairs in parallel within the machine: a number of build slots, and a budget of
//! make jobs (`-j`) shared by the running builds so that together they never ask for more
//! cores than there are; builder images provisioned ahead of the builds that need them; the
//! longest pairs first; a pair that waits for another (BUILD_DEPENDS) only after it. A failing
//! pair stops nothing but the pairs that build against it.
//!
//! What a build or a provisioning does is the [`Executor`]'s business (the real one runs
//! containers and writes the store; tests use a recording fake), so the schedule itself is
//! tested without an engine.

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;

use super::store::Status;
use super::FarmError;
use crate::diagnose::Diagnose;

/// One pair to build, as the schedule sees it.
#[derive(Debug, Clone)]
pub struct Task {
    /// For messages: `module/version on kernel`.
    pub label: String,
    /// Index of the builder image it needs (see [`Executor::provision`]).
    pub image: usize,
    /// Tasks (indexes into the list) that must have been built first.
    pub after: Vec<usize>,
    /// Seconds it took last time, when known.
    pub estimate: Option<f64>,
    /// Its source's size in bytes: the guess of its length when there is no estimate.
    pub size: u64,
}

/// Builds pairs and provisions images.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Makes the builder image `image` ready; called once per image, before its first build.
    async fn provision(&self, image: usize) -> Result<(), FarmError>;
    /// Builds task `index` with `make -j<jobs>` and stores the result; its status.
    async fn build(&self, index: usize, task: &Task, jobs: u32) -> Result<Status, FarmError>;
}

/// How much the machine gives.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Builds at once.
    pub slots: usize,
    /// Make jobs at once, shared by the running builds.
    pub cores: u32,
    /// Images provisioned at once.
    pub provisioners: usize,
}

impl Capacity {
    /// From the machine: as many builds as cores (each `-j1` while all run; fewer builds get
    /// more jobs), fewer when memory is short (a kernel module build can use ~1 GiB), capped by
    /// `--jobs`.
    pub fn of_machine(jobs: Option<u32>) -> Capacity {
        let cores = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)).max(1);
        let by_memory = available_memory().map_or(usize::MAX, |b| (b / (1 << 30)).max(1) as usize);
        Capacity { slots: (cores as usize).min(by_memory), cores, provisioners: 1 }
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What happened to one task.
#[derive(Debug)]
pub enum Outcome {
    Done(Status),
    /// It could not be tried (its image failed, or a pair it depends on did not build) or
    /// the executor failed outside the build itself; the reason.
    NotBuilt(String),
}

/// What the schedule tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Provisioning { image: usize },
    Provisioned { image: usize, error: Option<String> },
    Started { index: usize, jobs: u32 },
    Finished { index: usize, status: Option<Status>, seconds: f64 },
}

type Running<'a, T> = FuturesUnordered<Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

/// Runs every task; the outcome of each, in the tasks' order.
pub async fn run(
    tasks: &[Task],
    exec: &dyn Executor,
    capacity: Capacity,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Vec<Outcome> {
    let n_images = tasks.iter().map(|j| j.image + 1).max().unwrap_or(0);
    // Images in the order their first task comes up.
    let order = priority_order(tasks);
    let mut image_order: Vec<usize> = Vec::new();
    for &i in &order {
        if !image_order.contains(&tasks[i].image) {
            image_order.push(tasks[i].image);
        }
    }
    let mut images: Vec<Option<Result<(), String>>> = vec![None; n_images];
    let mut outcomes: Vec<Option<Outcome>> = (0..tasks.len()).map(|_| None).collect();
    let mut started = vec![false; tasks.len()];
    let mut next_image = 0;
    let mut tokens = capacity.cores.max(1);
    let mut provisioning: Running<'_, (usize, Result<(), FarmError>)> = FuturesUnordered::new();
    let mut building: Running<'_, (usize, u32, f64, Result<Status, FarmError>)> = FuturesUnordered::new();

    loop {
        while provisioning.len() < capacity.provisioners.max(1) && next_image < image_order.len() {
            let image = image_order[next_image];
            next_image += 1;
            progress(Progress::Provisioning { image });
            provisioning.push(Box::pin(async move { (image, exec.provision(image).await) }));
        }
        // Tasks that can no longer be built: their image failed, or a task they need did not build.
        for i in 0..tasks.len() {
            if started[i] {
                continue;
            }
            let why = match &images[tasks[i].image] {
                Some(Err(e)) => Some(format!("its builder image could not be made: {e}")),
                _ => tasks[i].after.iter().find_map(|&d| match &outcomes[d] {
                    Some(Outcome::Done(Status::Built)) | None => None,
                    Some(_) => Some(format!("{} did not build", tasks[d].label)),
                }),
            };
            if let Some(why) = why {
                started[i] = true;
                progress(Progress::Finished { index: i, status: None, seconds: 0.0 });
                outcomes[i] = Some(Outcome::NotBuilt(why));
            }
        }
        let ready: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| {
                !started[i]
                    && matches!(images[tasks[i].image], Some(Ok(())))
                    && tasks[i].after.iter().all(|&d| matches!(outcomes[d], Some(Outcome::Done(Status::Built))))
            })
            .collect();
        let mut ready = ready.into_iter();
        // Tasks still to start, whether they can now or wait for their image or a dependency:
        // a task that starts alone must leave tokens for those coming soon (a serial build
        // holding both cores of two while other images are provisioned idles one of them).
        let mut pending = started.iter().filter(|s| !**s).count();
        while building.len() < capacity.slots.max(1) && tokens > 0 {
            let Some(i) = ready.next() else { break };
            let starting = (capacity.slots.max(1) - building.len()).min(pending) as u32;
            pending -= 1;
            let jobs_now = (tokens / starting.max(1)).max(1);
            tokens -= jobs_now;
            started[i] = true;
            progress(Progress::Started { index: i, jobs: jobs_now });
            let task = &tasks[i];
            building.push(Box::pin(async move {
                let t = std::time::Instant::now();
                let r = exec.build(i, task, jobs_now).await;
                (i, jobs_now, t.elapsed().as_secs_f64(), r)
            }));
        }
        if building.is_empty() && provisioning.is_empty() {
            break;
        }
        tokio::select! {
            Some((image, r)) = provisioning.next(), if !provisioning.is_empty() => {
                let r = r.map_err(|e| e.to_string());
                progress(Progress::Provisioned { image, error: r.as_ref().err().cloned() });
                images[image] = Some(r);
            }
            Some((i, used, seconds, r)) = building.next(), if !building.is_empty() => {
                tokens += used;
                progress(Progress::Finished { index: i, status: r.as_ref().ok().copied(), seconds });
                outcomes[i] = Some(match r {
                    Ok(status) => Outcome::Done(status),
                    Err(e) => Outcome::NotBuilt(match e.hint() {
                        Some(hint) => format!("{e}. {hint}"),
                        None => e.to_string(),
                    }),
                });
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::NotBuilt("it waits for a pair that is not in this run".into())))
        .collect()
}

/// Task indexes, longest first: by last duration where known, else by source size converted
/// with the seconds-per-byte of the tasks that have both (or by size alone).
fn priority_order(tasks: &[Task]) -> Vec<usize> {
    let mut rates: Vec<f64> =
        tasks.iter().filter_map(|t| t.estimate.filter(|_| t.size > 0).map(|e| e / t.size as f64)).collect();
    rates.sort_by(f64::total_cmp);
    let rate = rates.get(rates.len() / 2).copied();
    let guess = |t: &Task| match (t.estimate, rate) {
        (Some(e), _) => e,
        (None, Some(r)) => r * t.size as f64,
        // Nothing known: sizes compare among themselves; they all rank after known ones.
        (None, None) => t.size as f64 * 1e-9,
    };
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by(|&a, &b| guess(&tasks[b]).total_cmp(&guess(&tasks[a])).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Sleeps `ms[i]` per task, fails the ones listed; records what ran with how many jobs.
    struct Fake {
        ms: Vec<u64>,
        fail: Vec<usize>,
        bad_image: Option<usize>,
        log: Mutex<Vec<String>>,
        running: Mutex<(u32, u32)>, // (jobs in use now, most ever)
    }

    #[async_trait::async_trait]
    impl Executor for Fake {
        async fn provision(&self, image: usize) -> Result<(), FarmError> {
            self.log.lock().unwrap().push(format!("image {image}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.bad_image == Some(image) {
                return Err(FarmError::NoKernel { selector: "no such kernel".into(), closest: vec![] });
            }
            Ok(())
        }
        async fn build(&self, index: usize, _task: &Task, jobs: u32) -> Result<Status, FarmError> {
            {
                let mut r = self.running.lock().unwrap();
                r.0 += jobs;
                r.1 = r.1.max(r.0);
            }
            self.log.lock().unwrap().push(format!("build {index} -j{jobs}"));
            tokio::time::sleep(Duration::from_millis(self.ms[index])).await;
            self.running.lock().unwrap().0 -= jobs;
            Ok(if self.fail.contains(&index) { Status::Failed } else { Status::Built })
        }
    }

    fn task(image: usize, after: &[usize], estimate: Option<f64>) -> Task {
        Task { label: format!("job on image {image}"), image, after: after.to_vec(), estimate, size: 1 }
    }

    fn fake(ms: &[u64]) -> Fake {
        Fake { ms: ms.to_vec(), fail: vec![], bad_image: None, log: Mutex::default(), running: Mutex::default() }
    }

    const CAP: Capacity = Capacity { slots: 2, cores: 2, provisioners: 1 };

    #[tokio::test]
    async fn longest_first_never_more_jobs_than_cores_and_the_last_one_gets_them_all() {
        let tasks = vec![task(0, &[], Some(1.0)), task(0, &[], Some(9.0)), task(0, &[], Some(5.0))];
        let f = fake(&[30, 60, 10]);
        let out = run(&tasks, &f, CAP, &|_| {}).await;
        assert!(out.iter().all(|o| matches!(o, Outcome::Done(Status::Built))));
        let log = f.log.lock().unwrap().clone();
        assert_eq!(log[0], "image 0");
        assert_eq!(&log[1..3], ["build 1 -j1", "build 2 -j1"], "longest first, the budget split");
        assert_eq!(log[3], "build 0 -j1", "job 1 still holds a core");
        assert!(f.running.lock().unwrap().1 <= 2, "never more than 2 make jobs at once");

        let single = fake(&[5]);
        run(&[task(0, &[], None)], &single, CAP, &|_| {}).await;
        assert_eq!(single.log.lock().unwrap()[1], "build 0 -j2", "alone, a build gets every core");
    }

    #[tokio::test]
    async fn a_build_ready_before_the_others_images_leaves_them_their_share() {
        // Task 0's image comes first; task 1's is still being made when task 0 starts.
        let tasks = vec![task(0, &[], Some(9.0)), task(1, &[], Some(1.0))];
        let f = fake(&[40, 5]);
        run(&tasks, &f, CAP, &|_| {}).await;
        let log = f.log.lock().unwrap().clone();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap_or_else(|| panic!("no {s}: {log:?}"));
        assert!(pos("build 0 -j1") < pos("image 1") || pos("build 0 -j1") < pos("build 1 -j1"), "{log:?}");
        assert!(log.contains(&"build 1 -j1".to_string()), "{log:?}");
    }

    #[tokio::test]
    async fn a_failure_stops_only_what_depends_on_it() {
        let tasks = vec![task(0, &[], None), task(0, &[0], None), task(0, &[], None)];
        let mut f = fake(&[5, 5, 5]);
        f.fail = vec![0];
        let out = run(&tasks, &f, CAP, &|_| {}).await;
        assert!(matches!(out[0], Outcome::Done(Status::Failed)));
        assert!(matches!(&out[1], Outcome::NotBuilt(why) if why.contains("did not build")));
        assert!(matches!(out[2], Outcome::Done(Status::Built)));
    }

    #[tokio::test]
    async fn dependencies_build_first_and_a_bad_image_fails_only_its_tasks() {
        let tasks = vec![task(0, &[1], Some(9.0)), task(0, &[], Some(1.0)), task(1, &[], None)];
        let mut f = fake(&[5, 5, 5]);
        f.bad_image = Some(1);
        let out = run(&tasks, &f, CAP, &|_| {}).await;
        let log = f.log.lock().unwrap().clone();
        let pos = |s: &str| log.iter().position(|l| l.starts_with(s)).unwrap();
        assert!(pos("build 1") < pos("build 0"), "{log:?}");
        assert!(matches!(out[0], Outcome::Done(Status::Built)));
        assert!(matches!(&out[2], Outcome::NotBuilt(why) if why.contains("builder image")));
    }

    #[test]
    fn sizes_stand_in_for_unknown_durations() {
        let mut a = task(0, &[], None);
        a.size = 100;
        let mut b = task(0, &[], Some(2.0));
        b.size = 10;
        let mut c = task(0, &[], None);
        c.size = 1000;
        // 0.2 s per byte: a ~ 20 s, c ~ 200 s, b = 2 s.
        assert_eq!(priority_order(&[a, b, c]), [2, 0, 1]);
    }
}
