//! Enqueue inside the application's own transaction: 100 rolled back leave no job, 100 committed
//! leave 100.

use std::time::Duration;

use dispatch_core::{JobState, JobStore, NewJob};
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
