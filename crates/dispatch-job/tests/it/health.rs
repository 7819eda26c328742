//! Readiness and the health view on the memory store: `ready` resolves once the worker claims,
//! after which a job enqueued past the worker's client starts through a wake-up, not a poll;
//! `ready` is bounded while the store is down; health shows failed claims, the last successful
//! claim and heartbeat, and is never ready after stop. (On PostgreSQL, with its listener: the
//! store's `health` integration tests.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dispatch_core::{ErrorKind, JobState, JobStore, NewJob};
use dispatch_job::worker::Operation;
use dispatch_job::{JobContext, JobDefinition, WorkerBuilder};
use dispatch_store_tests::faults::faulty;
use dispatch_store_tests::fixtures::CountingStore;
use tokio::sync::Notify;

use crate::support::{TokioClock, counting, eventually, store, wait_for_state, worker};

/// Far above every deadline of these tests: a job that starts in time started through a
/// wake-up, not a poll.
const POLL: Duration = Duration::from_secs(600);

fn ping() -> JobDefinition<()> {
    JobDefinition::new("ping", |_ctx: JobContext, _: ()| async { Ok(()) })
}

/// A worker that polls only every ten minutes, with health timestamps on tokio's clock.
fn slow_polling(store: Arc<dyn JobStore>) -> WorkerBuilder {
    worker(store)
        .register(ping())
        .clock(Arc::new(TokioClock::new()))
        .configure(|c| c.poll_interval = POLL)
}

/// Enqueue a `ping` job straight into `store`, past any worker's client.
async fn enqueue_ping(store: &Arc<dyn JobStore>) -> dispatch_core::JobId {
    let enqueued = store.enqueue(vec![NewJob::new("ping", b"null".to_vec())]).await.unwrap();
    enqueued[0].id()
}

#[tokio::test(start_paused = true)]
async fn after_ready_a_job_enqueued_elsewhere_starts_through_a_wake_up() {
    let store = store();
    let counted = counting(store.clone());
    let handle = slow_polling(counted.clone()).build().unwrap().start();
    handle.ready().await.unwrap();
    assert!(handle.health().ready);
    assert!(handle.health().last_claim.is_some());
    assert_eq!(handle.health().listener, None, "the memory store pushes in-process");

    let other = store.clone();
    for _ in 0..2 {
        until_idle(&counted).await;
        let started = tokio::time::Instant::now();
        let id = enqueue_ping(&other).await;
        wait_for_state(&store, id, JobState::Completed).await;
        let took = started.elapsed();
        assert!(took < POLL / 10, "started through a wake-up, not a poll: {took:?}");
    }
    handle.stop().await;
}

/// Wait until the fetch loop has asked `next_due` after its last claim: it is going to sleep
/// (until a wake-up or the poll), so what is enqueued now can only wake it.
async fn until_idle(counted: &CountingStore) {
    let counts = counted.interceptor();
    eventually("the fetch loop to go idle", Duration::from_secs(60), || {
        let claims = counts.claim_limits.lock().len();
        let idle = claims > 0 && counts.next_dues.load(Ordering::SeqCst) >= claims;
        async move { idle.then_some(()) }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn ready_gives_up_at_its_timeout_while_the_store_is_down_and_the_worker_keeps_trying() {
    let faulty = faulty(store());
    faulty.interceptor().outage(Duration::from_secs(3600));
    let handle = worker(faulty.clone())
        .register(ping())
        .configure(|c| c.ready_timeout = Duration::from_secs(2))
        .build()
        .unwrap()
        .start();
    let asked = tokio::time::Instant::now();
    let error = handle.ready().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(error.to_string().contains("claim"), "says what is missing: {error}");
    assert!(asked.elapsed() < Duration::from_secs(3), "bounded by ready_timeout");
    assert!(!handle.health().ready);

    faulty.interceptor().outage(Duration::ZERO);
    handle.ready().await.unwrap();
    assert!(handle.health().ready, "the worker kept retrying");
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_records_a_failed_claim_and_the_next_successful_one() {
    let faulty = faulty(store());
    let handle = worker(faulty.clone())
        .register(ping())
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap()
        .start();
    handle.ready().await.unwrap();

    faulty.interceptor().outage(Duration::from_secs(3600));
    let failed = eventually("a failed claim in the health view", Duration::from_secs(60), || {
        let health = handle.health();
        let error = health.recent_errors.iter().find(|e| e.operation == Operation::Claim).cloned();
        async move { error }
    })
    .await;
    assert!(failed.message.contains("injected outage"), "{failed:?}");
    assert!(!handle.health().ready, "not ready while claims fail");

    faulty.interceptor().outage(Duration::ZERO);
    eventually("a claim after the outage", Duration::from_secs(60), || {
        let health = handle.health();
        let moved = health.last_claim.is_some_and(|at| at > failed.at) && health.ready;
        async move { moved.then_some(()) }
    })
    .await;
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_shows_attempts_in_flight_heartbeats_and_no_readiness_after_stop() {
    let store = store();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let hold = JobDefinition::new("hold", move |_ctx: JobContext, _: ()| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok(())
        }
    });
    let handle = worker(store.clone())
        .register(hold.clone())
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap()
        .start();
    let probe = handle.health_probe();
    handle.ready().await.unwrap();
    assert_eq!(probe.health().worker_id, handle.id());
    assert_eq!(probe.health().last_heartbeat, None, "no lease held yet");

    let id = handle.client().enqueue(&hold, ()).await.unwrap().id();
    eventually("a heartbeat for the running attempt", Duration::from_secs(60), || {
        let health = probe.health();
        let beating = health.in_flight == 1 && health.last_heartbeat.is_some();
        async move { beating.then_some(()) }
    })
    .await;
    release.notify_one();
    wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    let after = probe.health();
    assert!(!after.ready, "a stopped worker is never ready");
    assert_eq!(after.in_flight, 0);
    assert!(after.recent_errors.is_empty(), "{:?}", after.recent_errors);
}

/// Fails every `next_due` call, as a store whose probe query broke would.
struct BrokenNextDue;

#[async_trait::async_trait]
impl dispatch_core::Interceptor for BrokenNextDue {
    async fn before(&self, call: dispatch_core::Call) -> dispatch_core::Result<()> {
        if call.kind == dispatch_core::CallKind::NextDue {
            return Err(dispatch_core::Error::unavailable("next-due is broken"));
        }
        Ok(())
    }
}

/// An idle worker whose next-due probe fails falls back to its poll, and says so in its health.
#[tokio::test(start_paused = true)]
async fn health_records_a_failing_next_due_probe() {
    let inner: Arc<dyn JobStore> = store();
    let broken: Arc<dyn JobStore> = Arc::new(dispatch_core::Intercepted::new(inner, BrokenNextDue));
    let handle = slow_polling(broken).build().unwrap().start();
    handle.ready().await.unwrap();
    let error = eventually("a next-due error in the health view", Duration::from_secs(60), || {
        let health = handle.health();
        let error =
            health.recent_errors.iter().find(|e| e.operation == Operation::NextDue).cloned();
        async move { error }
    })
    .await;
    assert!(error.message.contains("next-due is broken"), "{error:?}");
    assert!(handle.health().ready, "a failing probe does not stop claims");
    handle.stop().await;
}
