//! Rewinding a run to one of its checkpoints ([`WorkflowStore::rewind_run`]) and moving it to
//! another version ([`WorkflowStore::migrate_run`]): the run made running again and its drive
//! job re-armed, inside the writer's transaction.

#[cfg(doc)]
use dispatch_core::WorkflowStore;
use dispatch_core::{Error, ErrorKind, Result, RunId, RunState, Timestamp};
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::row::parse;
use crate::run::delete_waits;

/// The drive job of a run that may be re-armed ([`WorkflowStore::rewind_run`],
/// [`WorkflowStore::migrate_run`]), as read by [`rearmable`].
struct Rearmable {
    /// The run's state.
    state: RunState,
    /// The ID of its drive job, as stored.
    drive_job: String,
    /// The drive job's `run_at` when it is available (a waiting run's wake time).
    available_at: Option<i64>,
}

/// Run `id` and its drive job, when no drive holds it (its drive job is not running) and, for a
/// migration, the run has not completed. `NotFound` for an unknown run, `Conflict` otherwise.
async fn rearmable(conn: &mut SqliteConnection, id: RunId, migrating: bool) -> Result<Rearmable> {
    let row = sqlx::query(
        "SELECT runs.state, runs.drive_job, jobs.state AS job_state, jobs.run_at AS job_run_at \
         FROM runs LEFT JOIN jobs ON jobs.id = runs.drive_job WHERE runs.id = ?",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?
    .ok_or_else(|| Error::not_found(format!("no run {id}")))?;
    let state: String = row.try_get("state").map_err(db_error)?;
    let state = parse::<RunState>("run state", &state)?;
    let drive_job: String = row.try_get("drive_job").map_err(db_error)?;
    let job_state: Option<String> = row.try_get("job_state").map_err(db_error)?;
    let job_run_at: Option<i64> = row.try_get("job_run_at").map_err(db_error)?;
    if job_state.as_deref() == Some("running") {
        return Err(Error::new(ErrorKind::Conflict, format!("a drive holds run {id}")));
    }
    if migrating && state == RunState::Completed {
        return Err(Error::new(ErrorKind::Conflict, format!("run {id} has completed")));
    }
    let available_at = job_run_at.filter(|_| job_state.as_deref() == Some("available"));
    Ok(Rearmable { state, drive_job, available_at })
}

/// Make run `id` running again, with `version`: output, error, finish time and cancel request
/// cleared.
async fn reopen(
    conn: &mut SqliteConnection,
    id: RunId,
    version: Option<u32>,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET state = 'running', waiting = NULL, version = coalesce(?, version), \
         output = NULL, \
         error = NULL, finished_at = NULL, cancel_reason = NULL, updated_at = ? WHERE id = ?",
    )
    .bind(version.map(i64::from))
    .bind(now.as_unix_micros())
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Re-arm drive job `drive_job` (renamed to `name` when given): available at `run_at`, attempts
/// reset, no lease, no cancel request, not finished. Its queue, to wake after the commit; `None`
/// when the job is gone.
async fn rearm(
    conn: &mut SqliteConnection,
    drive_job: &str,
    name: Option<&str>,
    run_at: i64,
) -> Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE jobs SET state = 'available', run_at = ?, attempt = 0, lease_owner = NULL, \
         lease_token = NULL, lease_expires = NULL, cancel_requested = 0, finished_at = NULL, \
         name = coalesce(?, name) WHERE id = ? RETURNING queue",
    )
    .bind(run_at)
    .bind(name)
    .bind(drive_job)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)
}

/// Rewind run `id` to its checkpoint `key`, inside the caller's transaction (see
/// [`WorkflowStore::rewind_run`]). The queue of its re-armed drive job, to wake after the commit.
pub(crate) async fn rewind(
    conn: &mut SqliteConnection,
    id: RunId,
    key: &str,
    now: Timestamp,
) -> Result<Option<String>> {
    let target = rearmable(conn, id, false).await?;
    let run = id.to_string();
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM checkpoints WHERE run_id = ? AND key = ?")
        .bind(run.as_str())
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found(format!("run {id} has no checkpoint {key:?}")))?;
    sqlx::query("DELETE FROM checkpoints WHERE run_id = ? AND seq > ?")
        .bind(run.as_str())
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    reopen(conn, id, None, now).await?;
    delete_waits(conn, &run).await?;
    rearm(conn, &target.drive_job, None, now.as_unix_micros()).await
}

/// Move run `id` to `version`, inside the caller's transaction (see
/// [`WorkflowStore::migrate_run`]). The queue of its re-armed drive job, to wake after the
/// commit.
pub(crate) async fn migrate(
    conn: &mut SqliteConnection,
    id: RunId,
    version: u32,
    drive_job_name: &str,
    now: Timestamp,
) -> Result<Option<String>> {
    let target = rearmable(conn, id, true).await?;
    if target.state.is_final() {
        reopen(conn, id, Some(version), now).await?;
    } else {
        sqlx::query("UPDATE runs SET version = ?, updated_at = ? WHERE id = ?")
            .bind(i64::from(version))
            .bind(now.as_unix_micros())
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
    }
    // A waiting drive job keeps its wake time; an ended one is due now.
    let run_at = target.available_at.unwrap_or(now.as_unix_micros());
    rearm(conn, &target.drive_job, Some(drive_job_name), run_at).await
}
