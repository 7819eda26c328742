//! A database whose write lock another connection holds past the busy timeout: store writes
//! fail with a transient error (the runtime retries them), and succeed once the lock is released.

use std::time::Duration;

use dispatch_core::{
    ClaimRequest, Finish, FinishResult, JobState, JobStore, LeaseRef, LeaseToken, NewJob, Outcome,
    WorkerId, job::DEFAULT_QUEUE,
};
use dispatch_store_sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_blocked_past_the_busy_timeout_fail_transiently() {
    let dir = std::env::temp_dir().join("dispatch-sqlite-busy");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", dispatch_core::JobId::new()));
    let store = SqliteStore::builder(path.display().to_string())
        .call_timeout(Duration::from_secs(5))
        .busy_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("open");
    store.enqueue(vec![NewJob::new("a", vec![])]).await.expect("enqueue");
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec![DEFAULT_QUEUE.into()],
        names: vec!["a".into()],
        limit: 1,
        lease_ttl: Duration::from_secs(30),
        token: LeaseToken::new(),
    };
    let claimed = store.claim(&request).await.expect("claim");
    let lease = LeaseRef { job_id: claimed[0].job.id, token: claimed[0].lease.token };
    let finish = [Finish { lease, outcome: Outcome::Complete }];

    // Another connection (another process, or the application's own) holds the write lock.
    let mut other = SqliteConnectOptions::new().filename(&path).connect().await.expect("connect");
    let held = other.begin_with("BEGIN IMMEDIATE").await.expect("begin immediate");
    let error =
        store.enqueue(vec![NewJob::new("a", vec![])]).await.expect_err("enqueue while held");
    assert!(error.kind().is_transient(), "enqueue: {error} ({:?})", error.kind());
    let error = store.finish(&finish).await.expect_err("finish while held");
    assert!(error.kind().is_transient(), "finish: {error} ({:?})", error.kind());

    // Released: the same calls go through.
    held.rollback().await.expect("rollback");
    store.enqueue(vec![NewJob::new("a", vec![])]).await.expect("enqueue after release");
    assert_eq!(
        store.finish(&finish).await.expect("finish after release"),
        [FinishResult::Applied { state: JobState::Completed, dlq_id: None }]
    );
}
