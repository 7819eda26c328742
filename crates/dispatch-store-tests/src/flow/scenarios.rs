//! Flow control end to end: workers of the job runtime over the store under test, in real
//! time, with loose bounds (the limits are exact in the store, so no timing slack is needed):
//! a running limit across four workers, a concurrency key across two, pause and resume, and a
//! fair queue under one tenant's large backlog. Waits poll the store against a deadline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dispatch_core::{FlowStore, JobFilter, JobState, JobStore, QueueConfig, Scope};
use dispatch_job::{EnqueueOptions, JobContext, JobDefinition, WorkerBuilder, WorkerHandle};
use parking_lot::Mutex;

use crate::fixtures::{counting, eventually};

const Q: &str = "flow-rt";
const WITHIN: Duration = Duration::from_secs(120);

fn flow(store: &Arc<dyn JobStore>) -> Arc<dyn FlowStore> {
    store.clone().as_flow_store().expect("the store keeps flow control")
}

fn worker(store: Arc<dyn JobStore>, concurrency: usize) -> WorkerBuilder {
    dispatch_job::Worker::builder(store).concurrency(concurrency).configure(|c| {
        c.poll_interval = Duration::from_millis(20);
        c.heartbeat_interval = Duration::from_millis(100);
        c.lease_ttl = Duration::from_secs(30);
        c.rescue_interval = Duration::from_secs(3600);
        c.shutdown_timeout = Duration::from_secs(5);
    })
}

/// How many of `queue`'s jobs are in `state`, by the store's count.
async fn count(store: &Arc<dyn JobStore>, queue: &str, state: JobState) -> u64 {
    let counts = store.count_jobs().await.expect("count_jobs");
    counts.iter().filter(|c| c.queue == queue && c.state == state).map(|c| c.count).sum()
}

async fn stop_all(workers: Vec<WorkerHandle>) {
    for worker in workers {
        worker.stop().await;
    }
}

/// Counts handlers in flight and remembers the most at once.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queue limited to 5 running jobs, drained by 4 workers of concurrency 16, never has more
/// than 5 running: not in the handlers, not in the store (sampled while it drains); every job
/// completes.
pub async fn a_running_limit_holds_across_four_workers(store: Arc<dyn JobStore>) {
    flow(&store).set_queue_config(&QueueConfig::new(Q).max_running(5)).await.expect("config");
    let inflight = InFlight::default();
    let seen = inflight.clone();
    let job = JobDefinition::new("limited", move |_ctx: JobContext, n: u64| {
        let seen = seen.clone();
        async move {
            seen.enter();
            tokio::time::sleep(Duration::from_millis(5 + n % 10)).await;
            seen.leave();
            Ok(())
        }
    })
    .queue(Q);
    let workers: Vec<_> = (0..4)
        .map(|_| worker(store.clone(), 16).register(job.clone()).build().unwrap().start())
        .collect();
    let client = workers[0].client();
    let inputs: Vec<u64> = (0..300).collect();
    client.enqueue_many(&job, inputs).await.expect("enqueue");
    let sampled_most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (store, most, done) = (store.clone(), sampled_most.clone(), done.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                let running = count(&store, Q, JobState::Running).await;
                most.fetch_max(usize::try_from(running).unwrap_or(usize::MAX), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    eventually("every limited job to complete", WITHIN, || async {
        (count(&store, Q, JobState::Completed).await == 300).then_some(())
    })
    .await;
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    stop_all(workers).await;
    let (handlers, sampled) =
        (inflight.most.load(Ordering::SeqCst), sampled_most.load(Ordering::SeqCst));
    assert!(
        handlers <= 5 && sampled <= 5,
        "at most 5 running: handlers {handlers}, store {sampled}"
    );
    assert!(handlers >= 2, "the limit was reached, not the whole queue serialised: {handlers}");
}

/// Concurrency key limit 1, 20 keys × 50 jobs, two workers of concurrency 16: never two jobs of
/// one key at once, and every job completes.
pub async fn a_concurrency_key_never_runs_two_at_once(store: Arc<dyn JobStore>) {
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (seen, clash) = (running.clone(), overlaps.clone());
    let job = JobDefinition::new("keyed", move |_ctx: JobContext, key: u64| {
        let (seen, clash) = (seen.clone(), clash.clone());
        async move {
            if !seen.lock().insert(key) {
                clash.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            seen.lock().remove(&key);
            Ok(())
        }
    })
    .queue(Q);
    let workers: Vec<_> = (0..2)
        .map(|_| worker(store.clone(), 16).register(job.clone()).build().unwrap().start())
        .collect();
    let client = workers[0].client();
    for round in 0..50u64 {
        for key in 0..20u64 {
            let options = EnqueueOptions::new().concurrency_key(format!("customer-{key}"), 1);
            let _ = round;
            client.enqueue_with(&job, key, options).await.expect("enqueue");
        }
    }
    eventually("every keyed job to complete", WITHIN, || async {
        (count(&store, Q, JobState::Completed).await == 1000).then_some(())
    })
    .await;
    stop_all(workers).await;
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two jobs of one key ran at once");
}

/// Pausing a queue stops new claims (within one claim round: the claim already on its way may
/// still land); running jobs finish; waiting jobs are neither lost nor rescued, and keep their
/// attempts; a resume runs them all.
pub async fn pause_stops_claims_and_resume_restarts_them(store: Arc<dyn JobStore>) {
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let job = JobDefinition::new("pausable", move |_ctx: JobContext, _: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    })
    .queue(Q);
    let counted = counting(store.clone());
    let jobs: Arc<dyn JobStore> = counted.clone();
    let handle = worker(jobs, 4).register(job.clone()).build().unwrap().start();
    handle.ready().await.expect("ready");
    flow(&store).set_paused(Q, None, true).await.expect("pause");
    let claims_made = || counted.interceptor().claim_limits.lock().len();
    let claims = claims_made();
    handle.client().enqueue_many(&job, (0..20).collect::<Vec<u32>>()).await.expect("enqueue");
    eventually("three claim rounds after the pause", WITHIN, || async {
        (claims_made() >= claims + 3).then_some(())
    })
    .await;
    let before_resume = started.load(Ordering::SeqCst);
    assert_eq!(before_resume, 0, "a paused queue's jobs started");
    let waiting = store
        .list_jobs(
            &JobFilter { queue: Some(Q.into()), ..JobFilter::default() },
            &dispatch_core::PageRequest::first(100),
        )
        .await
        .expect("list");
    assert_eq!(waiting.items.len(), 20, "nothing lost");
    assert!(
        waiting
            .items
            .iter()
            .all(|j| j.state == JobState::Available && j.attempt == 0 && j.errors.is_empty())
    );
    flow(&store).set_paused(Q, None, false).await.expect("resume");
    eventually("every job to complete after the resume", WITHIN, || async {
        (count(&store, Q, JobState::Completed).await == 20).then_some(())
    })
    .await;
    handle.stop().await;
}

/// Fairness: tenant A enqueues 20,000 jobs, then tenant B enqueues 20; with one worker of
/// concurrency 16 on a fair queue, B's jobs all start before A has run 500 more.
pub async fn a_small_tenant_is_not_starved_by_a_backlog(store: Arc<dyn JobStore>) {
    flow(&store).set_queue_config(&QueueConfig::new(Q).fair()).await.expect("config");
    let starts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = starts.clone();
    let job = JobDefinition::new("tenanted", move |ctx: JobContext, _: u32| {
        let tenant = ctx.scope().tenant.clone().unwrap_or_default();
        seen.lock().push(tenant);
        async { Ok(()) }
    })
    .queue(Q);
    let scope = |tenant: &str| Scope { app: None, tenant: Some(tenant.to_owned()) };
    let producer = dispatch_job::JobClient::standalone(store.clone());
    for chunk in 0..20u32 {
        let inputs = (0..1000).map(|i| chunk * 1000 + i);
        let options = EnqueueOptions::new().scope(scope("a"));
        producer.enqueue_many_with(&job, inputs, options).await.expect("enqueue A");
    }
    let handle = worker(store.clone(), 16).register(job.clone()).build().unwrap().start();
    eventually("A to be under way", WITHIN, || async {
        (starts.lock().len() >= 100).then_some(())
    })
    .await;
    let mark = starts.lock().len();
    let options = EnqueueOptions::new().scope(scope("b"));
    producer.enqueue_many_with(&job, 0..20, options).await.expect("enqueue B");
    eventually("every B job to start", WITHIN, || async {
        (starts.lock().iter().filter(|t| *t == "b").count() == 20).then_some(())
    })
    .await;
    handle.stop().await;
    let starts = starts.lock();
    let last_b = starts.iter().rposition(|t| t == "b").unwrap_or(0);
    let a_between = starts[mark..last_b].iter().filter(|t| *t == "a").count();
    let per_tenant: HashMap<&str, usize> = starts.iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t.as_str()).or_default() += 1;
        m
    });
    assert!(a_between < 500, "A ran {a_between} jobs while B's 20 waited ({per_tenant:?})");
}

/// A handler's progress reports reach the job record (written at heartbeats and at the end of
/// the attempt), and the next attempt after a retry starts from the saved report.
pub async fn progress_reaches_the_record_and_the_retry(store: Arc<dyn JobStore>) {
    let resumed: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let seen = resumed.clone();
    let job = JobDefinition::new("reporting", move |ctx: JobContext, _: ()| {
        let seen = seen.clone();
        async move {
            if ctx.attempt() == 1 {
                for done in [10, 20, 30] {
                    ctx.progress(serde_json::json!({ "done": done }))?;
                }
                return Err(dispatch_job::JobError::retry("stopped at 30"));
            }
            *seen.lock() = ctx.saved_progress().cloned();
            ctx.progress(serde_json::json!({ "done": 100 }))?;
            Ok(())
        }
    })
    .queue(Q)
    .backoff(dispatch_core::Backoff::Constant { delay: Duration::from_millis(10) });
    let handle = worker(store.clone(), 2).register(job.clone()).build().unwrap().start();
    let id = handle.client().enqueue(&job, ()).await.expect("enqueue").id();
    let done = crate::fixtures::wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    assert_eq!(*resumed.lock(), Some(serde_json::json!({ "done": 30 })), "the retry saw 30");
    assert_eq!(done.progress, Some(serde_json::json!({ "done": 100 })), "the last report");
}
