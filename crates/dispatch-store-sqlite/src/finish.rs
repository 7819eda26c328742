//! Finishes and rescues: the transitions out of `running`.
//!
//! The outcomes that keep no history (complete, cancel, snooze, release) are written set-based:
//! one `UPDATE … FROM json_each(?)` per kind for the whole batch, each row conditional on its
//! lease token. Outcomes that append to the error history or move a job to the DLQ (retry, fail)
//! load their rows and decide in Rust, the same way the memory store decides. A batch that names
//! one job twice is applied item by item, in order, so repeats resolve exactly as sequential calls
//! would.

use std::collections::{HashMap, HashSet};

use dispatch_core::{
    AttemptError, DlqEntry, Failure, FailureKind, Finish, FinishResult, Job, JobId, JobState,
    Outcome, RescueReport, Result, Timestamp,
};
use sqlx::{Row, SqliteConnection};

use crate::db_error;
use crate::job::load;
use crate::row::{insert_dlq, save_job, token_text};
use crate::workflow::fail_driven_run;

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

/// Apply one finish on its loaded row.
async fn finish_one(
    conn: &mut SqliteConnection,
    finish: &Finish,
    now: Timestamp,
) -> Result<FinishResult> {
    let Some(mut row) = load(conn, finish.lease.job_id).await? else {
        return Ok(FinishResult::LeaseLost);
    };
    let holds = row.job.state == JobState::Running
        && row.job.lease.is_some_and(|l| l.token == finish.lease.token);
    if !holds {
        return Ok(if row.last_finish == Some(finish.lease.token) {
            FinishResult::AlreadyApplied
        } else {
            FinishResult::LeaseLost
        });
    }
    row.last_finish = Some(finish.lease.token);
    let dlq = apply(&mut row.job, &finish.outcome, now);
    let job = &row.job;
    let result = FinishResult::Applied { state: job.state, dlq_id: dlq.as_ref().map(|e| e.id) };
    save_job(conn, &row).await?;
    if let Some(entry) = dlq {
        write_dead(conn, &entry, now).await?;
    }
    Ok(result)
}

/// Record the death of a job whose row was just saved dead: its DLQ entry and, when it drives a
/// workflow run, the failure of that run, in the caller's transaction (so a dead drive job and
/// a run still waiting for it are never seen together). Runs only on promotion, never on the
/// hot path of finishes that do not kill a job.
pub(crate) async fn write_dead(
    conn: &mut SqliteConnection,
    entry: &DlqEntry,
    now: Timestamp,
) -> Result<()> {
    insert_dlq(conn, entry).await?;
    let error =
        entry.errors.last().map_or_else(|| "the drive job died".to_owned(), |e| e.message.clone());
    fail_driven_run(conn, entry.job_id, &error, now).await
}

/// Apply `outcome` to a running job whose lease the finish holds; returns the DLQ entry to write
/// when the job died.
fn apply(job: &mut Job, outcome: &Outcome, now: Timestamp) -> Option<DlqEntry> {
    let cancel_requested = job.cancel_requested;
    job.lease = None;
    job.cancel_requested = false;
    match outcome {
        Outcome::Complete => finalize(job, JobState::Completed, now),
        Outcome::Cancel => finalize(job, JobState::Cancelled, now),
        // A cancel request wins over running again.
        Outcome::Retry { failure, .. } if cancel_requested => {
            record(job, failure.clone(), now);
            finalize(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { .. } | Outcome::Release if cancel_requested => {
            finalize(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { run_at } => give_back(job, run_at.resolve(now)),
        Outcome::Release => give_back(job, now),
        Outcome::Fail { failure } => {
            record(job, failure.clone(), now);
            return Some(promote(job, now));
        }
        Outcome::Retry { failure, run_at } => {
            record(job, failure.clone(), now);
            if job.attempt >= job.max_attempts {
                return Some(promote(job, now));
            }
            job.state = JobState::Available;
            job.run_at = run_at.resolve(now);
        }
    }
    None
}

/// End a job in a final state.
pub(crate) fn finalize(job: &mut Job, state: JobState, now: Timestamp) {
    job.state = state;
    job.finished_at = Some(now);
}

/// Available again with the attempt returned (snooze, release).
fn give_back(job: &mut Job, run_at: Timestamp) {
    job.attempt = job.attempt.saturating_sub(1);
    job.state = JobState::Available;
    job.run_at = run_at;
}

/// Append the failure of the current attempt to the job's error history.
fn record(job: &mut Job, failure: Failure, now: Timestamp) {
    job.errors.push(AttemptError {
        attempt: job.attempt,
        kind: failure.kind,
        message: failure.message,
        at: now,
    });
}

/// Make a job dead; the caller writes the returned DLQ entry in the same transaction.
fn promote(job: &mut Job, now: Timestamp) -> DlqEntry {
    finalize(job, JobState::Dead, now);
    let entry = DlqEntry::for_job(job, now);
    job.dlq_id = Some(entry.id);
    entry
}

/// Reclaim a job whose lease expired; returns its DLQ entry when it died.
pub(crate) fn rescue_one(
    job: &mut Job,
    now: Timestamp,
    report: &mut RescueReport,
) -> Option<DlqEntry> {
    let cancel_requested = job.cancel_requested;
    let message = match job.lease.take() {
        Some(lease) => format!("lease held by {} expired", lease.owner),
        None => "lease expired".to_owned(),
    };
    job.cancel_requested = false;
    record(job, Failure::new(FailureKind::LeaseExpired, message), now);
    if cancel_requested {
        finalize(job, JobState::Cancelled, now);
        report.cancelled.push(job.id);
        None
    } else if job.attempt < job.max_attempts {
        job.state = JobState::Available;
        job.run_at = now;
        report.rescued.push(job.id);
        None
    } else {
        let entry = promote(job, now);
        report.promoted.push((job.id, entry.id));
        Some(entry)
    }
}
