//! Runtime scenarios: the job runtime (`dispatch-job`) driven over the store under test, in real
//! time (paused time does not mix with stores that do I/O on other threads). Each scenario gets a
//! fresh store on its default clock (the database's, for a server store); [`run_conformance`](crate::run_conformance) runs them beside
//! the suite, so every store that passes conformance also runs retries, snoozes, cancels,
//! shutdown releases, fencing and wake-ups end to end. Intervals are short; waits poll the store
//! against a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dispatch_core::{
    Backoff, ClaimRequest, Event, JobCancel, JobState, JobStore, LeaseToken, WorkerId,
};
use dispatch_job::{CancelReason, CancelToken, JobContext, JobDefinition, JobError, WorkerBuilder};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::fixtures::{Recorder, counting, eventually, wait_for_state};

mod flaky;
pub use flaky::{
    ambiguous_finishes_never_run_a_job_twice, lost_claim_answers_cost_no_attempt,
    outage_shorter_than_the_lease_loses_no_finish, slow_finish_replies_never_run_a_job_twice,
};

/// A worker builder with real-time intervals short enough for tests.
fn worker(store: Arc<dyn JobStore>) -> WorkerBuilder {
    dispatch_job::Worker::builder(store).configure(|c| {
        c.poll_interval = Duration::from_millis(20);
        c.heartbeat_interval = Duration::from_millis(50);
        c.lease_ttl = Duration::from_secs(5);
        c.rescue_interval = Duration::from_secs(3600);
        c.shutdown_timeout = Duration::from_secs(2);
    })
}

/// Fails twice, then succeeds: completed on attempt 3 with two errors.
pub async fn retry_then_succeed(store: Arc<dyn JobStore>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = JobDefinition::new("flaky", move |_ctx: JobContext, _: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { if n < 2 { Err(JobError::retry("not yet")) } else { Ok(()) } }
    })
    .backoff(Backoff::Constant { delay: Duration::from_millis(20) });
    let handle = worker(store.clone()).register(flaky.clone()).build().unwrap().start();
    let id = handle.client().enqueue(&flaky, ()).await.unwrap().id();
    let job = wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    assert_eq!(job.attempt, 3);
    assert_eq!(job.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2]);
}

/// Snoozes three times, then succeeds: one attempt spent.
pub async fn snooze_gives_the_attempt_back(store: Arc<dyn JobStore>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let sleepy = JobDefinition::new("sleepy", move |_ctx: JobContext, _: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { if n < 3 { Err(JobError::snooze(Duration::from_millis(10))) } else { Ok(()) } }
    });
    let handle = worker(store.clone()).register(sleepy.clone()).build().unwrap().start();
    let id = handle.client().enqueue(&sleepy, ()).await.unwrap().id();
    let job = wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    assert_eq!((job.attempt, calls.load(Ordering::SeqCst)), (1, 4));
}

/// A cancel request reaches the running handler through its heartbeat; the job ends cancelled.
pub async fn cancel_reaches_the_running_handler(store: Arc<dyn JobStore>) {
    let started = Arc::new(Notify::new());
    let reason: Arc<Mutex<Option<CancelReason>>> = Arc::default();
    let (on_start, seen) = (started.clone(), reason.clone());
    let stubborn = JobDefinition::new("stubborn", move |ctx: JobContext, _: ()| {
        let (on_start, seen) = (on_start.clone(), seen.clone());
        async move {
            on_start.notify_one();
            *seen.lock() = Some(ctx.cancelled().await);
            Err(JobError::retry("stopped"))
        }
    });
    let handle = worker(store.clone()).register(stubborn.clone()).build().unwrap().start();
    let id = handle.client().enqueue(&stubborn, ()).await.unwrap().id();
    started.notified().await;
    assert_eq!(handle.client().cancel(id).await.unwrap(), JobCancel::Requested);
    let job = wait_for_state(&store, id, JobState::Cancelled).await;
    handle.stop().await;
    assert_eq!(*reason.lock(), Some(CancelReason::CancelRequested));
    assert_eq!(job.attempt, 1);
}

/// Jobs outliving the shutdown timeout are cancelled (reason shutdown) and released: another
/// worker claims them at once with their attempts given back.
pub async fn shutdown_releases_long_jobs(store: Arc<dyn JobStore>) {
    let tokens: Arc<Mutex<Vec<CancelToken>>> = Arc::default();
    let seen = tokens.clone();
    let endless = JobDefinition::new("endless", move |ctx: JobContext, _: u32| {
        seen.lock().push(ctx.cancel_token().clone());
        async {
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let handle = worker(store.clone())
        .register(endless.clone())
        .concurrency(5)
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .unwrap()
        .start();
    handle.client().enqueue_many(&endless, 0..5).await.unwrap();
    eventually("5 in flight", Duration::from_secs(10), || async {
        (handle.in_flight() == 5).then_some(())
    })
    .await;
    let report = handle.stop().await;
    assert_eq!((report.cancelled, report.released), (5, 5));
    assert!(tokens.lock().iter().all(|t| t.reason() == Some(CancelReason::Shutdown)));
    let other = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["endless".into()],
        limit: 10,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let claimed = store.claim(&other).await.unwrap();
    assert_eq!(claimed.len(), 5, "claimable at once, no lease expiry to wait for");
    assert!(claimed.iter().all(|c| c.job.attempt == 1), "attempts given back");
}

/// A partitioned worker (its heartbeats fail) loses its lease to rescue and a second worker; its
/// late completion is refused and fires no completed hook.
pub async fn fenced_out_completion_is_refused(inner: Arc<dyn JobStore>) {
    let counting = counting(inner.clone());
    counting.interceptor().fail_heartbeats.store(true, Ordering::SeqCst);
    let recorder = Recorder::default();
    let (release, started) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (gate, on_start) = (release.clone(), started.clone());
    let slow = JobDefinition::new("slow", move |_ctx: JobContext, _: ()| {
        let (gate, on_start) = (gate.clone(), on_start.clone());
        async move {
            on_start.notify_one();
            gate.notified().await;
            Ok(())
        }
    });
    // One slot, held by the fenced-out attempt: this worker can not claim the job back once it is
    // rescued (a store that pushes a wake-up on rescue would otherwise race the second claimer).
    let handle = worker(counting.clone())
        .register(slow.clone())
        .concurrency(1)
        .configure(|c| c.lease_ttl = Duration::from_millis(300))
        .hook(recorder.clone())
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&slow, ()).await.unwrap().id();
    started.notified().await;
    eventually("the lease to expire and be rescued", Duration::from_secs(10), || async {
        let report = inner.rescue_expired(10).await.unwrap();
        report.rescued.contains(&id).then_some(())
    })
    .await;
    let other = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["slow".into()],
        limit: 1,
        lease_ttl: Duration::from_secs(600),
        token: LeaseToken::new(),
    };
    assert_eq!(inner.claim(&other).await.unwrap().len(), 1);
    release.notify_one();
    eventually("the old attempt to end", Duration::from_secs(10), || async {
        (handle.in_flight() == 0).then_some(())
    })
    .await;
    handle.stop().await;
    let job = inner.get_job(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.lease.map(|l| l.owner)), (JobState::Running, Some(other.worker)));
    let completed =
        recorder.for_job(id).into_iter().any(|e| matches!(e, Event::JobCompleted { .. }));
    assert!(!completed, "a fenced-out completion fires no completed hook");
}

/// A job enqueued straight on the store, past any client of the worker, starts on an idle
/// worker through the store's push wake-up, long before the worker's next poll. A store that
/// does not push (`wakeups()` answers `None`) is out of this scenario's reach: its workers poll.
pub async fn store_wake_up_starts_an_idle_worker(inner: Arc<dyn JobStore>) {
    if inner.wakeups().is_none() {
        return;
    }
    let counting = counting(inner.clone());
    let quick = JobDefinition::new("quick", |_ctx: JobContext, _: ()| async { Ok(()) });
    let handle = worker(counting.clone())
        .register(quick.clone())
        .configure(|c| c.poll_interval = Duration::from_secs(600))
        .build()
        .unwrap()
        .start();
    eventually("the worker to go idle", Duration::from_secs(10), || async {
        (counting.interceptor().next_dues.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let job = quick.new_job(&(), Default::default()).unwrap();
    let id = inner.enqueue(vec![job]).await.unwrap()[0].id();
    // Well inside the 600 s poll interval: only the wake-up can have started it.
    eventually("the job to complete", Duration::from_secs(20), || async {
        let job = inner.get_job(id).await.unwrap()?;
        (job.state == JobState::Completed).then_some(())
    })
    .await;
    handle.stop().await;
}

/// A job enqueued with a 2 s delay starts after 2 s: not before (the store resolves the delay on
/// its own clock, the database's for a server store; the runtime sends only the duration, so no
/// application clock takes part), and not at some later poll (the idle worker sleeps until the
/// job is due).
pub async fn delayed_job_starts_when_due(store: Arc<dyn JobStore>) {
    const DELAY: Duration = Duration::from_secs(2);
    let started: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let seen = started.clone();
    let later = JobDefinition::new("later", move |_ctx: JobContext, _: ()| {
        *seen.lock() = Some(tokio::time::Instant::now());
        async { Ok(()) }
    });
    let sent = tokio::time::Instant::now();
    let options = dispatch_job::EnqueueOptions::new().delay(DELAY);
    let client = dispatch_job::JobClient::standalone(store.clone());
    let id = client.enqueue_with(&later, (), options).await.unwrap().id();
    // A store that answers `next_due` must wake the worker on time however long its poll
    // interval; one that does not (the provided default) leaves the worker to poll, so poll
    // every second and hold it to the same bounds.
    let queues = [dispatch_core::job::DEFAULT_QUEUE.to_owned()];
    let answers = store.next_due(&queues, &["later".to_owned()]).await.unwrap().is_some();
    let poll = if answers { Duration::from_secs(600) } else { Duration::from_secs(1) };
    let handle = worker(store.clone())
        .register(later.clone())
        .configure(move |c| c.poll_interval = poll)
        .build()
        .unwrap()
        .start();
    wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    let waited = started.lock().expect("the handler ran").duration_since(sent);
    assert!(waited >= DELAY, "started after {waited:?}, before its {DELAY:?} delay");
    // Generous: a worker that fell back to a 600 s poll would be far past this.
    assert!(waited < DELAY + Duration::from_secs(30), "started only after {waited:?}");
}
