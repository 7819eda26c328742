//! A worker's readiness and health view over the PostgreSQL store and its wake-up listener: once
//! `ready` resolves, a job enqueued by another store on the same schema starts through a
//! wake-up, not a poll; when the listener's backend is terminated, health shows the loss and the
//! reconnection, and wake-ups work again. Needs the test server (see `support`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dispatch_core::{JobId, JobState, JobStore, ListenerState, NewJob};
use dispatch_job::worker::Operation;
use dispatch_job::{JobContext, JobDefinition, Worker, WorkerHandle};
use dispatch_store_postgres::PostgresStore;
use dispatch_store_tests::fixtures::{CountingStore, counting, eventually, wait_for_state};
use sqlx::PgPool;

use crate::listener::{app_name, listener_pids, two_stores};
use crate::support::ServerTest;

/// The worker's poll interval: far above every deadline here, so a job that starts in time
/// started through a wake-up.
const POLL: Duration = Duration::from_secs(600);
/// How long readiness, a reconnect or a job may take on a loaded machine: above the listener's
/// own 10 s connect timeout, far below [`POLL`].
const GENEROUS: Duration = Duration::from_secs(60);

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("after_ready_another_stores_enqueue_starts_through_a_wake_up", |url| {
            Box::pin(after_ready_another_stores_enqueue_starts_through_a_wake_up(url))
        }),
        ("health_reports_a_lost_listener_and_its_reconnection", |url| {
            Box::pin(health_reports_a_lost_listener_and_its_reconnection(url))
        }),
    ]
}

/// A started worker of `ping` jobs over `store` (counted), polling only every [`POLL`].
fn start_worker(store: &PostgresStore) -> (WorkerHandle, Arc<CountingStore>) {
    let counted = counting(Arc::new(store.clone()) as Arc<dyn JobStore>);
    let ping = JobDefinition::new("ping", |_ctx: JobContext, _: ()| async { Ok(()) });
    let handle = Worker::builder(counted.clone())
        .register(ping)
        .configure(|c| {
            c.poll_interval = POLL;
            c.ready_timeout = GENEROUS;
        })
        .build()
        .expect("worker")
        .start();
    (handle, counted)
}

/// Wait until the fetch loop has asked `next_due` after its last claim: it is going to sleep
/// (until a wake-up or the poll), so what is enqueued now can only wake it.
async fn until_idle(counted: &CountingStore) {
    let counts = counted.interceptor();
    eventually("the fetch loop to go idle", GENEROUS, || {
        let claims = counts.claim_limits.lock().len();
        let idle = claims > 0 && counts.next_dues.load(Ordering::SeqCst) >= claims;
        async move { idle.then_some(()) }
    })
    .await;
}

/// Enqueue `ping` jobs one at a time through `other` once the worker is idle, each started
/// within [`GENEROUS`]. Two: the listener's wake-up on connecting may still be on its way for
/// the first, never for the second.
async fn jobs_start_through_wake_ups(other: &PostgresStore, counted: &CountingStore) {
    for _ in 0..2 {
        until_idle(counted).await;
        let enqueued = other.enqueue(vec![NewJob::new("ping", b"null".to_vec())]).await;
        let id: JobId = enqueued.expect("enqueue")[0].id();
        let started = tokio::time::Instant::now();
        wait_for_state(&Arc::new(other.clone()), id, JobState::Completed).await;
        let took = started.elapsed();
        assert!(took < GENEROUS, "started through a wake-up, not a poll: {took:?}");
    }
}

async fn after_ready_another_stores_enqueue_starts_through_a_wake_up(url: String) {
    let (store, other) = two_stores(&url, &app_name()).await;
    let (handle, counted) = start_worker(&store);
    handle.ready().await.expect("ready");
    let health = handle.health();
    assert!(health.ready);
    assert!(health.last_claim.is_some());
    let listener = health.listener.expect("the PostgreSQL store has a listener");
    assert!(listener.connected, "{listener:?}");

    jobs_start_through_wake_ups(&other, &counted).await;
    handle.stop().await;
}

/// The listener as the worker's health view shows it, once `check` holds.
async fn listener_until(
    handle: &WorkerHandle,
    what: &str,
    check: impl Fn(&ListenerState) -> bool,
) -> ListenerState {
    eventually(what, GENEROUS, || {
        let listener = handle.health().listener.filter(&check);
        async move { listener }
    })
    .await
}

async fn health_reports_a_lost_listener_and_its_reconnection(url: String) {
    let app = app_name();
    let (store, other) = two_stores(&url, &app).await;
    let (handle, counted) = start_worker(&store);
    handle.ready().await.expect("ready");
    let before = handle.health().listener.expect("a listener");
    assert!(before.connected);

    let admin = PgPool::connect(&url).await.expect("connect");
    let pids = listener_pids(&admin, &app).await;
    assert_eq!(pids.len(), 1, "one listener connection, named after the store: {pids:?}");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pids[0])
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(killed);

    let lost = |l: &ListenerState| !l.connected || l.reconnects > before.reconnects;
    let seen = listener_until(&handle, "the listener's loss", lost).await;
    assert!(seen.last_error.is_some(), "the loss is the listener's last error: {seen:?}");
    let back = |l: &ListenerState| l.connected && l.reconnects > before.reconnects;
    let after = listener_until(&handle, "the listener to reconnect", back).await;
    assert!(after.since >= before.since, "{before:?} then {after:?}");
    let health = handle.health();
    let error = health.recent_errors.iter().find(|e| e.operation == Operation::Listener);
    assert!(error.is_some(), "the loss among the recent errors: {:?}", health.recent_errors);

    handle.ready().await.expect("ready again");
    jobs_start_through_wake_ups(&other, &counted).await;
    handle.stop().await;
}
