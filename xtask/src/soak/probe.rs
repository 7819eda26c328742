//! What a sample measures: the worker's claim calls timed by an [`Interceptor`], the size of
//! each store's jobs (PostgreSQL: the table, its indexes and dead tuples; SQLite: the file's
//! pages; Redis: the job hashes' memory), and this process's resident memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use dispatch::core::{Call, CallKind, Interceptor, Reply, Result};
use dispatch::redis::redis;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sqlx::Connection;
use tokio::time::Instant;

/// Times every claim call; [`take`](Self::take) hands out one window's timings.
#[derive(Default)]
pub(crate) struct ClaimTimer {
    /// Start times of the claims in flight, oldest first (a worker has one fetch loop, so there
    /// is one at a time; the queue keeps the pairing right if there were more).
    started: Mutex<VecDeque<Instant>>,
    /// Answered claims' times in this window, in microseconds.
    window: Mutex<Vec<u64>>,
    /// Claims that failed in this window.
    errors: AtomicU64,
}

impl ClaimTimer {
    /// This window's claims as `claims`, `claim_errors`, `claim_p50_us`, `claim_p99_us`; a new
    /// window starts.
    pub(crate) fn take(&self, into: &mut Map<String, Value>) {
        let mut times = std::mem::take(&mut *self.window.lock());
        times.sort_unstable();
        let at = |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).copied();
        into.insert("claims".into(), json!(times.len()));
        into.insert("claim_errors".into(), json!(self.errors.swap(0, Ordering::Relaxed)));
        into.insert("claim_p50_us".into(), json!(at(0.50)));
        into.insert("claim_p99_us".into(), json!(at(0.99)));
    }
}

#[async_trait]
impl Interceptor for ClaimTimer {
    async fn before(&self, call: Call) -> Result<()> {
        if call.kind == CallKind::Claim {
            self.started.lock().push_back(Instant::now());
        }
        Ok(())
    }

    async fn after(&self, call: Call, reply: Reply<'_>) -> Result<()> {
        if call.kind != CallKind::Claim {
            return Ok(());
        }
        let Some(started) = self.started.lock().pop_front() else { return Ok(()) };
        match reply {
            Reply::Failed(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.window.lock().push(started.elapsed().as_micros() as u64),
        }
        Ok(())
    }
}

/// The PostgreSQL schema's jobs table: `jobs_bytes` (table, TOAST and indexes),
/// `table_bytes`, `index_bytes`, `dead_tuples`, `autovacuums`, and `schema_bytes` (every table
/// of the schema, runs and checkpoints included). A fresh connection each time, so a sample
/// after the server's restart needs nothing to recover.
pub(crate) async fn postgres(
    url: &str,
    schema: &str,
    into: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size(s.relid), pg_relation_size(s.relid), \
                pg_indexes_size(s.relid), s.n_dead_tup, s.autovacuum_count \
         FROM pg_stat_user_tables s WHERE s.schemaname = $1 AND s.relname = 'jobs'",
    )
    .bind(schema)
    .fetch_one(&mut conn)
    .await?;
    let schema_bytes: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint \
         FROM pg_stat_user_tables WHERE schemaname = $1",
    )
    .bind(schema)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let (jobs, table, indexes, dead, autovacuums) = row;
    into.insert("jobs_bytes".into(), json!(jobs));
    into.insert("table_bytes".into(), json!(table));
    into.insert("index_bytes".into(), json!(indexes));
    into.insert("dead_tuples".into(), json!(dead));
    into.insert("autovacuums".into(), json!(autovacuums));
    into.insert("schema_bytes".into(), json!(schema_bytes));
    Ok(())
}

/// The SQLite database: `jobs_bytes` (page_count × page_size: the whole database as its
/// connections see it, WAL included) and `free_pages` (pages a prune freed for reuse).
pub(crate) async fn sqlite(path: &str, into: &mut Map<String, Value>) -> anyhow::Result<()> {
    let url = format!("sqlite://{path}?mode=ro");
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut conn).await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut conn).await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut conn).await?;
    conn.close().await?;
    into.insert("jobs_bytes".into(), json!(pages * size));
    into.insert("free_pages".into(), json!(free));
    Ok(())
}

/// The Redis prefix: `jobs_bytes` (the job hashes' `MEMORY USAGE`, summed), `job_keys`,
/// `keys` (every key under the prefix) and the server's `used_memory` (shared with whatever
/// else the server holds).
pub(crate) async fn redis(
    url: &str,
    prefix: &str,
    into: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, mut batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        keys.append(&mut batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let job_keys: Vec<&String> =
        keys.iter().filter(|k| k.starts_with(&format!("{{{prefix}}}:job:"))).collect();
    let mut bytes: i64 = 0;
    for chunk in job_keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(key.as_str());
        }
        // A key pruned between the scan and this answers nil.
        let sizes: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        bytes += sizes.into_iter().flatten().sum::<i64>();
    }
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    let used: Option<u64> = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok());
    into.insert("jobs_bytes".into(), json!(bytes));
    into.insert("job_keys".into(), json!(job_keys.len()));
    into.insert("keys".into(), json!(keys.len()));
    into.insert("used_memory".into(), json!(used));
    Ok(())
}

/// Delete every key under a Redis prefix (the soak's own, at the end).
pub(crate) async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// This process's resident memory (VmRSS), in KiB.
pub(crate) fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/self/status has no VmRSS")
}
