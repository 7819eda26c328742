//! The soak's work: three job definitions (one that succeeds, one that fails its first attempt,
//! one that snoozes once), a small workflow (a step, a durable sleep of a second, a step), the
//! producers that enqueue them at a fixed rate, and the [`Tracker`] that ticks every enqueued
//! job and started run off when its completion is reported, so the end can say what was lost.
//!
//! The tracker keeps only what is outstanding, so its memory stays flat however long the soak
//! runs: a growing RSS is the library's, not the harness's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch::core::{Event, Hook, JobId, NewJob, RunId};
use dispatch::job::{EnqueueOptions, JobClient, JobContext, JobDefinition, JobError};
use dispatch::workflow::{StartOptions, StepError, WorkflowContext, WorkflowDefinition, Workflows};
use parking_lot::Mutex;
use tokio::time::Instant;

/// The definition names, all under `soak.` so drive jobs are told apart.
const OK: &str = "soak.ok";
const FLAKY: &str = "soak.flaky";
const SLEEPY: &str = "soak.sleepy";
/// The definitions by index, as [`pick`] chooses them.
const NAMES: [&str; 3] = [OK, FLAKY, SLEEPY];
/// How long a sleepy job snoozes, and how long a flaky job waits before its retry.
const PAUSE: Duration = Duration::from_secs(2);
/// Workflow runs started per plain jobs enqueued.
const JOBS_PER_RUN: u32 = 20;

/// What is outstanding and what has been seen.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Jobs enqueued (or being enqueued) and not yet seen completed, with their definition.
    pending: Mutex<HashMap<JobId, &'static str>>,
    /// Runs started and not yet seen completed.
    runs: Mutex<HashSet<RunId>>,
    /// Runs seen completed before their start call returned (a race the tracker tolerates).
    early_runs: Mutex<HashSet<RunId>>,
    /// Sleepy jobs that have snoozed once.
    snoozed: Mutex<HashSet<JobId>>,
    pub(crate) enqueued: AtomicU64,
    /// Flaky and sleepy jobs enqueued: the retries and snoozes the plan expects.
    pub(crate) planned_retries: AtomicU64,
    pub(crate) planned_snoozes: AtomicU64,
    /// Retries and snoozes seen.
    pub(crate) retries: AtomicU64,
    pub(crate) snoozes: AtomicU64,
    pub(crate) completed: AtomicU64,
    /// Completions of jobs not outstanding: a job completed twice (or unknown).
    pub(crate) unexpected: AtomicU64,
    /// Flaky jobs that completed on an attempt other than their second.
    pub(crate) wrong_attempt: AtomicU64,
    /// Attempts started beyond the plan (a job run again after a lost lease).
    pub(crate) reruns: AtomicU64,
    pub(crate) runs_started: AtomicU64,
    pub(crate) runs_completed: AtomicU64,
    /// Runs that failed or were cancelled.
    pub(crate) runs_failed: AtomicU64,
    /// Enqueue or start calls that failed and were tried again.
    pub(crate) producer_retries: AtomicU64,
}

impl Tracker {
    /// Jobs and runs still outstanding.
    pub(crate) fn outstanding(&self) -> (Vec<JobId>, usize) {
        (self.pending.lock().keys().copied().collect(), self.runs.lock().len())
    }

    fn job_completed(&self, id: JobId, attempt: u32) {
        let Some(name) = self.pending.lock().remove(&id) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.completed.fetch_add(1, Ordering::Relaxed);
        if name == FLAKY && attempt != 2 {
            self.wrong_attempt.fetch_add(1, Ordering::Relaxed);
        }
        if name == SLEEPY {
            self.snoozed.lock().remove(&id);
        }
    }

    fn run_completed(&self, id: RunId) {
        if self.runs.lock().remove(&id) {
            self.runs_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.early_runs.lock().insert(id);
        }
    }

    fn run_started(&self, id: RunId) {
        self.runs_started.fetch_add(1, Ordering::Relaxed);
        if self.early_runs.lock().remove(&id) {
            self.runs_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.runs.lock().insert(id);
        }
    }
}

#[async_trait]
impl Hook for Tracker {
    async fn on_event(&self, event: &Event) {
        match event {
            Event::JobCompleted { job, attempt, .. } if job.name.starts_with("soak.") => {
                self.job_completed(job.id, *attempt);
            }
            Event::JobStarted { job, attempt } if job.name.starts_with("soak.") => {
                // The plan: a flaky job runs twice, the others once (a snooze gives its attempt
                // back); more is a rerun after a lost lease.
                let planned = if job.name == FLAKY { 2 } else { 1 };
                if *attempt > planned {
                    self.reruns.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::JobRetrying { job, .. } if job.name == FLAKY => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            Event::JobSnoozed { job, .. } if job.name == SLEEPY => {
                self.snoozes.fetch_add(1, Ordering::Relaxed);
            }
            Event::RunCompleted { run } => self.run_completed(run.id),
            Event::RunFailed { .. } | Event::RunCancelled { .. } => {
                self.runs_failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The three job definitions, each reporting to `tracker`.
pub(crate) fn jobs(tracker: &Arc<Tracker>) -> [JobDefinition<u64>; 3] {
    let ok = JobDefinition::new(OK, |_ctx: JobContext, _: u64| async { Ok(()) });
    let flaky = JobDefinition::new(FLAKY, move |ctx: JobContext, _: u64| {
        let first = ctx.attempt() == 1;
        async move {
            match first {
                true => Err(JobError::retry_after("the planned first failure", PAUSE)),
                false => Ok(()),
            }
        }
    });
    let seen = tracker.clone();
    let sleepy = JobDefinition::new(SLEEPY, move |ctx: JobContext, _: u64| {
        let first = seen.snoozed.lock().insert(ctx.job_id());
        async move {
            match first {
                true => Err(JobError::snooze(PAUSE)),
                false => Ok(()),
            }
        }
    });
    [ok, flaky, sleepy]
}

/// The workflow: a step, a durable sleep of a second, a step.
pub(crate) fn workflow() -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("soak.flow", |wf: WorkflowContext, n: u64| async move {
        let a = wf.step("a", || async move { Ok::<_, StepError>(n + 1) }).await?;
        wf.sleep(Duration::from_secs(1)).await?;
        wf.step("b", || async move { Ok::<_, StepError>(a + 1) }).await
    })
}

/// Enqueue plain jobs at `rate` a second until `stop`: every 100 ms, the jobs the schedule is
/// behind by (so a stall, such as a database restart, is caught up after), one store call. A
/// failed call is tried again with the same job IDs, so an enqueue that was applied but
/// answered with an error is not enqueued twice.
pub(crate) async fn produce_jobs(
    client: JobClient,
    tracker: Arc<Tracker>,
    rate: u32,
    stop: Arc<AtomicBool>,
) {
    let defs = jobs(&tracker);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let batch: Vec<(JobId, u64)> =
            (sent..due.min(sent + 1000)).map(|n| (JobId::new(), n)).collect();
        if batch.is_empty() {
            continue;
        }
        {
            let mut pending = tracker.pending.lock();
            for (id, n) in &batch {
                pending.insert(*id, NAMES[pick(*n)]);
            }
        }
        let jobs: Vec<NewJob> = batch
            .iter()
            .filter_map(|(id, n)| defs[pick(*n)].new_job(n, EnqueueOptions::new().id(*id)).ok())
            .collect();
        while let Err(error) = client.enqueue_jobs(jobs.clone()).await {
            tracker.producer_retries.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: enqueue failed, trying again: {error}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracker.enqueued.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let count = |kind: usize| batch.iter().filter(|(_, n)| pick(*n) == kind).count() as u64;
        tracker.planned_retries.fetch_add(count(1), Ordering::Relaxed);
        tracker.planned_snoozes.fetch_add(count(2), Ordering::Relaxed);
        sent += batch.len() as u64;
    }
}

/// Start workflow runs at a twentieth of `rate` a second until `stop`; a failed start is tried
/// again with the same idempotency key, so it starts one run.
pub(crate) async fn produce_runs(
    engine: Workflows,
    tracker: Arc<Tracker>,
    rate: u32,
    stop: Arc<AtomicBool>,
) {
    let def = workflow();
    let per_sec = f64::from(rate.div_ceil(JOBS_PER_RUN));
    let start = Instant::now();
    let mut started: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
        while started < due && !stop.load(Ordering::Relaxed) {
            let options = StartOptions {
                idempotency_key: Some(format!("soak-run-{started}")),
                ..StartOptions::default()
            };
            match engine.start(&def, &started, options).await {
                Ok(id) => {
                    tracker.run_started(id);
                    started += 1;
                }
                Err(error) => {
                    tracker.producer_retries.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: workflow start failed, trying again: {error}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Which definition job `n` is: one in ten fails once, one in ten snoozes once, the rest
/// succeed at once.
fn pick(n: u64) -> usize {
    match n % 10 {
        1 => 1,
        2 => 2,
        _ => 0,
    }
}
