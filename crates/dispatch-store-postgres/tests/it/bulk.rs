//! Bulk leader and operator work at scale, beyond the conformance suite's sizes: a bulk DLQ
//! replay of many entries in batches of `DLQ_BATCH`, and cron fires of many due entries in
//! batches of 500. Each asserts that every item is handled exactly once and prints its rate
//! (speed is judged by `cargo xtask bench`, never asserted). Sizes default to what a test run
//! affords; `DISPATCH_DLQ_BENCH_ENTRIES` (100,000 for the bench's size) and
//! `DISPATCH_CRON_BENCH_ENTRIES` (10,000) raise them. Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::cron::fire_key;
use dispatch_core::dlq::DLQ_BATCH;
use dispatch_core::{
    CatchUp, CronEntry, CronFire, CronFireOutcome, CronJob, CronStore, DlqFilter, DlqStore,
    LeadershipStore, NewJob, Overlap, ReplayOptions, Scope, Timestamp, UniqueKey, WorkerId,
};
use dispatch_store_postgres::PostgresStore;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("dlq_replay_in_batches_replays_every_entry_once", |url| {
            Box::pin(dlq_replay_in_batches_replays_every_entry_once(url))
        }),
        ("cron_fires_every_due_entry_once_in_batches", |url| {
            Box::pin(cron_fires_every_due_entry_once_in_batches(url))
        }),
    ]
}

/// The size from environment variable `var`, else `default`.
fn size(var: &str, default: i64) -> i64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn store(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(2)
        .build()
        .await
        .expect("store")
}

/// Run `sql` (with `{s}` for the store's schema) on a connection of its own.
async fn run_sql(url: &str, store: &PostgresStore, sql: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await.expect("sql");
}

/// `sql` (with `{s}`), a single count.
async fn count(url: &str, store: &PostgresStore, sql: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let sql = sql.replace("{s}", &format!("\"{}\"", store.schema()));
    sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut conn).await.expect("count")
}

async fn dlq_replay_in_batches_replays_every_entry_once(url: String) {
    let entries = size("DISPATCH_DLQ_BENCH_ENTRIES", 20_000);
    let store = store(&url).await;
    // Entries of two queues written directly (killing jobs one by one would only be slower);
    // the replay takes one queue's.
    run_sql(
        &url,
        &store,
        &format!(
            "INSERT INTO {{s}}.dlq (id, job_id, name, queue, payload, priority, attempts, \
               max_attempts, errors, failed_at) \
             SELECT gen_random_uuid(), gen_random_uuid(), 'import', \
               CASE WHEN g % 10 = 0 THEN 'other' ELSE 'bulk' END, '\\x00', 0, 1, 1, '[]', g \
             FROM generate_series(1, {entries}) g; ANALYZE {{s}}.dlq"
        ),
    )
    .await;
    let wanted = count(&url, &store, "SELECT count(*) FROM {s}.dlq WHERE queue = 'bulk'").await;
    let filter = DlqFilter { queue: Some("bulk".into()), ..DlqFilter::default() };
    let options = ReplayOptions { queue: Some("again".into()), delay: None };
    let started = tokio::time::Instant::now();
    let (mut replayed, mut batches, mut slowest) = (0_i64, 0, Duration::ZERO);
    loop {
        let batch_started = tokio::time::Instant::now();
        let batch = store.replay_dlq_matching(&filter, &options, DLQ_BATCH).await.expect("replay");
        slowest = slowest.max(batch_started.elapsed());
        replayed += i64::try_from(batch.len()).expect("len");
        batches += 1;
        if batch.len() < DLQ_BATCH {
            break;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "replayed {replayed} DLQ entries in {batches} batches: {elapsed:?} ({:.0}/s), slowest \
         batch {slowest:?}",
        replayed as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(replayed, wanted);
    let jobs = count(&url, &store, "SELECT count(*) FROM {s}.jobs WHERE queue = 'again'").await;
    assert_eq!(jobs, wanted, "one job per entry");
    let unreplayed = "SELECT count(*) FROM {s}.dlq WHERE queue = 'bulk' AND replayed_as IS NULL";
    assert_eq!(count(&url, &store, unreplayed).await, 0);
    let mismatched = "SELECT count(*) FROM {s}.dlq d LEFT JOIN {s}.jobs j ON j.id = d.replayed_as \
         WHERE d.queue = 'bulk' AND j.id IS NULL";
    assert_eq!(count(&url, &store, mismatched).await, 0, "every entry names its job");
}

fn entry(name: &str) -> CronEntry {
    CronEntry {
        name: name.to_owned(),
        scope: Scope::default(),
        schedule: "* * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        job: CronJob {
            name: "tick".to_owned(),
            queue: "cron".to_owned(),
            payload: b"{}".to_vec(),
            priority: 0,
            max_attempts: 1,
            timeout: None,
        },
        catch_up: CatchUp::Skip,
        grace: Duration::from_secs(1),
        overlap: Overlap::Skip,
        jitter: Duration::ZERO,
        enabled: true,
    }
}

async fn cron_fires_every_due_entry_once_in_batches(url: String) {
    let entries = size("DISPATCH_CRON_BENCH_ENTRIES", 2_000);
    let store = store(&url).await;
    let at = Timestamp::from_unix_micros(1_000_000);
    // One entry saved, the rest copies of it under other names and IDs, all due at `at`.
    store.save_cron(entry("e0"), Some(at)).await.expect("save");
    run_sql(
        &url,
        &store,
        &format!(
            "INSERT INTO {{s}}.cron_entries (id, name, entry, enabled, next_fire, created_at, \
               updated_at) \
             SELECT gen_random_uuid(), 'e' || g, jsonb_set(c.entry, ARRAY['name'], \
               to_jsonb('e' || g)), true, c.next_fire, c.created_at, c.updated_at \
             FROM {{s}}.cron_entries c, generate_series(1, {entries} - 1) g; \
             ANALYZE {{s}}.cron_entries"
        ),
    )
    .await;
    let term = store
        .acquire_leadership("cron", WorkerId::new(), Duration::from_secs(600))
        .await
        .expect("acquire")
        .expect("free");
    let next = Timestamp::from_unix_micros(i64::MAX / 2);
    let started = tokio::time::Instant::now();
    let (mut fired, mut batches, mut slowest) = (0_i64, 0, Duration::ZERO);
    loop {
        let due = store.due_cron(500).await.expect("due");
        if due.entries.is_empty() {
            break;
        }
        let fires: Vec<CronFire> = due
            .entries
            .iter()
            .map(|record| {
                let mut job = NewJob::new(&record.entry.job.name, record.entry.job.payload.clone());
                job.queue = record.entry.job.queue.clone();
                job.unique = Some(UniqueKey { key: fire_key(record.id, at), window: None });
                CronFire {
                    id: record.id,
                    expected_next: at,
                    jobs: vec![job],
                    fired: Some(at),
                    next_fire: Some(next),
                    skip_if_running: true,
                }
            })
            .collect();
        let batch_started = tokio::time::Instant::now();
        let outcomes = store.fire_cron(&term, fires).await.expect("fire");
        slowest = slowest.max(batch_started.elapsed());
        batches += 1;
        for outcome in outcomes {
            assert!(
                matches!(&outcome, CronFireOutcome::Fired(jobs) if jobs.len() == 1),
                "{outcome:?}"
            );
            fired += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "fired {fired} cron entries in {batches} batches: {elapsed:?} ({:.0}/s), slowest fire \
         {slowest:?}",
        fired as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(fired, entries);
    assert_eq!(
        count(&url, &store, "SELECT count(*) FROM {s}.jobs WHERE queue = 'cron'").await,
        entries
    );
    let advanced = "SELECT count(*) FROM {s}.cron_entries c JOIN {s}.jobs j ON j.id = c.last_job \
         WHERE c.next_fire = 4611686018427387903 AND c.last_fired = 1000000";
    assert_eq!(count(&url, &store, advanced).await, entries, "every entry advanced to its job");
}
