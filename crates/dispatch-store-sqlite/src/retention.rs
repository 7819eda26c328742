//! [`RetentionStore`] for [`SqliteStore`]: pruning by the rules of [`dispatch_core::retention`],
//! under the leader's term, as the memory store (the reference) does.
//!
//! One call is one `BEGIN IMMEDIATE` transaction on the writer, fenced as the worker sweep is
//! (the leadership row checked and the write recorded, action `prune`, before anything is
//! removed), that removes at most `limit` rows of each kind. SQLite has one writer, so the call
//! holds every claim and finish back while it runs: the caller keeps `limit` small and calls
//! again while the report says `more`. Measured on 200,000 completed jobs (tests/it/retention.rs):
//! a call of 1,000 took about 10 ms with optimized SQLite and IDs that grow with time (UUIDv7),
//! and five to eight times that with random IDs, whose deletes each touch a random page of the
//! ID index.
//!
//! Every kind is read oldest first through an index holding only what could be pruned
//! (migration 0008), so a pass costs what it removes plus what it must step over, not the size
//! of a table. What it steps over, each pass, are the rows old enough but kept by a rule: jobs
//! still inside a unique key's window and ended runs whose parent is live or whose drive job is
//! due again. Drive jobs of stored runs are not in the finished-jobs index at all (the
//! `drives_run` mark), since every stored run's completed drive job would otherwise be stepped
//! over by every pass. Times are compared as stored; nothing relies on the order of IDs.

use async_trait::async_trait;
use dispatch_core::retention::Cutoffs;
use dispatch_core::{JobState, Leader, PruneReport, Result, RetentionPolicy, RetentionStore};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::cluster::{fence, json};
use crate::error::db_error;
use crate::row::sql_limit;

/// Finished jobs of one state (`?1`) at or before their cutoff (`?2`), outside their unique
/// key's window at `?3` and driving no stored run, oldest finish first, at most `?4`. The state
/// list and `drives_run IS NULL` repeat the index's own condition, which SQLite needs to see
/// word for word before it uses a partial index.
const PRUNE_JOBS: &str = "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs \
     WHERE state IN ('completed', 'cancelled', 'dead') AND drives_run IS NULL \
     AND state = ?1 AND finished_at <= ?2 \
     AND (unique_until IS NULL OR unique_until <= ?3) \
     AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.drive_job = jobs.id) \
     ORDER BY finished_at, seq LIMIT +?4)";

/// Ended runs at or before the cutoff (`?1`) whose parent has not stayed live and whose drive
/// job is not due again, oldest end first, at most `?2`. Named index: without statistics
/// SQLite prefers the state index, which needs a sort of every ended run.
const ENDED_RUNS: &str = "SELECT r.id, r.drive_job FROM runs AS r INDEXED BY runs_ended \
     WHERE r.state IN ('completed', 'failed', 'cancelled') AND r.finished_at <= ?1 \
     AND NOT EXISTS (SELECT 1 FROM runs AS p \
         WHERE p.id = r.parent AND p.state IN ('running', 'suspended')) \
     AND NOT EXISTS (SELECT 1 FROM jobs AS j \
         WHERE j.id = r.drive_job AND j.state IN ('available', 'running')) \
     ORDER BY r.finished_at, r.id LIMIT +?2";

/// DLQ entries that died at or before `?1`, oldest first, at most `?2`.
const PRUNE_DLQ: &str = "DELETE FROM dlq WHERE id IN (SELECT id FROM dlq \
     WHERE failed_at <= ?1 ORDER BY failed_at, id LIMIT +?2)";

/// Kept events whose keep-until is at or before `?1`, oldest first, at most `?2`.
const PRUNE_EVENTS: &str = "DELETE FROM kept_events WHERE seq IN (SELECT seq FROM kept_events \
     WHERE keep_until <= ?1 ORDER BY keep_until, seq LIMIT +?2)";

/// Gone workers last seen at or before `?1`, oldest first, at most `?2`.
const PRUNE_WORKERS: &str = "DELETE FROM workers WHERE id IN (SELECT id FROM workers \
     WHERE state = 'gone' AND last_seen <= ?1 ORDER BY last_seen, id LIMIT +?2)";

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport> {
        let (term, policy) = (term.clone(), policy.clone());
        self.write_now("prune", move |conn, now| {
            Box::pin(async move {
                fence(conn, &term, "prune", now).await?;
                prune_all(conn, &policy.cutoffs(now), limit).await
            })
        })
        .await
    }
}

/// Every kind, each up to `limit`, in the caller's (fenced) transaction. Runs go first, so a
/// run's drive job is counted with its run.
async fn prune_all(
    conn: &mut SqliteConnection,
    cutoffs: &Cutoffs,
    limit: usize,
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    prune_runs(conn, cutoffs, limit, &mut report).await?;
    prune_jobs(conn, cutoffs, limit, &mut report).await?;
    if let Some(cutoff) = cutoffs.dead {
        report.dlq = delete_old(conn, PRUNE_DLQ, cutoff.as_unix_micros(), limit).await?;
        report.more |= reached(report.dlq, limit);
    }
    let now = cutoffs.now.as_unix_micros();
    report.events = delete_old(conn, PRUNE_EVENTS, now, limit).await?;
    report.more |= reached(report.events, limit);
    if let Some(cutoff) = cutoffs.gone_workers {
        report.workers = delete_old(conn, PRUNE_WORKERS, cutoff.as_unix_micros(), limit).await?;
        report.more |= reached(report.workers, limit);
    }
    Ok(report)
}

/// Whether a kind's `removed` count reached the call's `limit` (so more may be left).
fn reached(removed: u64, limit: usize) -> bool {
    usize::try_from(removed).is_ok_and(|removed| removed >= limit)
}

/// Run one of the bounded `DELETE`s above with its cutoff and limit; the rows it removed.
async fn delete_old(
    conn: &mut SqliteConnection,
    sql: &'static str,
    cutoff: i64,
    limit: usize,
) -> Result<u64> {
    let done = sqlx::query(sql)
        .bind(cutoff)
        .bind(sql_limit(limit))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected())
}

/// Completed, cancelled and dead jobs old enough, at most `limit` of them together, one state
/// after the other (each oldest first).
async fn prune_jobs(
    conn: &mut SqliteConnection,
    cutoffs: &Cutoffs,
    limit: usize,
    report: &mut PruneReport,
) -> Result<()> {
    let mut removed = 0;
    for state in [JobState::Completed, JobState::Cancelled, JobState::Dead] {
        let Some(cutoff) = cutoffs.for_job_state(state) else { continue };
        let budget = limit.saturating_sub(usize::try_from(removed).unwrap_or(usize::MAX));
        if budget == 0 {
            break;
        }
        let done = sqlx::query(PRUNE_JOBS)
            .bind(state.as_str())
            .bind(cutoff.as_unix_micros())
            .bind(cutoffs.now.as_unix_micros())
            .bind(sql_limit(budget))
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        removed += done.rows_affected();
    }
    report.jobs += removed;
    report.more |= reached(removed, limit);
    Ok(())
}

/// Ended runs old enough, at most `limit`, with their checkpoints, leftover event waits and
/// drive jobs.
async fn prune_runs(
    conn: &mut SqliteConnection,
    cutoffs: &Cutoffs,
    limit: usize,
    report: &mut PruneReport,
) -> Result<()> {
    let Some(cutoff) = cutoffs.runs else { return Ok(()) };
    let rows = sqlx::query(ENDED_RUNS)
        .bind(cutoff.as_unix_micros())
        .bind(sql_limit(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut runs = Vec::with_capacity(rows.len());
    let mut drive_jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        runs.push(row.try_get::<String, _>(0).map_err(db_error)?);
        drive_jobs.push(row.try_get::<String, _>(1).map_err(db_error)?);
    }
    let (runs, drive_jobs) = (json(&runs)?, json(&drive_jobs)?);
    report.checkpoints += delete_in(conn, "checkpoints", "run_id", &runs).await?;
    // A run ends with its waits cleared; this only keeps a leftover from outliving its run.
    delete_in(conn, "event_waits", "run_id", &runs).await?;
    report.jobs += delete_in(conn, "jobs", "id", &drive_jobs).await?;
    report.runs += delete_in(conn, "runs", "id", &runs).await?;
    report.more |= reached(report.runs, limit);
    Ok(())
}

/// Delete the rows of `table` whose `column` is one of the JSON array `values`; how many.
async fn delete_in(
    conn: &mut SqliteConnection,
    table: &'static str,
    column: &'static str,
    values: &str,
) -> Result<u64> {
    // Safe: the table and column are this module's constants; the values are bound.
    let sql = sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))"
    ));
    let done = sqlx::query(sql).bind(values).execute(&mut *conn).await.map_err(db_error)?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of every prune statement, on a freshly migrated store: each reads its own
    /// index (a `SEARCH`), never a whole table (`SCAN`), and needs no sort.
    #[tokio::test]
    async fn every_prune_statement_reads_an_index_without_sorting() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("plans.db").to_str().unwrap()).await.unwrap();
        let expected = [
            (PRUNE_JOBS, "jobs_finished"),
            (ENDED_RUNS, "runs_ended"),
            (PRUNE_DLQ, "dlq_failed"),
            (PRUNE_EVENTS, "kept_events_expiry"),
            (PRUNE_WORKERS, "workers_gone"),
        ];
        let mut conn = store.writer.lock().await;
        for (sql, index) in expected {
            let sql = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
            let rows = sqlx::query(sql).fetch_all(&mut *conn).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
            let plan = plan.join("\n");
            assert!(plan.contains(&format!("INDEX {index}")), "{index}:\n{plan}");
            assert!(!plan.contains("SCAN") && !plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
