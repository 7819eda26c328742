//! The run-level operations every workflow concern of the SQLite store shares, each inside the
//! caller's transaction: the lease fence of drive calls, checkpoint writes and reads, removing a
//! run's waits, failing the run of a dead drive job, and a run's cancel request.
//!
//! It sits below the modules that use it (`workflow`, `events`, `rewind`, `group`, `finish`,
//! `job`) and uses none of them, so the store's modules import one another without a circle.

use dispatch_core::{
    Checkpoint, Error, ErrorKind, JobId, LeaseRef, NewCheckpoint, Result, Run, RunCancel, RunId,
    RunState, Timestamp,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::row::{checkpoint_from_row, chunks, parse, run_from_row, token_text};

/// The error of a drive call whose lease no longer holds the run's drive job.
pub(crate) fn lease_lost(run: RunId) -> Error {
    Error::new(ErrorKind::LeaseLost, format!("the drive of run {run} no longer holds its lease"))
}

/// The run `id`, when `lease` holds its drive job: the run's `drive_job` is the lease's job, and
/// that job is running under the lease's token. `NotFound` for an unknown run, `LeaseLost`
/// otherwise. Call it first in the transaction of a fenced call, which then writes nothing when
/// it fails.
pub(crate) async fn fenced(conn: &mut SqliteConnection, lease: LeaseRef, id: RunId) -> Result<Run> {
    let row = sqlx::query(
        "SELECT runs.*, jobs.state AS job_state, jobs.lease_token AS job_token \
         FROM runs LEFT JOIN jobs ON jobs.id = runs.drive_job WHERE runs.id = ?",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?
    .ok_or_else(|| no_run(id))?;
    held_run(&row, lease, id)
}

/// The run of a [`fenced`] row (with `job_state` and `job_token`), when `lease` holds it.
fn held_run(row: &SqliteRow, lease: LeaseRef, id: RunId) -> Result<Run> {
    let run = run_from_row(row)?;
    let job_state: Option<String> = row.try_get("job_state").map_err(db_error)?;
    let job_token: Option<String> = row.try_get("job_token").map_err(db_error)?;
    let holds = run.drive_job == lease.job_id
        && job_state.as_deref() == Some("running")
        && job_token.is_some_and(|t| t == token_text(lease.token));
    if holds { Ok(run) } else { Err(lease_lost(id)) }
}

/// The error of a call on an unknown run.
fn no_run(id: RunId) -> Error {
    Error::not_found(format!("no run {id}"))
}

/// [`fenced`] and the run's checkpoints (write order) in one statement, for a read beside the
/// writer: one round trip to the connection's thread instead of two.
pub(crate) async fn fenced_with_checkpoints(
    conn: &mut SqliteConnection,
    lease: LeaseRef,
    id: RunId,
) -> Result<(Run, Vec<Checkpoint>)> {
    let rows = sqlx::query(
        "SELECT runs.*, jobs.state AS job_state, jobs.lease_token AS job_token, \
           c.key AS ck_key, c.data AS ck_data, c.at AS ck_at \
         FROM runs LEFT JOIN jobs ON jobs.id = runs.drive_job \
         LEFT JOIN checkpoints c ON c.run_id = runs.id WHERE runs.id = ? ORDER BY c.seq",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let run = held_run(rows.first().ok_or_else(|| no_run(id))?, lease, id)?;
    let mut checkpoints = Vec::with_capacity(rows.len());
    for row in &rows {
        // A run without checkpoints is one row with none.
        let Some(key) = row.try_get::<Option<String>, _>("ck_key").map_err(db_error)? else {
            continue;
        };
        let data = row.try_get("ck_data").map_err(db_error)?;
        let at = Timestamp::from_unix_micros(row.try_get("ck_at").map_err(db_error)?);
        checkpoints.push(Checkpoint { key, data, at });
    }
    Ok((run, checkpoints))
}

/// Write `checkpoints` of `run` stamped `now`, inserting or replacing by key: a replaced key
/// keeps its row, so its place in write order. Multi-row upserts; a key given twice ends with
/// its last data, as sequential writes would.
pub(crate) async fn write_checkpoints(
    conn: &mut SqliteConnection,
    run: RunId,
    checkpoints: &[NewCheckpoint],
    now: Timestamp,
) -> Result<()> {
    let run = run.to_string();
    for chunk in chunks(checkpoints) {
        let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        // Safe: the text holds only fixed SQL and placeholders; values are bound.
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO checkpoints (run_id, key, data, at) VALUES {rows} \
             ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at"
        ));
        let mut query = sqlx::query(sql);
        for checkpoint in chunk {
            query = query
                .bind(run.as_str())
                .bind(checkpoint.key.as_str())
                .bind(checkpoint.data.as_slice())
                .bind(now.as_unix_micros());
        }
        query.execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// Every checkpoint of `run`, in write order.
pub(crate) async fn load_checkpoints(
    conn: &mut SqliteConnection,
    run: RunId,
) -> Result<Vec<Checkpoint>> {
    sqlx::query("SELECT key, data, at FROM checkpoints WHERE run_id = ? ORDER BY seq")
        .bind(run.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
        .iter()
        .map(checkpoint_from_row)
        .collect()
}

/// The job `job` died: when it drives a run that has not ended, that run fails with `error` and
/// its waits are removed, in the caller's transaction. One indexed update (`drive_job` is unique)
/// when the job drives nothing.
pub(crate) async fn fail_driven_run(
    conn: &mut SqliteConnection,
    job: JobId,
    error: &str,
    now: Timestamp,
) -> Result<()> {
    let failed: Option<String> = sqlx::query_scalar(
        "UPDATE runs SET state = 'failed', waiting = NULL, error = ?, updated_at = ?, \
         finished_at = ? \
         WHERE drive_job = ? AND state NOT IN ('completed', 'failed', 'cancelled') RETURNING id",
    )
    .bind(error)
    .bind(now.as_unix_micros())
    .bind(now.as_unix_micros())
    .bind(job.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    if let Some(run) = failed {
        delete_waits(conn, &run).await?;
    }
    Ok(())
}

/// The run job `id` drives, when that run has not ended.
pub(crate) async fn live_run_driven_by(
    conn: &mut SqliteConnection,
    id: JobId,
) -> Result<Option<RunId>> {
    let run: Option<String> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE drive_job = ? \
         AND state NOT IN ('completed', 'failed', 'cancelled')",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    run.map(|run| parse("run ID", &run)).transpose()
}

/// Ask run `id` to stop, inside the caller's transaction (see
/// [`WorkflowStore::request_run_cancel`](dispatch_core::WorkflowStore::request_run_cancel)): record `reason`
/// unless a reason is already recorded, and make the run's drive job due now when it is
/// available, so the drive sees the request. Returns the answer and the queues of the drive jobs
/// it made due, to wake after the commit. The drive job's own `cancel_requested` flag is left
/// alone.
pub(crate) async fn request_run_cancel(
    conn: &mut SqliteConnection,
    id: RunId,
    reason: &str,
    now: Timestamp,
) -> Result<(RunCancel, Vec<String>)> {
    let run = id.to_string();
    let state: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?")
        .bind(run.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found(format!("no run {id}")))?;
    let state = parse::<RunState>("run state", &state)?;
    if state.is_final() {
        return Ok((RunCancel::AlreadyFinal(state), Vec::new()));
    }
    sqlx::query(
        "UPDATE runs SET cancel_reason = ?, updated_at = ? \
         WHERE id = ? AND cancel_reason IS NULL",
    )
    .bind(reason)
    .bind(now.as_unix_micros())
    .bind(run.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    // `+state` keeps the planner on the ID index. A running drive job is left alone: its drive
    // sees the request when it next suspends or reads the run.
    let queues: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET run_at = min(run_at, ?) WHERE +state = 'available' \
         AND id = (SELECT drive_job FROM runs WHERE id = ?) RETURNING queue",
    )
    .bind(now.as_unix_micros())
    .bind(run.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok((RunCancel::Requested, queues))
}

/// Remove every wait of `run` (its ID as stored).
pub(crate) async fn delete_waits(conn: &mut SqliteConnection, run: &str) -> Result<()> {
    sqlx::query("DELETE FROM event_waits WHERE run_id = ?")
        .bind(run)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}
