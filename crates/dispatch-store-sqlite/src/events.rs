//! The event side of workflow runs: suspension (taking a kept event, or registering waits and
//! snoozing the drive job), resolving a wait, and publishing (delivering to waits, or keeping
//! the event).
//!
//! Every function runs inside the caller's transaction. Scopes compare with `IS`, so an unset
//! part matches only an unset part, as [`Scope`] equality does.

use dispatch_core::{
    EventWait, Finish, FinishResult, LeaseRef, NewCheckpoint, NewEvent, Outcome, Published, Result,
    RunAt, RunId, Scope, Suspend, SuspendOutcome, Timestamp, WaitResolution, WaitingFor,
};
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::finish::finish_batch;
use crate::row::{chunks, parse};
use crate::run::{delete_waits, fenced, lease_lost, write_checkpoints};

/// Suspend a run whose drive holds `lease` (see
/// [`WorkflowStore::suspend_run`](dispatch_core::WorkflowStore::suspend_run)): when the run has
/// a cancel request, answer `CancelRequested` and change nothing; else, when one of the waits
/// already has its checkpoint (an event reached it during the drive), answer `Delivered`; else
/// deliver the oldest unexpired kept event matching one of the waits, taken in the waits' order,
/// and answer `Delivered`; else make the waits the run's only ones, mark the run suspended, and
/// finish the drive job as a
/// snooze until `wake_at` with the same code as [`Outcome::Snooze`] (attempt given back, lease
/// cleared, the token recorded as the last finish; a cancel request cancels it instead).
pub(crate) async fn suspend(
    conn: &mut SqliteConnection,
    lease: LeaseRef,
    request: &Suspend,
    wake_at: Timestamp,
    now: Timestamp,
) -> Result<SuspendOutcome> {
    let run = fenced(conn, lease, request.run).await?;
    if run.cancel_requested.is_some() {
        return Ok(SuspendOutcome::CancelRequested);
    }
    if delivered_since_load(conn, request).await? {
        return Ok(SuspendOutcome::Delivered);
    }
    for wait in &request.waits {
        if let Some(payload) = take_kept(conn, wait, &run.scope, now).await? {
            let checkpoint = NewCheckpoint::new(wait.key.clone(), payload);
            write_checkpoints(conn, request.run, &[checkpoint], now).await?;
            return Ok(SuspendOutcome::Delivered);
        }
    }
    // The waits listed are the run's waits now: earlier ones it no longer lists (a branch it
    // dropped) must not take events meant for others.
    delete_waits(conn, &request.run.to_string()).await?;
    register(conn, request.run, &run.scope, &request.waits).await?;
    sqlx::query("UPDATE runs SET state = 'suspended', waiting = ?, updated_at = ? WHERE id = ?")
        .bind(WaitingFor::to_column(&request.waiting)?)
        .bind(now.as_unix_micros())
        .bind(request.run.to_string())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let snooze = Finish { lease, outcome: Outcome::Snooze { run_at: RunAt::At(wake_at) } };
    match finish_batch(conn, &[snooze], now).await?.first() {
        Some(FinishResult::Applied { .. }) => Ok(SuspendOutcome::Suspended { wake_at }),
        // Fenced above in this transaction, so not expected; rolled back if it happens.
        _ => Err(lease_lost(request.run)),
    }
}

/// Whether an event reached one of `request`'s waits while the run was being driven (a wait an
/// earlier suspend registered): its checkpoint is written, so the drive must go on, not suspend.
async fn delivered_since_load(conn: &mut SqliteConnection, request: &Suspend) -> Result<bool> {
    let run = request.run.to_string();
    for wait in &request.waits {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM checkpoints WHERE run_id = ? AND key = ?")
                .bind(run.as_str())
                .bind(wait.key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The payload of the oldest unexpired kept event for `wait` in `scope`, deleted from the store.
async fn take_kept(
    conn: &mut SqliteConnection,
    wait: &EventWait,
    scope: &Scope,
    now: Timestamp,
) -> Result<Option<Vec<u8>>> {
    sqlx::query_scalar(
        "DELETE FROM kept_events WHERE seq = (SELECT seq FROM kept_events \
         WHERE name = ? AND correlation = ? AND scope_app IS ? AND scope_tenant IS ? \
         AND keep_until > ? ORDER BY seq LIMIT 1) RETURNING payload",
    )
    .bind(wait.name.as_str())
    .bind(wait.correlation.as_str())
    .bind(scope.app.as_deref())
    .bind(scope.tenant.as_deref())
    .bind(now.as_unix_micros())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)
}

/// Register `waits` for `run`, in order, each behind every wait registered before it. A wait on
/// a key the run already waits on replaces that wait (and goes to the back of the line).
async fn register(
    conn: &mut SqliteConnection,
    run: RunId,
    scope: &Scope,
    waits: &[EventWait],
) -> Result<()> {
    let run = run.to_string();
    for chunk in chunks(waits) {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        // Safe: the text holds only fixed SQL and placeholders; values are bound. `OR REPLACE`
        // deletes the replaced wait, so its replacement takes a new (last) `seq`.
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT OR REPLACE INTO event_waits \
             (run_id, key, name, correlation, scope_app, scope_tenant, deadline) VALUES {rows}"
        ));
        let mut query = sqlx::query(sql);
        for wait in chunk {
            query = query
                .bind(run.as_str())
                .bind(wait.key.as_str())
                .bind(wait.name.as_str())
                .bind(wait.correlation.as_str())
                .bind(scope.app.as_deref())
                .bind(scope.tenant.as_deref())
                .bind(wait.deadline.as_unix_micros());
        }
        query.execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// Publish `event` (see [`WorkflowStore`](dispatch_core::WorkflowStore)'s module docs): take the
/// oldest matching wait (every matching wait for a broadcast), write each one's checkpoint, and
/// make each waiting run's drive job due now when it is available; with no waiter, keep a
/// non-broadcast event until its `keep_until`. Also returns the queues of the drive jobs it made
/// due, to wake after the commit.
pub(crate) async fn publish(
    conn: &mut SqliteConnection,
    event: &NewEvent,
    now: Timestamp,
) -> Result<(Published, Vec<String>)> {
    // LIMIT -1 is no limit.
    let limit: i64 = if event.broadcast { -1 } else { 1 };
    let rows = sqlx::query(
        "DELETE FROM event_waits WHERE seq IN (SELECT seq FROM event_waits \
         WHERE name = ? AND correlation = ? AND scope_app IS ? AND scope_tenant IS ? \
         ORDER BY seq LIMIT ?) RETURNING seq, run_id, key",
    )
    .bind(event.name.as_str())
    .bind(event.correlation.as_str())
    .bind(event.scope.app.as_deref())
    .bind(event.scope.tenant.as_deref())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut waits = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.try_get("seq").map_err(db_error)?;
        let run: String = row.try_get("run_id").map_err(db_error)?;
        let key: String = row.try_get("key").map_err(db_error)?;
        waits.push((seq, run, key));
    }
    if waits.is_empty() {
        let kept = !event.broadcast && now + event.keep_for > now;
        if kept {
            keep(conn, event, now).await?;
        }
        return Ok((Published { delivered_to: Vec::new(), kept }, Vec::new()));
    }
    // RETURNING gives no order: deliveries are reported in registration order.
    waits.sort_unstable_by_key(|(seq, _, _)| *seq);
    let pairs: Vec<(&str, &str)> =
        waits.iter().map(|(_, run, key)| (run.as_str(), key.as_str())).collect();
    let json = serde_json::to_string(&pairs)
        .map_err(|e| dispatch_core::Error::internal(format!("sqlite: {e}")))?;
    sqlx::query(
        "INSERT INTO checkpoints (run_id, key, data, at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?, ? \
         FROM json_each(?) WHERE true \
         ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at",
    )
    .bind(event.payload.as_slice())
    .bind(now.as_unix_micros())
    .bind(&json)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    // `+state` keeps the planner on the ID index. A drive job that is running (its drive has
    // not suspended yet) is left alone: the drive finds the checkpoint when it resolves the wait.
    let queues: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET run_at = min(run_at, ?) WHERE +state = 'available' AND id IN \
         (SELECT drive_job FROM runs WHERE id IN \
         (SELECT json_extract(value, '$[0]') FROM json_each(?))) RETURNING queue",
    )
    .bind(now.as_unix_micros())
    .bind(&json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut delivered_to = Vec::with_capacity(waits.len());
    for (_, run, _) in &waits {
        let run: RunId = parse("run ID", run)?;
        // A broadcast may reach several waits of one run: the run is listed once.
        if !delivered_to.contains(&run) {
            delivered_to.push(run);
        }
    }
    Ok((Published { delivered_to, kept: false }, queues))
}

/// Keep `event` for a later wait, first dropping every kept event that has expired (so the
/// table holds little more than the events still waiting to be taken).
async fn keep(conn: &mut SqliteConnection, event: &NewEvent, now: Timestamp) -> Result<()> {
    sqlx::query("DELETE FROM kept_events WHERE keep_until <= ?")
        .bind(now.as_unix_micros())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO kept_events \
         (id, name, correlation, scope_app, scope_tenant, payload, keep_until) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.id.to_string())
    .bind(event.name.as_str())
    .bind(event.correlation.as_str())
    .bind(event.scope.app.as_deref())
    .bind(event.scope.tenant.as_deref())
    .bind(event.payload.as_slice())
    .bind((now + event.keep_for).as_unix_micros())
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Resolve wait `key` of `run`, whose drive holds `lease` (see
/// [`WorkflowStore::resolve_wait`](dispatch_core::WorkflowStore::resolve_wait)): the payload
/// when an event was delivered to it, else the wait is removed and it timed out.
pub(crate) async fn resolve_wait(
    conn: &mut SqliteConnection,
    lease: LeaseRef,
    run: RunId,
    key: &str,
) -> Result<WaitResolution> {
    fenced(conn, lease, run).await?;
    let run = run.to_string();
    let delivered: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT data FROM checkpoints WHERE run_id = ? AND key = ?")
            .bind(run.as_str())
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    if let Some(payload) = delivered {
        return Ok(WaitResolution::Delivered(payload));
    }
    sqlx::query("DELETE FROM event_waits WHERE run_id = ? AND key = ?")
        .bind(run.as_str())
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(WaitResolution::TimedOut)
}
