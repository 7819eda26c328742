//! Enqueue inside the application's own transaction, on the store's writer
//! (`SqliteStore::transaction`) and on the application's own connection (`enqueue_in`): jobs
//! and runs exist exactly when their transaction commits, typed jobs too; back-to-back
//! transactions on the writer leave a real worker's calls on time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    Call, Enqueued, Error, ErrorKind, Intercepted, Interceptor, JobState, JobStore, NewJob, NewRun,
    PageRequest, Reply, RunFilter, RunId, Scope, Started, Wakeup, WorkflowStore,
};
use dispatch_job::{EnqueueOptions, EnqueueTransactionExt as _, JobContext, JobDefinition, Worker};
use dispatch_store_sqlite::SqliteStore;
use futures::StreamExt as _;
use parking_lot::Mutex;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::time::Instant;

async fn fresh_store() -> SqliteStore {
    fresh_store_with_call_timeout(dispatch_store_sqlite::DEFAULT_CALL_TIMEOUT).await
}

/// A database file of its own for one test.
fn fresh_path() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("dispatch-sqlite-tx");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{}.db", dispatch_core::JobId::new()))
}

/// A fresh store, and a connection of the application's own to its file.
async fn store_and_app_connection() -> (SqliteStore, SqliteConnection) {
    let path = fresh_path();
    let store = SqliteStore::open(&path.display().to_string()).await.expect("open");
    let app = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the application's own connection");
    (store, app)
}

async fn fresh_store_with_call_timeout(timeout: Duration) -> SqliteStore {
    SqliteStore::builder(fresh_path().display().to_string())
        .call_timeout(timeout)
        .build()
        .await
        .expect("open")
}

async fn available(store: &SqliteStore) -> u64 {
    let counts = store.count_jobs().await.expect("count_jobs");
    counts.iter().filter(|c| c.state == JobState::Available).map(|c| c.count).sum()
}

async fn orders(store: &SqliteStore) -> i64 {
    store
        .transaction(|tx| {
            Box::pin(async move {
                let n = sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(tx.conn())
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?;
                Ok::<_, Error>(n)
            })
        })
        .await
        .expect("count orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_transaction_commits_jobs_with_the_applications_writes_or_neither() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let store = fresh_store().await;
    let mut wakeups = store.wakeups().expect("wake-ups");
    store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("CREATE TABLE orders (n INTEGER)").execute(tx.conn()).await?;
                Ok::<_, BoxError>(())
            })
        })
        .await
        .expect("create the application's table");

    // Committed: the application's row, the job, and a wake-up for its queue.
    let results = store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (n) VALUES (1)").execute(tx.conn()).await?;
                let mut job = NewJob::new("ship_order", b"1".to_vec());
                job.queue = "shipping".into();
                Ok::<_, BoxError>(tx.enqueue_jobs(vec![job]).await?)
            })
        })
        .await
        .expect("commit");
    assert!(matches!(results[..], [Enqueued::Created(_)]));
    assert_eq!((orders(&store).await, available(&store).await), (1, 1));
    let woken = tokio::time::timeout(Duration::from_secs(5), wakeups.next()).await;
    assert_eq!(woken.expect("a wake-up").expect("stream open"), Wakeup::queue("shipping"));

    // The body fails: neither the row nor the job.
    let failed: Result<(), BoxError> = store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (n) VALUES (2)").execute(tx.conn()).await?;
                tx.enqueue_jobs(vec![NewJob::new("ship_order", b"2".to_vec())]).await?;
                Err("payment declined".into())
            })
        })
        .await;
    assert_eq!(failed.expect_err("the body's error").to_string(), "payment declined");
    assert_eq!((orders(&store).await, available(&store).await), (1, 1));

    // The body panics: neither, and the writer still works.
    let panicking = store.clone();
    let panicked = tokio::spawn(async move {
        panicking
            .transaction(|tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO orders (n) VALUES (3)").execute(tx.conn()).await?;
                    tx.enqueue_jobs(vec![NewJob::new("ship_order", b"3".to_vec())]).await?;
                    panic!("the application panics mid-transaction");
                    #[allow(unreachable_code)]
                    Ok::<_, BoxError>(())
                })
            })
            .await
    })
    .await;
    assert!(panicked.expect_err("panicked").is_panic());
    assert_eq!((orders(&store).await, available(&store).await), (1, 1));
    store.enqueue(vec![NewJob::new("ship_order", b"4".to_vec())]).await.expect("enqueue after");
    assert_eq!(available(&store).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_commit_with_the_applications_writes_or_neither() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let store = fresh_store().await;
    let mut wakeups = store.wakeups().expect("wake-ups");
    let ship = JobDefinition::new("ship_order", |_ctx: JobContext, _order: u32| async { Ok(()) });
    store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("CREATE TABLE orders (n INTEGER)").execute(tx.conn()).await?;
                Ok::<_, BoxError>(())
            })
        })
        .await
        .expect("create the application's table");

    // The body owns what it uses (it may not borrow): a clone of the definition.
    let def = ship.clone();
    let ids = store
        .transaction(move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (n) VALUES (1)").execute(tx.conn()).await?;
                let mut ids = vec![tx.enqueue(&def, 1).await?.id()];
                let shipping = EnqueueOptions::new().queue("shipping");
                ids.push(tx.enqueue_with(&def, 2, shipping).await?.id());
                ids.extend(tx.enqueue_many(&def, [3, 4]).await?.iter().map(|e| e.id()));
                Ok::<_, BoxError>(ids)
            })
        })
        .await
        .expect("commit");
    let mut seen = Vec::new();
    for id in &ids {
        let job = store.get_job(*id).await.expect("get_job").expect("a committed job");
        let order: u32 = serde_json::from_slice(&job.payload).expect("a typed payload");
        seen.push((job.name, job.queue, order));
    }
    let want = [(1, "default"), (2, "shipping"), (3, "default"), (4, "default")]
        .map(|(order, queue)| ("ship_order".to_owned(), queue.to_owned(), order));
    assert_eq!(seen, want);
    assert_eq!(orders(&store).await, 1);
    let woken = tokio::time::timeout(Duration::from_secs(10), wakeups.next()).await;
    assert!(woken.expect("a wake-up after the commit").is_some());

    let failed: Result<(), BoxError> = store
        .transaction(move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (n) VALUES (2)").execute(tx.conn()).await?;
                tx.enqueue(&ship, 5).await?;
                Err("payment declined".into())
            })
        })
        .await;
    assert_eq!(failed.expect_err("the body's error").to_string(), "payment declined");
    assert_eq!((orders(&store).await, available(&store).await), (1, 4), "nothing of it stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_transaction_held_past_the_call_timeout_is_rolled_back() {
    let store = fresh_store_with_call_timeout(Duration::from_millis(200)).await;
    let error = store
        .transaction(|tx| {
            Box::pin(async move {
                tx.enqueue_jobs(vec![NewJob::new("ship_order", vec![])]).await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, Error>(())
            })
        })
        .await
        .expect_err("timed out");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert_eq!(available(&store).await, 0);
    store.enqueue(vec![NewJob::new("ship_order", vec![])]).await.expect("the writer is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_in_a_writer_transaction_exists_when_it_commits() {
    let store = fresh_store().await;
    for commit in [false, true] {
        let (run, drive) = new_run(0);
        let id = run.id;
        let result = store
            .transaction(|tx| {
                Box::pin(async move {
                    let started = tx.start_run(run, drive).await?;
                    if commit { Ok(started) } else { Err(Error::internal("rolled back")) }
                })
            })
            .await;
        assert_eq!(result.is_ok(), commit);
        assert_eq!(store.get_run(id).await.expect("get_run").is_some(), commit);
    }
}

/// Counts the calls a worker makes through it: begun, answered, and answered with a transient
/// failure (a timeout, or the database busy).
#[derive(Default)]
struct Watch {
    begun: AtomicU64,
    answered: AtomicU64,
    transient: AtomicU64,
    by_kind: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl Interceptor for Watch {
    async fn before(&self, call: Call) -> dispatch_core::Result<()> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        *self.by_kind.lock().entry(format!("{:?}", call.kind)).or_default() += 1;
        Ok(())
    }

    async fn after(&self, call: Call, reply: Reply<'_>) -> dispatch_core::Result<()> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        if let Reply::Failed(error) = reply
            && matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
        {
            eprintln!("{:?} failed: {error}", call.kind);
            self.transient.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The `p`th percentile of sorted `samples`.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The starvation of the issue: the application runs write transactions back to back, each held
/// ~500 ms, while a worker runs the jobs they enqueue. On the store's writer the worker's calls
/// take their turn: every job runs, and no claim, finish or heartbeat times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_writer_transactions_do_not_starve_the_worker() {
    const TRANSACTIONS: u32 = 6;
    const JOBS_PER_TRANSACTION: u32 = 5;
    const HOLD: Duration = Duration::from_millis(500);
    // Shorter than the worker's own store timeout, so a starved call is answered (and counted)
    // as a timeout by the store rather than abandoned by the worker.
    let store = fresh_store_with_call_timeout(Duration::from_secs(3)).await;
    let watched = Arc::new(Intercepted::new(Arc::new(store.clone()), Watch::default()));

    let started: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let on_start = started.clone();
    let ship = JobDefinition::new("ship_order", move |_ctx: JobContext, order: u32| {
        let on_start = on_start.clone();
        async move {
            on_start.lock().insert(order, Instant::now());
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        }
    });
    let worker = Worker::builder(watched.clone())
        .register(ship.clone())
        .configure(|c| {
            c.heartbeat_interval = Duration::from_millis(200);
            c.lease_ttl = Duration::from_secs(10);
            c.store_timeout = Duration::from_secs(5);
        })
        .build()
        .expect("worker")
        .start();

    store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::query("CREATE TABLE orders (n INTEGER)")
                    .execute(tx.conn())
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?;
                Ok::<_, Error>(())
            })
        })
        .await
        .expect("create the application's table");

    let mut committed: HashMap<u32, Instant> = HashMap::new();
    for t in 0..TRANSACTIONS {
        let orders: Vec<u32> = (0..JOBS_PER_TRANSACTION).map(|j| t * 100 + j).collect();
        let jobs = orders
            .iter()
            .map(|order| ship.new_job(order, EnqueueOptions::default()).expect("new job"))
            .collect::<Vec<_>>();
        store
            .transaction(|tx| {
                Box::pin(async move {
                    for order in 0..JOBS_PER_TRANSACTION {
                        sqlx::query("INSERT INTO orders (n) VALUES (?)")
                            .bind(t * 100 + order)
                            .execute(tx.conn())
                            .await
                            .map_err(|e| Error::internal(e.to_string()))?;
                    }
                    tx.enqueue_jobs(jobs).await?;
                    // The application's own work inside its transaction.
                    tokio::time::sleep(HOLD).await;
                    Ok::<_, Error>(())
                })
            })
            .await
            .expect("the application's transaction");
        let now = Instant::now();
        committed.extend(orders.iter().map(|&order| (order, now)));
    }

    let total = (TRANSACTIONS * JOBS_PER_TRANSACTION) as usize;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let counts = store.count_jobs().await.expect("count_jobs");
        let completed: u64 =
            counts.iter().filter(|c| c.state == JobState::Completed).map(|c| c.count).sum();
        if completed == total as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "{completed} of {total} jobs completed: {counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;

    let started = started.lock().clone();
    let mut waits: Vec<Duration> = committed
        .iter()
        .map(|(order, at)| started.get(order).expect("every job started").duration_since(*at))
        .collect();
    waits.sort();
    let watch = watched.interceptor();
    println!(
        "commit-to-start over {total} jobs in {TRANSACTIONS} transactions held {HOLD:?} each: \
         p50 {:?}, p99 {:?}, max {:?}; worker calls {:?}",
        percentile(&waits, 50.0),
        percentile(&waits, 99.0),
        waits[waits.len() - 1],
        watch.by_kind.lock(),
    );
    assert_eq!(watch.transient.load(Ordering::SeqCst), 0, "worker calls timed out or found busy");
    assert_eq!(
        watch.begun.load(Ordering::SeqCst),
        watch.answered.load(Ordering::SeqCst),
        "worker calls abandoned unanswered (the worker's own timeout)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exists_exactly_when_its_transaction_commits() {
    let (store, mut app) = store_and_app_connection().await;

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
    let (store, mut app) = store_and_app_connection().await;
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
