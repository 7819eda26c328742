//! Enqueue inside the application's own transaction: 100 rolled back leave no job, 100
//! committed leave 100, and a worker claiming all the while never sees a job whose
//! transaction has not committed. Needs the test server (see `support`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, JobId, JobState, JobStore, LeaseToken, NewJob, NewRun, PageRequest, RunFilter,
    RunId, Scope, Started, WorkerId, WorkflowStore,
};
use dispatch_store_postgres::PostgresStore;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_job_exists_exactly_when_its_transaction_commits", |url| {
            Box::pin(a_job_exists_exactly_when_its_transaction_commits(url))
        }),
        ("claims_never_see_uncommitted_jobs", |url| {
            Box::pin(claims_never_see_uncommitted_jobs(url))
        }),
        ("a_reused_id_leaves_the_transaction_usable", |url| {
            Box::pin(a_reused_id_leaves_the_transaction_usable(url))
        }),
        ("a_run_exists_exactly_when_its_transaction_commits", |url| {
            Box::pin(a_run_exists_exactly_when_its_transaction_commits(url))
        }),
    ]
}

/// A store on a fresh schema, and the application's own connection with an `orders` table in
/// another fresh schema.
async fn setup(url: &str) -> (PostgresStore, PgConnection, String) {
    let store = PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(4)
        .build()
        .await
        .expect("store");
    let mut app = PgConnection::connect(url).await.expect("the application's own connection");
    let app_schema = support::fresh_schema();
    let orders = format!("\"{app_schema}\".orders");
    let create = format!("CREATE SCHEMA \"{app_schema}\"; CREATE TABLE {orders} (n integer)");
    sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut app).await.expect("orders table");
    (store, app, orders)
}

async fn available(store: &PostgresStore) -> u64 {
    let counts = store.count_jobs().await.expect("count_jobs");
    counts.iter().filter(|c| c.state == JobState::Available).map(|c| c.count).sum()
}

async fn a_job_exists_exactly_when_its_transaction_commits(url: String) {
    let (store, mut app, orders) = setup(&url).await;
    for commit in [false, true] {
        for n in 0..100 {
            let mut tx = app.begin().await.expect("begin");
            let insert = format!("INSERT INTO {orders} (n) VALUES ($1)");
            sqlx::query(AssertSqlSafe(insert))
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("the application's own write");
            let job = NewJob::new("ship_order", format!("{n}").into_bytes());
            let results = store.enqueue_in(&mut tx, vec![job]).await.expect("enqueue_in");
            assert_eq!(results.len(), 1);
            if commit {
                tx.commit().await.expect("commit");
            } else {
                tx.rollback().await.expect("rollback");
            }
        }
        let want = if commit { 100 } else { 0 };
        assert_eq!(
            available(&store).await,
            want,
            "after the {} transactions",
            if commit { "committed" } else { "rolled-back" }
        );
    }
}

/// A claim of everything due, by a fresh worker.
fn claim_all() -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["ship_order".into()],
        limit: 100,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    }
}

async fn claims_never_see_uncommitted_jobs(url: String) {
    let (store, mut app, _) = setup(&url).await;
    let done = Arc::new(AtomicBool::new(false));
    let claimer = {
        let (store, done) = (store.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut claimed: Vec<JobId> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let got = store.claim(&claim_all()).await.expect("claim");
                claimed.extend(got.iter().map(|c| c.job.id));
                tokio::task::yield_now().await;
            }
            claimed
        })
    };
    let mut committed = HashSet::new();
    for n in 0..100 {
        let mut tx = app.begin().await.expect("begin");
        let job = NewJob::new("ship_order", format!("{n}").into_bytes());
        let id = job.id;
        store.enqueue_in(&mut tx, vec![job]).await.expect("enqueue_in");
        // Hold the transaction open while the claimer runs.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if n % 2 == 0 {
            tx.commit().await.expect("commit");
            committed.insert(id);
        } else {
            tx.rollback().await.expect("rollback");
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut claimed = claimer.await.expect("claimer task");
    claimed.extend(store.claim(&claim_all()).await.expect("claim").iter().map(|c| c.job.id));
    for id in &claimed {
        assert!(committed.contains(id), "claimed {id}, whose transaction did not commit");
    }
    let claimed: HashSet<JobId> = claimed.into_iter().collect();
    assert_eq!(claimed, committed, "every committed job claimed once");
}

async fn a_reused_id_leaves_the_transaction_usable(url: String) {
    let (store, mut app, orders) = setup(&url).await;
    let first = NewJob::new("ship_order", b"1".to_vec());
    store.enqueue(vec![first.clone()]).await.expect("enqueue");
    // Another payload under the stored ID: a reuse (the same job again would be a retry).
    let mut reuse = NewJob::new("ship_order", b"9".to_vec());
    reuse.id = first.id;
    let mut tx = app.begin().await.expect("begin");
    let err = store.enqueue_in(&mut tx, vec![reuse]).await.expect_err("a reused ID");
    assert_eq!(err.kind(), dispatch_core::ErrorKind::Conflict, "{err}");
    let insert = format!("INSERT INTO {orders} (n) VALUES (1)");
    sqlx::query(AssertSqlSafe(insert)).execute(&mut *tx).await.expect("the transaction goes on");
    let second = NewJob::new("ship_order", b"2".to_vec());
    store.enqueue_in(&mut tx, vec![second]).await.expect("enqueue_in");
    tx.commit().await.expect("commit");
    assert_eq!(available(&store).await, 2);
}

/// 50 runs started in rolled-back transactions leave none; 50 committed leave 50, each with its
/// drive job.
async fn a_run_exists_exactly_when_its_transaction_commits(url: String) {
    let (store, mut app, _) = setup(&url).await;
    for commit in [false, true] {
        for n in 0..50 {
            let mut tx = app.begin().await.expect("begin");
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
            let started = store.start_run_in(&mut tx, run, drive).await.expect("start_run_in");
            assert!(matches!(started, Started::Created(_)));
            if commit {
                tx.commit().await.expect("commit");
            } else {
                tx.rollback().await.expect("rollback");
            }
        }
        let runs = store.list_runs(&RunFilter::default(), &PageRequest::first(1000)).await.unwrap();
        let want = if commit { 50 } else { 0 };
        assert_eq!((runs.items.len() as u64, available(&store).await), (want, want));
    }
}
