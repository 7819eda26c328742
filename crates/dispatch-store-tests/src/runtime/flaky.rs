//! Runtime scenarios over a store that answers late, goes away, or reports a failure for a call
//! it applied ([`faults`](crate::faults)). The promise under test: a job's handler starts again
//! only when the worker really lost it, and never two attempts of one job run at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{CallKind, JobId, JobState, JobStore};
use dispatch_job::{JobContext, JobDefinition, JobError, WorkerBuilder};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::faults::{FaultyStore, faulty};
use crate::fixtures::eventually;

/// Leases long enough that a worker under load renews them many times over (a heartbeat every
/// 150 ms), short enough that an attempt nobody renews expires within the scenario.
const LEASE: Duration = Duration::from_secs(3);

fn worker(store: Arc<FaultyStore>) -> WorkerBuilder {
    dispatch_job::Worker::builder(store).configure(|c| {
        c.poll_interval = Duration::from_millis(20);
        c.heartbeat_interval = Duration::from_millis(150);
        c.lease_ttl = LEASE;
        c.rescue_interval = Duration::from_millis(200);
        c.shutdown_timeout = Duration::from_secs(2);
        c.concurrency = 16;
    })
}

/// Every start of every job's handler, and how many of its attempts ran at once at most.
#[derive(Clone, Default)]
struct Starts {
    jobs: Arc<Mutex<HashMap<JobId, JobStarts>>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JobStarts {
    starts: u32,
    running: u32,
    most_at_once: u32,
}

impl Starts {
    /// Record a start of `id`'s handler; returns which start it is (1 for the first).
    fn start(&self, id: JobId) -> u32 {
        let mut jobs = self.jobs.lock();
        let job = jobs.entry(id).or_default();
        job.starts += 1;
        job.running += 1;
        job.most_at_once = job.most_at_once.max(job.running);
        job.starts
    }

    fn end(&self, id: JobId) {
        if let Some(job) = self.jobs.lock().get_mut(&id) {
            job.running -= 1;
        }
    }

    fn of(&self, id: JobId) -> JobStarts {
        self.jobs.lock().get(&id).copied().unwrap_or_default()
    }

    fn started(&self) -> usize {
        self.jobs.lock().len()
    }
}

/// A job that asks to run again at once twice (a retry with no delay, then a snooze with no
/// delay), then holds its third start for longer than a lease before it succeeds: an attempt
/// the worker stopped renewing would be rescued and started a fourth time beside it.
fn bouncing(starts: &Starts) -> JobDefinition<u32> {
    let starts = starts.clone();
    JobDefinition::new("bouncing", move |ctx: JobContext, _: u32| {
        let starts = starts.clone();
        async move {
            let id = ctx.job_id();
            let result = match starts.start(id) {
                1 => Err(JobError::retry_after("again at once", Duration::ZERO)),
                2 => Err(JobError::snooze(Duration::ZERO)),
                _ => {
                    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
                    Ok(())
                }
            };
            starts.end(id);
            result
        }
    })
    .max_attempts(5)
}

/// Wait until every job in `ids` is in a final state, then assert it completed.
async fn all_completed(store: &Arc<dyn JobStore>, ids: &[JobId]) {
    for &id in ids {
        let job = eventually(&format!("job {id} to end"), Duration::from_secs(120), || async {
            store.get_job(id).await.expect("get_job").filter(|job| job.state.is_final())
        })
        .await;
        assert_eq!(job.state, JobState::Completed, "job {id}: {:?}", job.errors);
    }
}

async fn run_bouncing_jobs(store: Arc<FaultyStore>) {
    let inner = store.inner().clone();
    let starts = Starts::default();
    let def = bouncing(&starts);
    let handle = worker(store).register(def.clone()).build().unwrap().start();
    let enqueued = handle.client().enqueue_many(&def, 0..8).await.unwrap();
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id()).collect();
    all_completed(&inner, &ids).await;
    handle.stop().await;
    for id in ids {
        let seen = starts.of(id);
        assert_eq!((seen.starts, seen.most_at_once), (3, 1), "job {id}: {seen:?}");
        let job = inner.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.attempt, 2, "the retry spent one attempt, the snooze gave its own back");
    }
}

/// Finish replies arrive 300 ms after the store applied them, while jobs come back at once
/// (retry and snooze with no delay): the worker claims a job again before it has heard that the
/// earlier attempt's finish was written. The new attempt keeps its lease renewed all the same:
/// each handler starts exactly three times, never two at once.
pub async fn slow_finish_replies_never_run_a_job_twice(inner: Arc<dyn JobStore>) {
    let store = faulty(inner);
    store.interceptor().delay_replies(CallKind::Finish, Duration::from_millis(300));
    run_bouncing_jobs(store).await;
}

/// Every other finish call is applied by the store but reported failed: the worker retries it
/// (the store answers "already applied") while the job may already be claimed again. Each
/// handler starts exactly as often as the job asked for, never two attempts at once.
pub async fn ambiguous_finishes_never_run_a_job_twice(inner: Arc<dyn JobStore>) {
    let store = faulty(inner);
    store.interceptor().ambiguous(CallKind::Finish, 2);
    run_bouncing_jobs(store.clone()).await;
    assert!(store.interceptor().failed() > 0, "some finishes were reported failed");
}

/// A store outage of 2.5 s, shorter than the 5 s lease, begins as eight jobs succeed: their
/// finishes fail until the store is back, and are written then. Every job completes on its one
/// attempt (a rescue would have sent it to the DLQ: it has no attempt left).
pub async fn outage_shorter_than_the_lease_loses_no_finish(inner: Arc<dyn JobStore>) {
    let store = faulty(inner.clone());
    let starts = Starts::default();
    let (open, gate) = watch::channel(false);
    let seen = starts.clone();
    let def = JobDefinition::new("gated", move |ctx: JobContext, _: u32| {
        let (seen, mut gate) = (seen.clone(), gate.clone());
        async move {
            seen.start(ctx.job_id());
            let _ = gate.wait_for(|open| *open).await;
            seen.end(ctx.job_id());
            Ok(())
        }
    })
    .max_attempts(1);
    let handle = worker(store.clone())
        .register(def.clone())
        .configure(|c| c.lease_ttl = Duration::from_secs(5))
        .build()
        .unwrap()
        .start();
    let enqueued = handle.client().enqueue_many(&def, 0..8).await.unwrap();
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id()).collect();
    eventually("every job to start", Duration::from_secs(60), || async {
        (starts.started() == ids.len()).then_some(())
    })
    .await;
    store.interceptor().outage(Duration::from_millis(2500));
    let _ = open.send(true);
    all_completed(&inner, &ids).await;
    handle.stop().await;
    assert!(store.interceptor().failed() > 0, "the outage failed some calls");
    for id in ids {
        assert_eq!(starts.of(id).starts, 1, "job {id} started again");
    }
}

/// Every other claim is applied by the store but reported failed: its leases are held by
/// nobody. The worker gives them back by the claim's token, so each job runs exactly once and on
/// its only attempt (had the leases been left to expire, rescue would have sent every such job
/// to the DLQ without running it).
pub async fn lost_claim_answers_cost_no_attempt(inner: Arc<dyn JobStore>) {
    let store = faulty(inner.clone());
    store.interceptor().ambiguous(CallKind::Claim, 2);
    let starts = Starts::default();
    let seen = starts.clone();
    let def = JobDefinition::new("once", move |ctx: JobContext, _: u32| {
        let seen = seen.clone();
        async move {
            seen.start(ctx.job_id());
            seen.end(ctx.job_id());
            Ok(())
        }
    })
    .max_attempts(1);
    let handle =
        worker(store.clone()).register(def.clone()).concurrency(2).build().unwrap().start();
    let enqueued = handle.client().enqueue_many(&def, 0..10).await.unwrap();
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id()).collect();
    all_completed(&inner, &ids).await;
    handle.stop().await;
    assert!(store.interceptor().failed() > 0, "some claims were reported failed");
    for id in ids {
        assert_eq!(starts.of(id).starts, 1, "job {id}");
        assert_eq!(inner.get_job(id).await.unwrap().unwrap().attempt, 1, "job {id}");
    }
}
