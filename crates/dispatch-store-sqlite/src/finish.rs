//! Finishes and rescues: the transitions out of `running`.
//!
//! The outcomes that keep no history (complete, cancel, snooze, release) are written set-based:
//! one `UPDATE … FROM json_each(?)` per kind for the whole batch, each row conditional on its
//! lease token. Outcomes that append to the error history or move a job to the DLQ (retry, fail)
//! load their rows and decide in Rust with [`dispatch_core::transition`], as the memory store
//! does; the set-based statements say the same rules in SQL. A batch that names
//! one job twice is applied item by item, in order, so repeats resolve exactly as sequential calls
//! would.

use std::collections::{HashMap, HashSet};

use dispatch_core::{
    DlqEntry, Finish, FinishResult, Job, JobId, JobState, Outcome, RescueReport, Result, Timestamp,
    transition,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::row::{insert_dlq, job_from_row, load_job, save_job, sql_limit, token_text};
use crate::run::fail_driven_run;

/// Apply `finishes` on `conn` (inside the caller's transaction); one result per item, in order.
pub(crate) async fn finish_batch(
    conn: &mut SqliteConnection,
    finishes: &[Finish],
    now: Timestamp,
) -> Result<Vec<FinishResult>> {
    let mut seen = HashSet::with_capacity(finishes.len());
    if !finishes.iter().all(|f| seen.insert(f.lease.job_id)) {
        let mut results = Vec::with_capacity(finishes.len());
        for finish in finishes {
            results.push(finish_one(conn, finish, now).await?);
        }
        return Ok(results);
    }
    let mut results: Vec<Option<FinishResult>> = vec![None; finishes.len()];
    let mut ends = Vec::new();
    let mut give_backs = Vec::new();
    for (i, finish) in finishes.iter().enumerate() {
        match &finish.outcome {
            Outcome::Complete => ends.push((i, JobState::Completed)),
            Outcome::Cancel => ends.push((i, JobState::Cancelled)),
            Outcome::Snooze { run_at } => give_backs.push((i, run_at.resolve(now))),
            Outcome::Release => give_backs.push((i, now)),
            Outcome::Retry { .. } | Outcome::Fail { .. } => {
                results[i] = Some(finish_one(conn, finish, now).await?);
            }
        }
    }
    end_all(conn, finishes, ends, now, &mut results).await?;
    give_back_all(conn, finishes, give_backs, now, &mut results).await?;
    settle_unapplied(conn, finishes, &mut results).await?;
    Ok(results.into_iter().map(|r| r.unwrap_or(FinishResult::LeaseLost)).collect())
}

/// The JSON array of `[id, token, extra]` rows that set-based statements join on.
fn lease_rows<T: serde::Serialize>(
    finishes: &[Finish],
    items: &[(usize, T)],
) -> Result<(String, HashMap<JobId, usize>)> {
    let mut index = HashMap::with_capacity(items.len());
    let rows: Vec<(String, String, &T)> = items
        .iter()
        .map(|(i, extra)| {
            let lease = finishes[*i].lease;
            index.insert(lease.job_id, *i);
            (lease.job_id.to_string(), token_text(lease.token), extra)
        })
        .collect();
    let json = serde_json::to_string(&rows)
        .map_err(|e| dispatch_core::Error::internal(format!("sqlite: {e}")))?;
    Ok((json, index))
}

/// The rows a set-based statement joins on, by job ID and lease token, from its JSON parameter.
/// Statements joining on it write `+jobs.state`: the unary plus keeps SQLite from driving the
/// join from an index that holds only running jobs (the lease index: a scan of every running job
/// per batch item) instead of looking each item up by ID.
const LEASES: &str = "(SELECT json_extract(value, '$[0]') AS id, \
                       json_extract(value, '$[1]') AS token, \
                       json_extract(value, '$[2]') AS extra FROM json_each(?)) AS f";

/// Complete or cancel every item whose lease holds, in one statement.
async fn end_all(
    conn: &mut SqliteConnection,
    finishes: &[Finish],
    items: Vec<(usize, JobState)>,
    now: Timestamp,
    results: &mut [Option<FinishResult>],
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let items: Vec<(usize, &str)> = items.into_iter().map(|(i, s)| (i, s.as_str())).collect();
    let (json, index) = lease_rows(finishes, &items)?;
    let sql = format!(
        "UPDATE jobs SET state = f.extra, finished_at = ?, lease_owner = NULL, \
         lease_token = NULL, lease_expires = NULL, cancel_requested = 0, \
         last_finish_token = f.token FROM {LEASES} \
         WHERE jobs.id = f.id AND +jobs.state = 'running' AND jobs.lease_token = f.token \
         RETURNING jobs.id, jobs.state"
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now.as_unix_micros()).bind(json);
    record_applied(query.fetch_all(&mut *conn).await.map_err(db_error)?, &index, results)
}

/// Snooze or release every item whose lease holds, in one statement: available again at its
/// run-at with the attempt returned, or cancelled when a cancel was requested.
async fn give_back_all(
    conn: &mut SqliteConnection,
    finishes: &[Finish],
    items: Vec<(usize, Timestamp)>,
    now: Timestamp,
    results: &mut [Option<FinishResult>],
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let items: Vec<(usize, i64)> =
        items.into_iter().map(|(i, run_at)| (i, run_at.as_unix_micros())).collect();
    let (json, index) = lease_rows(finishes, &items)?;
    // SET expressions read the row as it was before the update.
    let sql = format!(
        "UPDATE jobs SET \
         state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'available' END, \
         attempt = CASE WHEN cancel_requested THEN attempt ELSE max(attempt - 1, 0) END, \
         run_at = CASE WHEN cancel_requested THEN run_at ELSE f.extra END, \
         finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END, \
         lease_owner = NULL, lease_token = NULL, lease_expires = NULL, cancel_requested = 0, \
         last_finish_token = f.token FROM {LEASES} \
         WHERE jobs.id = f.id AND +jobs.state = 'running' AND jobs.lease_token = f.token \
         RETURNING jobs.id, jobs.state"
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now.as_unix_micros()).bind(json);
    record_applied(query.fetch_all(&mut *conn).await.map_err(db_error)?, &index, results)
}

fn record_applied(
    rows: Vec<sqlx::sqlite::SqliteRow>,
    index: &HashMap<JobId, usize>,
    results: &mut [Option<FinishResult>],
) -> Result<()> {
    for row in rows {
        let id: JobId = row.try_get::<String, _>(0).map_err(db_error)?.parse()?;
        let state: JobState = row.try_get::<String, _>(1).map_err(db_error)?.parse()?;
        if let Some(&i) = index.get(&id) {
            results[i] = Some(FinishResult::Applied { state, dlq_id: None });
        }
    }
    Ok(())
}

/// Tell the items no statement applied apart: a repeat of the last applied finish, or a lease
/// that is no longer held. One query for all of them.
async fn settle_unapplied(
    conn: &mut SqliteConnection,
    finishes: &[Finish],
    results: &mut [Option<FinishResult>],
) -> Result<()> {
    let pending: Vec<usize> = (0..finishes.len()).filter(|&i| results[i].is_none()).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = pending.iter().map(|&i| finishes[i].lease.job_id.to_string()).collect();
    let json = serde_json::to_string(&ids)
        .map_err(|e| dispatch_core::Error::internal(format!("sqlite: {e}")))?;
    let rows = sqlx::query(
        "SELECT id, last_finish_token FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut last = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0).map_err(db_error)?;
        let token: Option<String> = row.try_get(1).map_err(db_error)?;
        last.insert(id, token);
    }
    for i in pending {
        let lease = finishes[i].lease;
        let repeat = last
            .get(&lease.job_id.to_string())
            .is_some_and(|t| t.as_deref() == Some(token_text(lease.token).as_str()));
        results[i] =
            Some(if repeat { FinishResult::AlreadyApplied } else { FinishResult::LeaseLost });
    }
    Ok(())
}

/// Apply one finish on its loaded row, as [`transition::finish`] decides.
async fn finish_one(
    conn: &mut SqliteConnection,
    finish: &Finish,
    now: Timestamp,
) -> Result<FinishResult> {
    let Some(mut row) = load_job(conn, finish.lease.job_id).await? else {
        return Ok(FinishResult::LeaseLost);
    };
    let done = transition::finish(&mut row.job, &mut row.last_finish, finish, now);
    if done.applied() {
        save_job(conn, &row).await?;
    }
    if let Some(entry) = done.dlq {
        write_dead(conn, &entry, now).await?;
    }
    Ok(done.result)
}

/// Rescue up to `limit` jobs whose leases expired by `now`, oldest expiry first, each as
/// [`transition::rescue`] decides.
pub(crate) async fn rescue_batch(
    conn: &mut SqliteConnection,
    limit: usize,
    now: Timestamp,
) -> Result<RescueReport> {
    let rows = sqlx::query(
        // Pinned to the lease index: only expired leases are read (the planner
        // may otherwise walk every running job).
        "SELECT * FROM jobs INDEXED BY jobs_lease \
         WHERE state = 'running' AND lease_expires <= ? \
         ORDER BY lease_expires, id LIMIT +?",
    )
    .bind(now.as_unix_micros())
    .bind(sql_limit(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut report = RescueReport::default();
    // The expiry rescue wakes nobody (its callers poll): the queues it made due go unused.
    reclaim_rows(conn, &rows, transition::rescue, now, &mut report).await?;
    Ok(report)
}

/// A rule that reclaims one running job ([`transition::rescue`],
/// [`transition::rescue_from_lost_worker`]): the job changed in place, the report told, the DLQ
/// entry answered when the job died.
pub(crate) type Reclaim = fn(&mut Job, Timestamp, &mut RescueReport) -> Option<DlqEntry>;

/// Reclaim the loaded running jobs `rows` (selected with `*`) as `reclaim` decides, in the
/// caller's transaction: each row saved, a dead one's DLQ entry (and its run's failure)
/// written. Answers the queues of the jobs made available, for the caller's wake-up.
pub(crate) async fn reclaim_rows(
    conn: &mut SqliteConnection,
    rows: &[SqliteRow],
    reclaim: Reclaim,
    now: Timestamp,
    report: &mut RescueReport,
) -> Result<Vec<String>> {
    let mut available = Vec::new();
    for row in rows {
        let mut row = job_from_row(row)?;
        let dlq = reclaim(&mut row.job, now, report);
        save_job(conn, &row).await?;
        if let Some(entry) = dlq {
            write_dead(conn, &entry, now).await?;
        }
        if row.job.state == JobState::Available {
            available.push(row.job.queue);
        }
    }
    Ok(available)
}

/// Record the death of a job whose row was just saved dead: its DLQ entry and, when it drives a
/// workflow run, the failure of that run, in the caller's transaction (so a dead drive job and
/// a run still waiting for it are never seen together). Runs only on promotion, never on the
/// hot path of finishes that do not kill a job.
async fn write_dead(conn: &mut SqliteConnection, entry: &DlqEntry, now: Timestamp) -> Result<()> {
    insert_dlq(conn, entry).await?;
    fail_driven_run(conn, entry.job_id, &transition::driven_run_error(entry), now).await
}
