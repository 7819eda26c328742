//! [`WorkflowStore`] for [`SqliteStore`]: short methods over the concern modules, with runs
//! started, read, loaded and cancelled here, in the tables of `schema/0003_workflows.sql`. Event
//! waits and kept events are in `events`, rewinding and migrating runs in `rewind`, group-committed
//! checkpoint writes and run ends in `group`, and the fence and other run operations they share
//! in `run`.
//!
//! Runs are written on the same writer connection as the jobs, so each of these is one
//! `BEGIN IMMEDIATE` transaction: a start (the run and its drive job), a suspend (the waits, the
//! run and the drive job's snooze), a delivery (the checkpoint and the drive job made due), and a
//! dying drive job (its DLQ entry and the failed run, `run::fail_driven_run`).
//! A rewind or a migration (the run rewound or moved, its drive job re-armed) is one too.
//!
//! Every call that takes a lease is fenced inside its transaction by `run::fenced`: the run's
//! drive job must be the lease's job, running under the lease's token; otherwise the call fails
//! before writing anything.

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Enqueued, Error, ErrorKind, JobId, LeaseRef, NewCheckpoint, NewEvent, NewJob,
    NewRun, Page, PageRequest, Published, Result, Run, RunCancel, RunEnd, RunFilter, RunId,
    RunSnapshot, RunState, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution,
    WorkflowStore,
};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::enqueue::{enqueue_batch, validate_batch};
use crate::error::db_error;
use crate::events::{publish, resolve_wait, suspend};
use crate::rewind::{migrate, rewind};
use crate::row::{checkpoint_from_row, parse, run_from_row, sql_limit};
use crate::run::{fenced, fenced_with_checkpoints, load_checkpoints, request_run_cancel};

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

    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
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

    async fn load_snapshot(&self, lease: LeaseRef, id: RunId) -> Result<RunSnapshot> {
        let now = self.clock.now();
        // A run that is not suspended needs no write: read it beside the writer.
        let read = self
            .timed("load_snapshot", async {
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
        self.write("load_snapshot", move |conn| {
            Box::pin(async move {
                let mut run = fenced(conn, lease, id).await?;
                if run.state == RunState::Suspended {
                    sqlx::query(
                        "UPDATE runs SET state = 'running', waiting = NULL, updated_at = ? \
                         WHERE id = ?",
                    )
                    .bind(now.as_unix_micros())
                    .bind(id.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    run.state = RunState::Running;
                    run.waiting.clear();
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
        let wake_at = request.required_wake_at()?;
        let now = self.clock.now();
        self.write("suspend_run", move |conn| {
            Box::pin(async move { suspend(conn, lease, &request, wake_at, now).await })
        })
        .await
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        let key = key.to_owned();
        self.write("resolve_wait", move |conn| {
            Box::pin(async move { resolve_wait(conn, lease, run, &key).await })
        })
        .await
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        // Group-committed with the other drives' ends (see the `run_end` module).
        self.end_grouped(lease, run, end).await
    }

    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        let now = self.clock.now();
        let reason = reason.to_owned();
        let (cancel, queues) = self
            .write("request_run_cancel", move |conn| {
                Box::pin(async move { request_run_cancel(conn, id, &reason, now).await })
            })
            .await?;
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(cancel)
    }

    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()> {
        let now = self.clock.now();
        let key = key.to_owned();
        let queue = self
            .write("rewind_run", move |conn| {
                Box::pin(async move { rewind(conn, id, &key, now).await })
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
                Box::pin(async move { migrate(conn, id, version, &name, now).await })
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
