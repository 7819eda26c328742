//! Enqueue inside the application's own transaction: 100 rolled back leave no job, 100 committed
//! leave 100.

use std::time::Duration;

use dispatch_core::{
    JobState, JobStore, NewJob, NewRun, PageRequest, RunFilter, RunId, Scope, Started,
    WorkflowStore,
};
use dispatch_store_sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exists_exactly_when_its_transaction_commits() {
    let dir = std::env::temp_dir().join("dispatch-sqlite-tx");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", dispatch_core::JobId::new()));
    let store = SqliteStore::open(&path.display().to_string()).await.expect("open");
    let mut app = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the application's own connection");

    for commit in [false, true] {
        for n in 0..100 {
            let mut tx = app.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            sqlx::query("CREATE TABLE IF NOT EXISTS orders (n INTEGER)")
                .execute(&mut *tx)
                .await
                .expect("the application's own write");
            let job = NewJob::new("ship_order", format!("{n}").into_bytes());
            let results = store.enqueue_in(&mut tx, vec![job]).await.expect("enqueue_in");
            assert_eq!(results.len(), 1);
            if commit {
                tx.commit().await.expect("commit")
            } else {
                tx.rollback().await.expect("rollback")
            }
        }
        let counts = store.count_jobs().await.expect("count_jobs");
        let available: u64 =
            counts.iter().filter(|c| c.state == JobState::Available).map(|c| c.count).sum();
        assert_eq!(
            available,
            if commit { 100 } else { 0 },
            "after {} transactions",
            if commit { "committed" } else { "rolled-back" }
        );
    }
}

/// A new run and its drive job, as `dispatch_workflow::Workflows::new_run` builds them.
fn new_run(n: u32) -> (NewRun, NewJob) {
    let run = NewRun {
        id: RunId::new(),
        name: "checkout".into(),
        version: 1,
        input: format!("{n}").into_bytes(),
        scope: Scope::default(),
        idempotency_key: None,
        parent: None,
    };
    let drive = NewJob::new("workflow:checkout:v1", run.id.to_string().into_bytes());
    (run, drive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exists_exactly_when_its_transaction_commits() {
    let dir = std::env::temp_dir().join("dispatch-sqlite-tx");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", dispatch_core::JobId::new()));
    let store = SqliteStore::open(&path.display().to_string()).await.expect("open");
    let mut app = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the application's own connection");
    for commit in [false, true] {
        for n in 0..50 {
            let mut tx = app.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            let (run, drive) = new_run(n);
            let started = store.start_run_in(&mut tx, run, drive).await.expect("start_run_in");
            assert!(matches!(started, Started::Created(_)));
            if commit {
                tx.commit().await.expect("commit")
            } else {
                tx.rollback().await.expect("rollback")
            }
        }
        let runs = store.list_runs(&RunFilter::default(), &PageRequest::first(1000)).await.unwrap();
        let jobs = store.count_jobs().await.expect("count_jobs");
        let drives: u64 = jobs.iter().map(|c| c.count).sum();
        let want = if commit { 50 } else { 0 };
        assert_eq!((runs.items.len() as u64, drives), (want, want), "runs and their drive jobs");
    }
}
