//! [`WorkflowStore`] for [`SqliteStore`]: runs and their checkpoints (this module), event waits
//! and kept events ([`crate::events`]), in the tables of `schema/0003_workflows.sql`.
//!
//! They are written on the same writer connection as the jobs, so each of these is one
//! `BEGIN IMMEDIATE` transaction: a start (the run and its drive job), a suspend (the waits, the
//! run and the drive job's snooze), a delivery (the checkpoint and the drive job made due), and a
//! dying drive job (its DLQ entry and the failed run, [`fail_driven_run`]).
//! A replay or a migration (the run rewound or moved, its drive job re-armed) is one too.
//!
//! Every call that takes a lease is fenced inside its transaction by [`fenced`]: the run's drive
//! job must be the lease's job, running under the lease's token; otherwise the call fails before
//! writing anything.

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Enqueued, Error, ErrorKind, JobId, LeaseRef, NewCheckpoint, NewEvent, NewJob,
    NewRun, Page, PageRequest, Published, Result, Run, RunCancel, RunEnd, RunFilter, RunId,
    RunSnapshot, RunState, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution,
    WorkflowStore,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::enqueue::{enqueue_batch, validate_batch};
use crate::events::{delete_waits, publish, suspend};
use crate::row::{checkpoint_from_row, parse, run_from_row, sql_limit, token_text};
use crate::workflow_rearm::{migrate_in, replay_in};
use crate::{SqliteStore, db_error};

/// Rows per multi-row insert of checkpoints or waits (at most 7 parameters each).
const CHUNK: usize = 128;

/// `items` cut into statements of [`CHUNK`] rows and then of halving sizes, so only a handful of
/// statement shapes are ever prepared and cached (as [`crate::enqueue`] does for jobs).
pub(crate) fn chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut rest = items;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let size = if rest.len() >= CHUNK { CHUNK } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

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

fn no_run(id: RunId) -> Error {
    Error::not_found(format!("no run {id}"))
}

/// [`fenced`] and the run's checkpoints (write order) in one statement, for a read beside the
/// writer: one round trip to the connection's thread instead of two.
async fn fenced_with_checkpoints(
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

/// Start `run` with its drive job on `conn`, inside the caller's transaction.
pub(crate) async fn start_in(
    conn: &mut SqliteConnection,
    run: NewRun,
    drive: NewJob,
    now: Timestamp,
) -> Result<Started> {
    let stored = sqlx::query("SELECT name, input, drive_job FROM runs WHERE id = ?")
        .bind(run.id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    if let Some(stored) = stored {
        // The same start again is a retried call: it answers as the first did and changes
        // nothing. Anything else under the run's ID is a reuse.
        let name: String = stored.try_get("name").map_err(db_error)?;
        let input: Vec<u8> = stored.try_get("input").map_err(db_error)?;
        let drive_job: String = stored.try_get("drive_job").map_err(db_error)?;
        if name == run.name && input == run.input && drive_job == drive.id.to_string() {
            return Ok(Started::Created(run.id));
        }
        return Err(Error::new(ErrorKind::Conflict, format!("run {} already exists", run.id)));
    }
    if let Some(key) = &run.idempotency_key
        && let Some(existing) = run_by_key(conn, &run.name, key).await?
    {
        return Ok(Started::Existing(existing));
    }
    // The enqueue below would take a stored drive job for a retried one: here it is another
    // run's (this run is not stored), so a reuse.
    let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?")
        .bind(drive.id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    if taken.is_some() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("the drive job's ID {} is already taken", drive.id),
        ));
    }
    let drive_job = drive.id;
    if let Some(Enqueued::Duplicate(holder)) = enqueue_batch(conn, vec![drive], now).await?.first()
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("the drive job's unique key is held by job {holder}"),
        ));
    }
    insert_run(conn, &run, drive_job, now).await?;
    Ok(Started::Created(run.id))
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
async fn load_checkpoints(conn: &mut SqliteConnection, run: RunId) -> Result<Vec<Checkpoint>> {
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
        "UPDATE runs SET state = 'failed', error = ?, updated_at = ?, finished_at = ? \
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

/// The run started with idempotency key `key` for workflow `name`, if any.
async fn run_by_key(conn: &mut SqliteConnection, name: &str, key: &str) -> Result<Option<RunId>> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM runs WHERE name = ? AND idempotency_key = ?")
            .bind(name)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    id.map(|id| parse("run ID", &id)).transpose()
}

/// Insert the row of a new run, driven by `drive_job`. A reused run ID is `Conflict`.
async fn insert_run(
    conn: &mut SqliteConnection,
    run: &NewRun,
    drive_job: JobId,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO runs (id, name, version, state, input, scope_app, scope_tenant, \
         idempotency_key, parent, drive_job, created_at, updated_at) \
         VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(run.id.to_string())
    .bind(run.name.as_str())
    .bind(i64::from(run.version))
    .bind(run.input.as_slice())
    .bind(run.scope.app.as_deref())
    .bind(run.scope.tenant.as_deref())
    .bind(run.idempotency_key.as_deref())
    .bind(run.parent.map(|p| p.to_string()))
    .bind(drive_job.to_string())
    .bind(now.as_unix_micros())
    .bind(now.as_unix_micros())
    .execute(&mut *conn)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::new(ErrorKind::Conflict, format!("run {} already exists", run.id))
        }
        other => db_error(other),
    })?;
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
/// [`WorkflowStore::cancel_run`]): record `reason` unless a reason is already recorded, and make
/// the run's drive job due now when it is available, so the drive sees the request. Returns the
/// answer and the queues of the drive jobs it made due, to wake after the commit. The drive job's
/// own `cancel_requested` flag is left alone.
pub(crate) async fn request_cancel(
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

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started> {
        run.validate(self.max_payload_bytes)?;
        validate_batch(std::slice::from_ref(&drive), self.max_payload_bytes)?;
        let now = self.clock.now();
        let queue = drive.queue.clone();
        let started =
            self.write("start_run", move |conn| Box::pin(start_in(conn, run, drive, now))).await?;
        if let Started::Created(_) = started {
            self.wakeups.notify([queue.as_str()]);
        }
        Ok(started)
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.timed("get_run", async {
            sqlx::query("SELECT * FROM runs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?
                .as_ref()
                .map(run_from_row)
                .transpose()
        })
        .await
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>> {
        let limit = page.effective_limit();
        let after = page.after.map(|id| id.to_string());
        let state = filter.state.map(RunState::as_str);
        // Only the filters that are set, so the planner can use `runs_state` or `runs_name`.
        let mut clauses = Vec::new();
        if after.is_some() {
            clauses.push("id > ?");
        }
        if state.is_some() {
            clauses.push("state = ?");
        }
        if filter.name.is_some() {
            clauses.push("name = ?");
        }
        let conditions = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        // Safe: the text holds only fixed SQL and placeholders; values are bound.
        let sql = format!("SELECT * FROM runs {conditions} ORDER BY id LIMIT ?");
        self.timed("list_runs", async {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            if let Some(after) = &after {
                query = query.bind(after.as_str());
            }
            if let Some(state) = state {
                query = query.bind(state);
            }
            if let Some(name) = &filter.name {
                query = query.bind(name.as_str());
            }
            let rows = query
                .bind(sql_limit(limit + 1))
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
            let items = rows.iter().map(run_from_row).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |run: &Run| run.id))
        })
        .await
    }

    async fn checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        self.timed("checkpoints", async {
            // One statement, so the run's existence and its checkpoints are read together; a
            // run without checkpoints is one row with NULL checkpoint columns.
            let rows = sqlx::query(
                "SELECT c.key, c.data, c.at FROM runs LEFT JOIN checkpoints AS c \
                 ON c.run_id = runs.id WHERE runs.id = ? ORDER BY c.seq",
            )
            .bind(run.to_string())
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
            if rows.is_empty() {
                return Err(Error::not_found(format!("no run {run}")));
            }
            let mut checkpoints = Vec::with_capacity(rows.len());
            for row in &rows {
                let key: Option<String> = row.try_get("key").map_err(db_error)?;
                if key.is_some() {
                    checkpoints.push(checkpoint_from_row(row)?);
                }
            }
            Ok(checkpoints)
        })
        .await
    }

    async fn load_run(&self, lease: LeaseRef, id: RunId) -> Result<RunSnapshot> {
        let now = self.clock.now();
        // A run that is not suspended needs no write: read it beside the writer.
        let read = self
            .timed("load_run", async {
                let mut conn = self.readers.acquire().await.map_err(db_error)?;
                let (run, checkpoints) = fenced_with_checkpoints(&mut conn, lease, id).await?;
                if run.state == RunState::Suspended {
                    return Ok(None);
                }
                Ok(Some(RunSnapshot { run, checkpoints, now }))
            })
            .await?;
        if let Some(snapshot) = read {
            return Ok(snapshot);
        }
        self.write("load_run", move |conn| {
            Box::pin(async move {
                let mut run = fenced(conn, lease, id).await?;
                if run.state == RunState::Suspended {
                    sqlx::query("UPDATE runs SET state = 'running', updated_at = ? WHERE id = ?")
                        .bind(now.as_unix_micros())
                        .bind(id.to_string())
                        .execute(&mut *conn)
                        .await
                        .map_err(db_error)?;
                    run.state = RunState::Running;
                    run.updated_at = now;
                }
                let checkpoints = load_checkpoints(conn, id).await?;
                Ok(RunSnapshot { run, checkpoints, now })
            })
        })
        .await
    }

    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        NewCheckpoint::validate_all(&checkpoints, self.max_payload_bytes)?;
        // Group-committed with the other drives' writes (see the `group` module).
        self.save_grouped(lease, run, checkpoints).await
    }

    async fn suspend_run(&self, lease: LeaseRef, request: Suspend) -> Result<SuspendOutcome> {
        let wake_at = request.wake_at().ok_or_else(|| {
            Error::invalid_input("a suspend needs a wake time or an event to wait for")
        })?;
        let now = self.clock.now();
        self.write("suspend_run", move |conn| {
            Box::pin(async move { suspend(conn, lease, &request, wake_at, now).await })
        })
        .await
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        let key = key.to_owned();
        self.write("resolve_wait", move |conn| {
            Box::pin(async move {
                fenced(conn, lease, run).await?;
                let run = run.to_string();
                let delivered: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT data FROM checkpoints WHERE run_id = ? AND key = ?")
                        .bind(run.as_str())
                        .bind(key.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db_error)?;
                if let Some(payload) = delivered {
                    return Ok(WaitResolution::Delivered(payload));
                }
                sqlx::query("DELETE FROM event_waits WHERE run_id = ? AND key = ?")
                    .bind(run.as_str())
                    .bind(key.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                Ok(WaitResolution::TimedOut)
            })
        })
        .await
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        // Group-committed with the other drives' ends (see the `run_end` module).
        self.end_grouped(lease, run, end).await
    }

    async fn cancel_run(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        let now = self.clock.now();
        let reason = reason.to_owned();
        let (cancel, queues) = self
            .write("cancel_run", move |conn| {
                Box::pin(async move { request_cancel(conn, id, &reason, now).await })
            })
            .await?;
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(cancel)
    }

    async fn replay_run(&self, id: RunId, key: &str) -> Result<()> {
        let now = self.clock.now();
        let key = key.to_owned();
        let queue = self
            .write("replay_run", move |conn| {
                Box::pin(async move { replay_in(conn, id, &key, now).await })
            })
            .await?;
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        let now = self.clock.now();
        let name = drive_job_name.to_owned();
        let queue = self
            .write("migrate_run", move |conn| {
                Box::pin(async move { migrate_in(conn, id, version, &name, now).await })
            })
            .await?;
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.max_payload_bytes)?;
        let now = self.clock.now();
        let (published, queues) = self
            .write("publish_event", move |conn| {
                Box::pin(async move { publish(conn, &event, now).await })
            })
            .await?;
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(published)
    }
}
