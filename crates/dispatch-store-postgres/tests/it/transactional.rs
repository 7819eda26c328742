//! Enqueue inside the application's own transaction: 100 rolled back leave no job, 100
//! committed leave 100, and a worker claiming all the while never sees a job whose
//! transaction has not committed. Typed jobs in a transaction of the store
//! (`PostgresStore::transaction`) or of the application (`in_transaction`) exist, and wake a
//! subscriber, exactly when it commits, with the application's own writes. Needs the test
//! server (see `support`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, Error, ErrorKind, JobId, JobState, JobStore, LeaseToken, NewJob, NewRun,
    PageRequest, RunFilter, RunId, Scope, Started, Wakeup, WakeupStream, WorkerId, WorkflowStore,
};
use dispatch_job::{EnqueueOptions, EnqueueTransactionExt as _, JobContext, JobDefinition};
use dispatch_store_postgres::PostgresStore;
use futures::StreamExt as _;
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
        (
            "typed_jobs_in_a_store_transaction_commit_with_the_applications_writes_or_neither",
            |url| {
                Box::pin(typed_jobs_in_a_store_transaction_commit_with_the_applications_writes_or_neither(
                url,
            ))
            },
        ),
        ("a_store_transaction_past_the_call_timeout_is_rolled_back", |url| {
            Box::pin(a_store_transaction_past_the_call_timeout_is_rolled_back(url))
        }),
        ("typed_jobs_in_the_applications_transaction_commit_with_it_or_not_at_all", |url| {
            Box::pin(typed_jobs_in_the_applications_transaction_commit_with_it_or_not_at_all(url))
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A job definition whose input is an order number.
fn ship_order() -> JobDefinition<u32> {
    JobDefinition::new("ship_order", |_ctx: JobContext, _order: u32| async { Ok(()) })
}

/// How long a committed transaction's wake-up may take to arrive (see `wakeup::PROMPT`).
const PROMPT: Duration = Duration::from_secs(10);

/// Subscribe, and wait for the listener's first `Wakeup::any` (it is listening then).
async fn subscribe(store: &PostgresStore) -> WakeupStream {
    let mut stream = store.wakeups().expect("the PostgreSQL store pushes wake-ups");
    let first = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
    assert_eq!(first.expect("the listener connects"), Some(Wakeup::any()));
    stream
}

/// Wake-ups until one for `queue` (included), each within [`PROMPT`].
async fn until_queue(stream: &mut WakeupStream, queue: &str) -> Vec<Wakeup> {
    let mut seen = Vec::new();
    while seen.last() != Some(&Wakeup::queue(queue)) {
        match tokio::time::timeout(PROMPT, stream.next()).await {
            Ok(Some(wakeup)) => seen.push(wakeup),
            Ok(None) => panic!("the stream ended after {seen:?}"),
            Err(_) => panic!("no wake-up for {queue} within {PROMPT:?}; got {seen:?}"),
        }
    }
    seen
}

async fn count_orders(url: &str, orders: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let count = format!("SELECT count(*) FROM {orders}");
    sqlx::query_scalar(AssertSqlSafe(count)).fetch_one(&mut conn).await.expect("count orders")
}

/// The (queue, order) of each job, read back from the store.
async fn stored_orders(store: &PostgresStore, ids: &[JobId]) -> Vec<(String, u32)> {
    let mut stored = Vec::new();
    for id in ids {
        let job = store.get_job(*id).await.expect("get_job").expect("a committed job");
        assert_eq!(job.name, "ship_order");
        let order = serde_json::from_slice(&job.payload).expect("a typed payload");
        stored.push((job.queue, order));
    }
    stored
}

async fn typed_jobs_in_a_store_transaction_commit_with_the_applications_writes_or_neither(
    url: String,
) {
    let (store, _app, orders) = setup(&url).await;
    let mut wakeups = subscribe(&store).await;
    let ship = ship_order();

    let (def, table) = (ship.clone(), orders.clone());
    let failed: Result<(), BoxError> = store
        .transaction(move |tx| {
            Box::pin(async move {
                let insert = format!("INSERT INTO {table} (n) VALUES (1)");
                sqlx::query(AssertSqlSafe(insert)).execute(tx.conn()).await?;
                tx.enqueue_with(&def, 1, EnqueueOptions::new().queue("rolled_back")).await?;
                Err("payment declined".into())
            })
        })
        .await;
    assert_eq!(failed.expect_err("the body's error").to_string(), "payment declined");
    assert_eq!((count_orders(&url, &orders).await, available(&store).await), (0, 0));

    let (def, table) = (ship.clone(), orders.clone());
    let ids = store
        .transaction(move |tx| {
            Box::pin(async move {
                let insert = format!("INSERT INTO {table} (n) VALUES (2)");
                sqlx::query(AssertSqlSafe(insert)).execute(tx.conn()).await?;
                let mut ids = vec![tx.enqueue(&def, 2).await?.id()];
                let shipping = EnqueueOptions::new().queue("shipping");
                ids.push(tx.enqueue_with(&def, 3, shipping).await?.id());
                ids.extend(tx.enqueue_many(&def, [4, 5]).await?.iter().map(|e| e.id()));
                Ok::<_, BoxError>(ids)
            })
        })
        .await
        .expect("commit");
    let want = [("default", 2), ("shipping", 3), ("default", 4), ("default", 5)]
        .map(|(queue, order)| (queue.to_owned(), order));
    assert_eq!(stored_orders(&store, &ids).await, want);
    assert_eq!(count_orders(&url, &orders).await, 1);
    let seen = until_queue(&mut wakeups, "shipping").await;
    assert!(!seen.contains(&Wakeup::queue("rolled_back")), "a rolled-back enqueue woke: {seen:?}");
}

async fn a_store_transaction_past_the_call_timeout_is_rolled_back(url: String) {
    let schema = support::fresh_schema();
    let store = PostgresStore::builder(&url)
        .schema(&schema)
        .call_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("store");
    let def = ship_order();
    let result: Result<(), Error> = store
        .transaction(move |tx| {
            Box::pin(async move {
                tx.enqueue(&def, 1).await?;
                // The application's work never finishes.
                std::future::pending::<()>().await;
                Ok(())
            })
        })
        .await;
    let err = result.expect_err("past the call timeout");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(available(&store).await, 0, "the job was rolled back");
}

async fn typed_jobs_in_the_applications_transaction_commit_with_it_or_not_at_all(url: String) {
    let (store, mut app, orders) = setup(&url).await;
    let mut wakeups = subscribe(&store).await;
    let ship = ship_order();
    let insert = |n: u32| AssertSqlSafe(format!("INSERT INTO {orders} (n) VALUES ({n})"));

    let mut tx = app.begin().await.expect("begin");
    sqlx::query(insert(1)).execute(&mut *tx).await.expect("the application's own write");
    let rolled_back = EnqueueOptions::new().queue("rolled_back");
    store.in_transaction(&mut tx).enqueue_with(&ship, 1, rolled_back).await.expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!((count_orders(&url, &orders).await, available(&store).await), (0, 0));

    let mut tx = app.begin().await.expect("begin");
    sqlx::query(insert(2)).execute(&mut *tx).await.expect("the application's own write");
    let mut jobs = store.in_transaction(&mut tx);
    let mut ids = vec![jobs.enqueue(&ship, 2).await.expect("enqueue").id()];
    let shipping = EnqueueOptions::new().queue("shipping");
    ids.push(jobs.enqueue_with(&ship, 3, shipping).await.expect("enqueue_with").id());
    let many = jobs.enqueue_many(&ship, [4, 5]).await.expect("enqueue_many");
    ids.extend(many.iter().map(|e| e.id()));
    tx.commit().await.expect("commit");
    let want = [("default", 2), ("shipping", 3), ("default", 4), ("default", 5)]
        .map(|(queue, order)| (queue.to_owned(), order));
    assert_eq!(stored_orders(&store, &ids).await, want);
    assert_eq!(count_orders(&url, &orders).await, 1);
    let seen = until_queue(&mut wakeups, "shipping").await;
    assert!(!seen.contains(&Wakeup::queue("rolled_back")), "a rolled-back enqueue woke: {seen:?}");
}
