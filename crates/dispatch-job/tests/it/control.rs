//! Stopping attempts: timeouts, cancel requests, lost leases, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_core::{
    Backoff, ClaimRequest, Event, FailureKind, JobCancel, JobState, LeaseToken, WorkerId,
};
use dispatch_job::{CancelReason, CancelToken, JobContext, JobDefinition, JobError};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::support::{Recorder, counting, eventually, store, wait_for_state, worker};

/// Sets its flag when dropped: proves a handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn timeout_drops_the_future_records_kind_timeout_and_retries() {
    let store = store();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let tokens: Arc<Mutex<Vec<CancelToken>>> = Arc::default();
    let seen = tokens.clone();
    let slow = JobDefinition::new("slow", move |ctx: JobContext, _: ()| {
        let guard = DropFlag(flag.clone());
        seen.lock().push(ctx.cancel_token().clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(())
        }
    })
    .timeout(Duration::from_millis(50))
    .max_attempts(2)
    .backoff(Backoff::Constant { delay: Duration::from_millis(30) });
    let recorder = Recorder::default();
    let handle = worker(store.clone())
        .register(slow.clone())
        .hook(recorder.clone())
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&slow, ()).await.unwrap().id();
    let job = wait_for_state(&store, id, JobState::Dead).await;
    handle.stop().await;

    assert!(dropped.load(Ordering::SeqCst), "the handler future is dropped at the timeout");
    assert_eq!(job.errors.len(), 2);
    assert!(job.errors.iter().all(|e| e.kind == FailureKind::Timeout));
    assert!(tokens.lock().iter().all(|t| t.reason() == Some(CancelReason::Timeout)));
    let retry = recorder.for_job(id).into_iter().find_map(|e| match e {
        Event::JobRetrying { failure, delay, .. } => Some((failure.kind, delay)),
        _ => None,
    });
    assert_eq!(
        retry,
        Some((FailureKind::Timeout, Duration::from_millis(30))),
        "retried per backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_of_a_running_job_fires_the_token_within_one_heartbeat() {
    let store = store();
    let started = Arc::new(Notify::new());
    let fired: Arc<Mutex<Option<(CancelReason, tokio::time::Instant)>>> = Arc::default();
    let (on_start, on_fire) = (started.clone(), fired.clone());
    let stubborn = JobDefinition::new("stubborn", move |ctx: JobContext, _: ()| {
        let (on_start, on_fire) = (on_start.clone(), on_fire.clone());
        async move {
            on_start.notify_one();
            let reason = ctx.cancelled().await;
            *on_fire.lock() = Some((reason, tokio::time::Instant::now()));
            Err(JobError::retry("stopped on request"))
        }
    });
    let heartbeat = Duration::from_millis(100);
    let handle = worker(store.clone())
        .register(stubborn.clone())
        .configure(move |c| c.heartbeat_interval = heartbeat)
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&stubborn, ()).await.unwrap().id();
    started.notified().await;
    let asked = tokio::time::Instant::now();
    assert_eq!(handle.client().cancel(id).await.unwrap(), JobCancel::Requested);
    let job = wait_for_state(&store, id, JobState::Cancelled).await;
    handle.stop().await;

    let (reason, at) = fired.lock().expect("the token fired");
    assert_eq!(reason, CancelReason::CancelRequested);
    assert!(at - asked <= heartbeat, "fired {:?} after the request", at - asked);
    assert!(job.errors.is_empty(), "cancelled, not retried: {:?}", job.errors);
    assert_eq!(job.attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn fenced_out_completion_fires_no_completed_hook() {
    let inner = store();
    let counting = counting(inner.clone());
    counting.interceptor().fail_heartbeats.store(true, Ordering::SeqCst); // this worker is partitioned
    let recorder = Recorder::default();
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (gate, on_start) = (release.clone(), started.clone());
    let slow = JobDefinition::new("slow", move |_ctx: JobContext, _: ()| {
        let (gate, on_start) = (gate.clone(), on_start.clone());
        async move {
            on_start.notify_one();
            gate.notified().await;
            Ok(())
        }
    });
    let handle = worker(counting.clone())
        .register(slow.clone())
        .configure(|c| c.lease_ttl = Duration::from_secs(2))
        .hook(recorder.clone())
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&slow, ()).await.unwrap().id();
    started.notified().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = inner.rescue_expired(10).await.unwrap();
    assert_eq!(report.rescued, [id]);
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
    eventually("the old attempt to end", Duration::from_secs(5), || async {
        (handle.in_flight() == 0).then_some(())
    })
    .await;
    handle.stop().await;
    let job = inner.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running, "the new holder's lease stands");
    assert_eq!(job.lease.unwrap().owner, other.worker);
    let events = recorder.for_job(id);
    assert!(events.iter().any(|e| matches!(e, Event::JobStarted { .. })));
    let completed = events.iter().any(|e| matches!(e, Event::JobCompleted { .. }));
    assert!(!completed, "a fenced-out completion fires no completed hook");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_short_jobs_finish() {
    let store = store();
    let work = JobDefinition::new("work", |_ctx: JobContext, _: u32| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    });
    let handle =
        worker(store.clone()).register(work.clone()).concurrency(20).build().unwrap().start();
    let ids = handle.client().enqueue_many(&work, 0..20).await.unwrap();
    eventually("20 in flight", Duration::from_secs(5), || async {
        (handle.in_flight() == 20).then_some(())
    })
    .await;
    let report = handle.stop().await;
    assert_eq!(report.cancelled, 0);
    for id in ids {
        assert_eq!(store.get_job(id.id()).await.unwrap().unwrap().state, JobState::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_long_jobs_and_releases_them_for_another_worker() {
    let store = store();
    let tokens: Arc<Mutex<Vec<CancelToken>>> = Arc::default();
    let seen = tokens.clone();
    let endless = JobDefinition::new("endless", move |ctx: JobContext, _: u32| {
        seen.lock().push(ctx.cancel_token().clone());
        async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    });
    let handle = worker(store.clone())
        .register(endless.clone())
        .concurrency(20)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .start();
    let ids = handle.client().enqueue_many(&endless, 0..20).await.unwrap();
    eventually("20 in flight", Duration::from_secs(5), || async {
        (handle.in_flight() == 20).then_some(())
    })
    .await;
    let report = handle.stop().await;
    assert_eq!((report.cancelled, report.released), (20, 20));
    assert_eq!(tokens.lock().len(), 20);
    assert!(tokens.lock().iter().all(|t| t.reason() == Some(CancelReason::Shutdown)));

    // Another worker claims all 20 at once: no lease expiry to wait for, attempts given back.
    let other = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["endless".into()],
        limit: 100,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let claimed = store.claim(&other).await.unwrap();
    assert_eq!(claimed.len(), 20);
    assert!(claimed.iter().all(|c| c.job.attempt == 1), "the released attempt was given back");
    let mut claimed_ids: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
    let mut enqueued: Vec<_> = ids.iter().map(|e| e.id()).collect();
    claimed_ids.sort();
    enqueued.sort();
    assert_eq!(claimed_ids, enqueued, "nothing lost");
}
