//! PostgreSQL under churn: `prune-1m` (the leader's prune loop over a million old completed jobs,
//! beside a million young ones it must not scan) and `dead-tuples` (a drain on a clean table,
//! then again while an idle transaction pins the xmin horizon over a million dead rows).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use dispatch::PostgresStore;
use dispatch::core::{
    ClaimRequest, ClusterStore, DEFAULT_LEADERSHIP, LeaseToken, RetentionPolicy, RetentionStore,
    WorkerId, WorkflowStore,
};
use dispatch::job::{JobClient, JobContext, JobDefinition, Worker};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::time::Instant;

use crate::counting::FinishCounter;
use crate::scenario::{drop_schema, option, postgres_url};
use crate::{Measurement, Options};

/// Whether `scenario` is one of this module's.
pub fn handles(scenario: &str) -> bool {
    matches!(scenario, "prune-1m" | "dead-tuples")
}

/// Run `scenario` on a fresh PostgreSQL schema, dropped afterwards.
pub async fn run(scenario: &str, options: &Options) -> anyhow::Result<Measurement> {
    let fresh = dispatch::core::JobId::new().uuid().simple().to_string();
    let schema = format!("dispatch_bench_{}", &fresh[fresh.len() - 12..]);
    let store = PostgresStore::builder(postgres_url())
        .schema(schema.clone())
        .application_name("dispatch-bench")
        .build()
        .await?;
    let result = match scenario {
        "prune-1m" => {
            let batch = option(options, "batch", 1000)?;
            prune(&store, option(options, "jobs", 1_000_000)?, batch).await
        }
        _ => {
            dead_tuples(
                &store,
                option(options, "jobs", 20_000)?,
                option(options, "dead", 1_000_000)?,
            )
            .await
        }
    };
    drop(store);
    drop_schema(&schema).await?;
    let mut m = result?;
    m.store = "postgres".to_owned();
    Ok(m)
}

/// A raw session on the bench's server, outside the store.
async fn session() -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&postgres_url()).await?)
}

/// Run `sql` (the schema already substituted for `{s}`) on `conn`.
async fn exec(conn: &mut PgConnection, store: &PostgresStore, sql: &str) -> anyhow::Result<u64> {
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    let done = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// `n` jobs of `noop` in queue `default` inserted in one statement, bypassing enqueue: `state`,
/// finished `finished_ago_s` seconds ago (one microsecond apart), due now.
fn insert_jobs(n: usize, state: &str, finished_ago_s: i64) -> String {
    let finished = if state == "available" {
        "NULL".to_owned()
    } else {
        format!("n.now - {finished_ago_s}000000 + g")
    };
    format!(
        "INSERT INTO {{s}}.jobs (id, name, queue, payload, priority, state, attempt, max_attempts, \
           run_at, created_at, finished_at) \
         SELECT gen_random_uuid(), 'noop', 'default', '\\x'::bytea, 0, '{state}', 1, 3, \
           n.now - 1000000, n.now - 1000000, {finished} \
         FROM (SELECT (extract(epoch from now()) * 1000000)::bigint AS now) n, \
           generate_series(1, {n}) g"
    )
}

/// `prune-1m`: `jobs` completed jobs two days old and as many completed an hour ago, then the
/// leader's prune loop (default policy, `batch` per call) until a call removes nothing. Reports
/// rows/s (`jobs_per_sec`), the median and longest call (`p50_us`, `max_us`: the longest
/// transaction, so the longest any row or the leadership row stays locked) and the dead tuples
/// left; on stderr, the most lock waits seen at once (`pg_locks`, sampled every 10 ms) and the
/// time of a call that finds only young jobs.
async fn prune(store: &PostgresStore, jobs: usize, batch: usize) -> anyhow::Result<Measurement> {
    let mut conn = session().await?;
    let loaded = Instant::now();
    exec(&mut conn, store, &insert_jobs(jobs, "completed", 3_600)).await?;
    exec(&mut conn, store, "VACUUM ANALYZE {s}.jobs").await?;
    let store = Arc::new(store.clone());
    let cluster: Arc<dyn ClusterStore> = store.clone();
    let hour = Duration::from_secs(3600);
    let term = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), hour).await?;
    let retention: Arc<dyn RetentionStore> = store.clone();
    let policy = RetentionPolicy::default();
    let call = Instant::now();
    let report = retention.prune(&term, &policy, batch).await?;
    anyhow::ensure!(report.total() == 0, "pruned young jobs: {report:?}");
    eprintln!("a call finding only {jobs} young jobs (vacuumed): {:?}", call.elapsed());
    exec(&mut conn, store.as_ref(), &insert_jobs(jobs, "completed", 2 * 86_400)).await?;
    exec(&mut conn, store.as_ref(), "VACUUM ANALYZE {s}.jobs").await?;
    eprintln!("loaded {} jobs in {:?}", 2 * jobs, loaded.elapsed());

    let waits = Arc::new(AtomicI64::new(0));
    let sampler = tokio::spawn(sample_lock_waits(waits.clone()));
    let mut calls = Vec::new();
    let mut removed = 0;
    let start = Instant::now();
    loop {
        let call = Instant::now();
        let report = retention.prune(&term, &policy, batch).await?;
        calls.push(call.elapsed());
        removed += report.jobs;
        if report.total() == 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    sampler.abort();
    let young = calls.pop().unwrap_or_default();
    anyhow::ensure!(removed == jobs as u64, "pruned {removed} of {jobs}");
    eprintln!(
        "pruned {removed} in {} calls, {elapsed:?}; the last call, over the dead entries of the pruned rows: \
         {young:?}; most lock waits seen at once: {}",
        calls.len(),
        waits.load(Ordering::Relaxed)
    );
    calls.sort();
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    Ok(Measurement {
        scenario: format!("prune-{jobs}-b{batch}"),
        jobs_per_sec: Some(removed as f64 / elapsed.as_secs_f64()),
        p50_us: calls.get(calls.len() / 2).copied().map(micros),
        max_us: calls.last().copied().map(micros),
        dead_tuples: dead_tuples_of(store.schema()).await?,
        ..Default::default()
    })
}

/// The most ungranted locks seen in `pg_locks`, sampled every 10 ms, into `most`.
async fn sample_lock_waits(most: Arc<AtomicI64>) -> anyhow::Result<()> {
    let mut conn = session().await?;
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .fetch_one(&mut conn)
            .await?;
        most.fetch_max(waiting, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n_dead_tup` of the schema's jobs table, once backends have flushed their statistics.
async fn dead_tuples_of(schema: &str) -> anyhow::Result<Option<i64>> {
    // Backends flush table statistics about once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = session().await?;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT n_dead_tup, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'jobs'",
    )
    .bind(schema)
    .fetch_optional(&mut conn)
    .await?;
    if let Some((_, updates, hot)) = row {
        eprintln!("jobs: {updates} updates, {hot} of them HOT");
    }
    Ok(row.map(|(dead, _, _)| dead))
}

/// `dead-tuples`: drain `jobs` on a clean table; then open an idle transaction that has taken
/// a transaction ID (it pins the xmin horizon: nothing deleted after it can be vacuumed), insert
/// `dead` due jobs of the drained name and delete them, and drain `jobs` again. Reports the
/// second drain's rate (`jobs_per_sec`) and, on stderr, both rates and the claim's
/// `EXPLAIN (ANALYZE, BUFFERS)` before each drain.
async fn dead_tuples(
    store: &PostgresStore,
    jobs: usize,
    dead: usize,
) -> anyhow::Result<Measurement> {
    let clean = drain(store, jobs, "clean").await?;
    dead_tuples_of(store.schema()).await?;
    let mut idle = session().await?;
    exec(&mut idle, store, "BEGIN; SELECT txid_current()").await?;
    let mut conn = session().await?;
    exec(&mut conn, store, &insert_jobs(dead, "available", 0)).await?;
    exec(&mut conn, store, "DELETE FROM {s}.jobs WHERE state = 'available'").await?;
    exec(&mut conn, store, "ANALYZE {s}.jobs").await?;
    let pinned = drain(store, jobs, "pinned").await?;
    let dead_tuples = dead_tuples_of(store.schema()).await?;
    exec(&mut idle, store, "ROLLBACK").await?;
    let ratio = pinned / clean;
    eprintln!(
        "drain of {jobs}: {clean:.0} jobs/s clean, {pinned:.0} jobs/s with the horizon pinned \
         over {dead} dead rows ({:.0} % of clean)",
        ratio * 100.0
    );
    Ok(Measurement {
        scenario: format!("dead-tuples-{jobs}-dead{dead}"),
        jobs_per_sec: Some(pinned),
        p50_us: None,
        dead_tuples,
        ..Default::default()
    })
}

/// Enqueue `jobs` noop jobs, print the claim's plan (`label`), drain them with concurrency 16;
/// the rate in jobs/s.
async fn drain(store: &PostgresStore, jobs: usize, label: &str) -> anyhow::Result<f64> {
    let def = JobDefinition::new("noop", |_ctx: JobContext, _: u64| async { Ok(()) });
    let shared: Arc<dyn WorkflowStore> = Arc::new(store.clone());
    let client = JobClient::standalone(shared.clone());
    for chunk in (0..jobs as u64).collect::<Vec<_>>().chunks(1000) {
        client.enqueue_many(&def, chunk.iter().copied()).await?;
    }
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".to_owned()],
        names: vec!["noop".to_owned()],
        limit: 16,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let plan = store.explain_claim(&request).await?;
    eprintln!("claim plan ({label}): {}", summarize_plan(&plan));
    eprintln!("{plan}");
    let counter = FinishCounter::wrap(shared, jobs);
    let worker = Worker::builder(counter.clone()).register(def).concurrency(16).build()?;
    let start = Instant::now();
    let handle = worker.start();
    // A drain slowed by dead entries is measured over at most two minutes, by the jobs claimed.
    let finished = tokio::time::timeout(Duration::from_secs(120), counter.interceptor().wait());
    let done = match finished.await {
        Ok(()) => jobs,
        Err(_) => counter.interceptor().claimed.load(Ordering::Relaxed),
    };
    let rate = done as f64 / start.elapsed().as_secs_f64();
    eprintln!("drain ({label}): {done} of {jobs} jobs in {:?}, {rate:.0} jobs/s", start.elapsed());
    handle.stop().await;
    Ok(rate)
}

/// Execution time and buffers of an `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` document.
fn summarize_plan(plan: &str) -> String {
    let parsed: serde_json::Value = serde_json::from_str(plan).unwrap_or_default();
    let top = &parsed[0];
    format!(
        "execution {} ms, shared hit {} read {} blocks",
        top["Execution Time"], top["Plan"]["Shared Hit Blocks"], top["Plan"]["Shared Read Blocks"]
    )
}
