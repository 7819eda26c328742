//! Retention on SQLite beyond the conformance suite: that a prune removes every old job of a
//! large table and that freed pages are reused rather than grown over, with what a pass costs
//! (printed). The table holds `DISPATCH_PRUNE_BENCH_JOBS` jobs (default 5,000, small enough
//! for every test run; measure with 200,000):
//!
//! `DISPATCH_PRUNE_BENCH_JOBS=200000 cargo test -p dispatch-store-sqlite --test it -- \
//! retention --nocapture`

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    DEFAULT_LEADERSHIP, JobId, JobStore, LeadershipStore, ManualClock, NewJob, NewRun, PruneReport,
    RetentionPolicy, RetentionStore, RunId, Scope, Timestamp, WorkerId, WorkflowStore,
};
use dispatch_store_sqlite::SqliteStore;
use tokio::time::Instant;

use dispatch_core::Clock as _;

const HOUR: Duration = Duration::from_secs(3600);
const BATCH: usize = 1000;

/// How many completed jobs the measurements fill the table with.
fn jobs() -> i64 {
    std::env::var("DISPATCH_PRUNE_BENCH_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(5_000)
}

async fn store() -> (SqliteStore, Arc<ManualClock>, String) {
    let dir = std::env::temp_dir().join("dispatch-sqlite-retention");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", RunId::new())).display().to_string();
    let clock = Arc::new(ManualClock::fixed());
    let store = SqliteStore::open(&path).await.expect("open").with_clock(clock.clone());
    (store, clock, path)
}

/// A run started on `store`; its drive job's ID.
async fn start_run(store: &SqliteStore) -> JobId {
    let run = NewRun {
        id: RunId::new(),
        name: "wf".into(),
        version: 1,
        input: b"{}".to_vec(),
        scope: Scope::default(),
        idempotency_key: None,
        parent: None,
    };
    let drive = NewJob::new("drive", run.id.to_string().into_bytes());
    let drive_job = drive.id;
    store.start_run(run, drive).await.expect("start_run");
    drive_job
}

/// The `drives_run` mark of job `id` (which keeps it out of the finished-jobs index).
async fn mark(store: &SqliteStore, id: JobId) -> Option<i64> {
    store
        .transaction(move |tx| {
            Box::pin(async move {
                let mark = sqlx::query_scalar("SELECT drives_run FROM jobs WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_one(tx.conn())
                    .await?;
                Ok::<_, BoxError>(mark)
            })
        })
        .await
        .expect("read the mark")
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A run's drive job is marked as it is inserted, a plain job is not; and migration 0008 marks
/// the drive jobs of runs stored before it (here: a database taken back to version 7).
#[tokio::test]
async fn drive_jobs_are_marked_now_and_by_the_migration() {
    let (store, _clock, _path) = store().await;
    let drive_job = start_run(&store).await;
    let plain = NewJob::new("plain", vec![]);
    let plain_id = plain.id;
    store.enqueue(vec![plain]).await.expect("enqueue");
    assert_eq!(mark(&store, drive_job).await, Some(1));
    assert_eq!(mark(&store, plain_id).await, None);

    store
        .transaction(|tx| {
            Box::pin(async move {
                sqlx::raw_sql(
                    "DROP INDEX jobs_finished; DROP INDEX runs_ended; DROP INDEX dlq_failed; \
                     DROP INDEX workers_gone; DROP TRIGGER runs_mark_drive_job; \
                     ALTER TABLE jobs DROP COLUMN drives_run; \
                     DELETE FROM dispatch_migrations WHERE version = 8",
                )
                .execute(tx.conn())
                .await?;
                Ok::<_, BoxError>(())
            })
        })
        .await
        .expect("back to version 7");
    store.migrate().await.expect("migrate");
    assert_eq!(mark(&store, drive_job).await, Some(1), "the migration marks it");
    assert_eq!(mark(&store, plain_id).await, None);
}

/// Insert `n` completed jobs (200-byte payloads) finished one millisecond apart from `from`,
/// straight into the table (the enqueue-claim-finish path would take minutes in a debug build).
/// Their IDs grow with their finish when `ordered` (as UUIDv7 IDs roughly do), else are random.
async fn fill_completed(store: &SqliteStore, n: i64, from: Timestamp, ordered: bool) {
    for chunk in 0..(n + 49_999) / 50_000 {
        let first = chunk * 50_000;
        let count = (n - first).min(50_000);
        let start = from.as_unix_micros() + first * 1000;
        // Safe: one of two fixed expressions; values are bound.
        let id = if ordered { "printf('job_%016x', ?2 + n * 1000)" } else { "'job_'" };
        let sql = sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?1) \
             INSERT INTO jobs (id, name, queue, payload, priority, state, attempt, \
             max_attempts, run_at, created_at, finished_at) \
             SELECT {id} || lower(hex(randomblob(16))), 'bulk', 'default', randomblob(200), 0, \
             'completed', 1, 3, ?2 + n * 1000, ?2 + n * 1000, ?2 + n * 1000 FROM i"
        ));
        store
            .transaction(move |tx| {
                Box::pin(async move {
                    sqlx::query(sql).bind(count).bind(start).execute(tx.conn()).await?;
                    Ok::<_, BoxError>(())
                })
            })
            .await
            .expect("fill");
    }
}

/// `PRAGMA page_count` and `freelist_count` of the store's file, read on a connection of the
/// test's own.
async fn pages(path: &str) -> (i64, i64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{path}")).await.expect("conn");
    let total = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut conn).await.expect("pages");
    let free =
        sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut conn).await.expect("free");
    (total, free)
}

async fn prune(store: &SqliteStore, limit: usize) -> PruneReport {
    let term = store.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    store.prune(&term.expect("term"), &RetentionPolicy::default(), limit).await.expect("prune")
}

/// The mean cost of a pass that finds nothing to remove (taking the leadership included).
async fn timed_idle_pass(store: &SqliteStore) -> Duration {
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(prune(store, BATCH).await.total(), 0);
    }
    started.elapsed() / 100
}

/// The prune rate over many completed jobs with time-ordered IDs (as UUIDv7 IDs are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_rate_over_completed_jobs() {
    measure(true).await;
}

/// The same with random IDs: every delete touches a random page of the ID index, so a batch
/// writes many more pages (correct, only slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_rate_over_completed_jobs_with_random_ids() {
    measure(false).await;
}

/// The prune rate over many completed jobs, a pass's cost when none is old enough (it must
/// not grow with the table), and the file after: freed pages are reused by the next fill, so the
/// file does not grow again.
async fn measure(ordered: bool) {
    println!("IDs {}:", if ordered { "time-ordered" } else { "random" });
    let jobs = jobs();
    let (store, clock, path) = store().await;
    let empty = timed_idle_pass(&store).await;
    fill_completed(&store, jobs, clock.now(), ordered).await;
    clock.advance(HOUR);
    // The first write after the fill waits for the WAL checkpoint of the fill: not measured.
    assert_eq!(prune(&store, BATCH).await.total(), 0);
    let full = timed_idle_pass(&store).await;
    println!(
        "idle pass (nothing old enough): {empty:?} on an empty store, {full:?} at {jobs} jobs"
    );
    let (filled_pages, _) = pages(&path).await;

    clock.advance(48 * HOUR);
    let (mut removed, mut calls, mut slowest) = (0, 0u32, Duration::ZERO);
    let started = Instant::now();
    loop {
        let call = Instant::now();
        let report = prune(&store, BATCH).await;
        slowest = slowest.max(call.elapsed());
        if report.total() == 0 {
            break;
        }
        removed += report.jobs;
        calls += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(removed, jobs as u64);
    let rate = removed as f64 / elapsed.as_secs_f64();
    let mean = elapsed / calls;
    println!(
        "pruned {removed} jobs in {calls} calls of {BATCH}: {elapsed:?}, {rate:.0} jobs/s, \
         mean call {mean:?}, slowest call {slowest:?}"
    );
    let (pages_after, free_after) = pages(&path).await;
    println!("pages: {filled_pages} filled, {pages_after} after the prune ({free_after} free)");

    fill_completed(&store, jobs, clock.now(), ordered).await;
    let (refilled, free) = pages(&path).await;
    println!("pages after filling again: {refilled} ({free} free)");
    assert!(refilled <= pages_after + pages_after / 10, "freed pages are reused");
}
