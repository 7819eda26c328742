//! [`WorkflowStore`] for [`PostgresStore`]: runs (start, get, list, load, checkpoints, end,
//! cancel) in the store's schema, next to the jobs that drive them; events and rewinds
//! forwarded to [`crate::events`] and [`crate::rewind`]. Checkpoint writes and run ends are
//! group-committed ([`checkpoint`]); every call of a drive is fenced by its lease ([`fence`]).
//!
//! Every call is one statement (a start inserts the run and its drive job together), except
//! that the publishes and suspends of [`crate::events`] and the rewinds and migrations of
//! [`crate::rewind`] take their locks first, in a short transaction.

use std::collections::HashMap;

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Error, ErrorKind, LeaseRef, NewCheckpoint, NewEvent, NewJob, NewRun, Page,
    PageRequest, Published, Result, Run, RunCancel, RunEnd, RunFilter, RunId, RunSnapshot,
    RunState, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution, WorkflowStore,
};
use sqlx::SqlStr;
use uuid::Uuid;

use crate::enqueue::validate_batch;
use crate::error::no_run;
use crate::group::checkpoints::{self, End};
use crate::row::{
    CHECKPOINT_ARRAYS, RUN_COLUMNS, checkpoints_from_row, get, micros, run_at_parts, run_from_row,
    sql_limit,
};
use crate::run::FENCE;
use crate::{PostgresStore, db_error, statement};

/// Start a run (`$2..$9`) and its drive job (`$10..$22`, as one enqueue item) unless the run
/// is stored with this name, input and drive job (`same`: a retried start, nothing changes), the
/// run's (name, idempotency key) is taken (`existing`), its or the job's ID is (`clash`), or the
/// job's unique key is held (`held`). A concurrent start of the same key makes the run insert do
/// nothing (the partial unique index settles it) and so the job insert too; any other concurrent
/// clash is a unique violation that rolls everything back. One NOTIFY (`$23`) for the job.
const START_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     same AS (SELECT x.id FROM {s}.runs x WHERE x.id = $2 AND x.name = $3 AND x.input = $5 \
       AND x.drive_job = $10), \
     existing AS (SELECT x.id FROM {s}.runs x WHERE $8::text IS NOT NULL AND x.name = $3 \
       AND x.idempotency_key = $8), \
     clash AS (SELECT 'run' AS what FROM {s}.runs x WHERE x.id = $2 \
       AND NOT EXISTS (SELECT 1 FROM same) \
       UNION ALL SELECT 'job' FROM {s}.jobs j WHERE j.id = $10 \
       AND NOT EXISTS (SELECT 1 FROM same)), \
     held AS (SELECT h.id FROM {s}.jobs h, t WHERE $19::text IS NOT NULL AND h.name = $11 \
       AND h.unique_key = $19 AND (h.state IN ('available', 'running') OR h.unique_until > t.now) \
       ORDER BY h.seq DESC LIMIT 1), \
     run_ins AS (INSERT INTO {s}.runs (id, name, version, state, input, scope_app, scope_tenant, \
       idempotency_key, parent, drive_job, created_at, updated_at) \
       SELECT $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10, t.now, t.now FROM t \
       WHERE NOT EXISTS (SELECT 1 FROM same) AND NOT EXISTS (SELECT 1 FROM existing) \
       AND NOT EXISTS (SELECT 1 FROM clash) AND NOT EXISTS (SELECT 1 FROM held) \
       ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
       RETURNING id), \
     job_ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, unique_key, unique_until, scope_app, \
       scope_tenant) \
       SELECT $10, $11, $12, $13, $14, 'available', 0, $17, $18, \
       coalesce($15, {sat(t.now, $16)}), t.now, $19, {sat(t.now, $20)}, $21, $22 \
       FROM run_ins, t RETURNING queue), \
     woke AS (SELECT pg_notify($23, queue) FROM job_ins) \
     SELECT (SELECT id FROM same) AS same, (SELECT id FROM existing) AS existing, \
       (SELECT max(what) FROM clash) AS clash, \
       (SELECT id FROM held) AS held, (SELECT id FROM run_ins) AS created, \
       (SELECT count(*) FROM woke) AS notified";

/// The run of a (name `$1`, idempotency key `$2`), read after a start lost the race for it.
const RUN_BY_KEY: &str = "SELECT x.id FROM {s}.runs x WHERE x.name = $1 AND x.idempotency_key = $2";

const GET_RUN: &str = "SELECT {run_columns} FROM {s}.runs r WHERE r.id = $1";

const LIST_RUNS: &str = "SELECT {run_columns} FROM {s}.runs r \
     WHERE ($1::uuid IS NULL OR r.id > $1) AND ($2::text IS NULL OR r.state = $2) \
     AND ($3::text IS NULL OR r.name = $3) ORDER BY r.id LIMIT $4";

/// Run `$1`'s checkpoints; no row for an unknown run.
const CHECKPOINTS: &str = "SELECT ck.* FROM {s}.runs r CROSS JOIN LATERAL \
     (SELECT {checkpoint_arrays} FROM {s}.checkpoints c WHERE c.run_id = r.id) ck \
     WHERE r.id = $1";

/// Fenced: the run and its checkpoints; a suspended run becomes running (`flipped_at`). No row
/// for an unknown run.
const LOAD_RUN: &str = "WITH t AS (SELECT {now} AS now), {fence}, \
     flip AS (UPDATE {s}.runs x SET state = 'running', waiting = NULL, updated_at = t.now \
       FROM ok, t \
       WHERE x.id = ok.id AND x.state = 'suspended' RETURNING x.updated_at) \
     SELECT {run_columns}, EXISTS (SELECT 1 FROM ok) AS held, \
       (SELECT updated_at FROM flip) AS flipped_at, (SELECT now FROM t) AS store_now, ck.* \
     FROM r CROSS JOIN LATERAL (SELECT {checkpoint_arrays} FROM {s}.checkpoints c \
       WHERE c.run_id = r.id AND EXISTS (SELECT 1 FROM ok)) ck";

/// [`LOAD_RUN`] without a lock or a write, for a run that is not suspended (nothing to flip):
/// the fence is read in the statement's snapshot (`held`), as the locking one reads it, but
/// the transaction stays read-only, so its commit waits for no WAL flush. A suspended run
/// (`state`) is loaded again by [`LOAD_RUN`]. No row for an unknown run.
const READ_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     lease AS (SELECT j.id FROM {s}.jobs j WHERE j.id = $2 AND j.state = 'running' \
       AND j.lease_token = $3), \
     r AS (SELECT x.* FROM {s}.runs x WHERE x.id = $4), \
     ok AS (SELECT r.id FROM r JOIN lease l ON l.id = r.drive_job) \
     SELECT {run_columns}, EXISTS (SELECT 1 FROM ok) AS held, (SELECT now FROM t) AS store_now, \
       ck.* \
     FROM r CROSS JOIN LATERAL (SELECT {checkpoint_arrays} FROM {s}.checkpoints c \
       WHERE c.run_id = r.id AND EXISTS (SELECT 1 FROM ok) AND r.state <> 'suspended') ck";

/// Ask run `$2` to stop for reason `$3`; `$4` the channel. The drive job's row is locked first
/// (`job`), then the run's (`r`, waiting for it): the order of the fenced statements, so a
/// concurrent suspend either commits first (this statement then sees the drive job it left
/// available) or sees the reason. A run in a final state is left alone; else the reason is
/// recorded unless one is (`marked`), and an available drive job is made due now (`due`) with
/// one NOTIFY of its queue. Answers the run's `state` (no row: unknown run).
const CANCEL_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     job AS (SELECT j.id, j.state FROM {s}.jobs j JOIN {s}.runs x ON j.id = x.drive_job \
       WHERE x.id = $2 FOR UPDATE OF j), \
     r AS (SELECT x.id, x.state, x.cancel_reason FROM {s}.runs x LEFT JOIN job ON true \
       WHERE x.id = $2 FOR UPDATE OF x), \
     live AS (SELECT r.* FROM r \
       WHERE r.state NOT IN ('completed', 'failed', 'cancelled')), \
     marked AS (UPDATE {s}.runs x SET cancel_reason = $3, updated_at = t.now FROM live, t \
       WHERE x.id = live.id AND live.cancel_reason IS NULL), \
     due AS (UPDATE {s}.jobs j SET run_at = least(j.run_at, t.now) FROM job, live, t \
       WHERE j.id = job.id AND job.state = 'available' RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, due.queue) FROM due) \
     SELECT r.state, (SELECT count(*) FROM woke) AS notified FROM r";

/// The statements of runs, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    start_run: SqlStr,
    run_by_key: SqlStr,
    get_run: SqlStr,
    list_runs: SqlStr,
    checkpoints: SqlStr,
    load_snapshot: SqlStr,
    read_run: SqlStr,
    request_run_cancel: SqlStr,
    /// The group commit's statement.
    pub(crate) batch: checkpoints::Sql,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| {
            let template = template
                .replace("{fence}", FENCE)
                .replace("{run_columns}", RUN_COLUMNS)
                .replace("{checkpoint_arrays}", CHECKPOINT_ARRAYS);
            statement(&template, quoted)
        };
        Self {
            start_run: build(START_RUN),
            run_by_key: build(RUN_BY_KEY),
            get_run: build(GET_RUN),
            list_runs: build(LIST_RUNS),
            checkpoints: build(CHECKPOINTS),
            load_snapshot: build(LOAD_RUN),
            read_run: build(READ_RUN),
            request_run_cancel: build(CANCEL_RUN),
            batch: checkpoints::Sql::new(quoted),
        }
    }
}

impl PostgresStore {
    /// Start `run` with its drive job on `conn` (the store's or the caller's transaction).
    pub(crate) async fn start_on(
        &self,
        conn: &mut sqlx::PgConnection,
        run: NewRun,
        drive: NewJob,
    ) -> Result<Started> {
        run.validate(self.max_payload_bytes)?;
        validate_batch(std::slice::from_ref(&drive), self.max_payload_bytes)?;
        let (run_abs, run_delay) = run_at_parts(drive.run_at);
        self.timed("start_run", async {
            let row = sqlx::query(self.shared.sql.workflow.start_run.clone())
                .bind(self.now_param())
                .bind(run.id.uuid())
                .bind(&run.name)
                .bind(i64::from(run.version))
                .bind(run.input.as_slice())
                .bind(run.scope.app.as_deref())
                .bind(run.scope.tenant.as_deref())
                .bind(run.idempotency_key.as_deref())
                .bind(run.parent.map(|p| p.uuid()))
                .bind(drive.id.uuid())
                .bind(&drive.name)
                .bind(&drive.queue)
                .bind(drive.payload.as_slice())
                .bind(drive.priority)
                .bind(run_abs)
                .bind(run_delay)
                .bind(i64::from(drive.max_attempts))
                .bind(drive.timeout.map(micros))
                .bind(drive.unique.as_ref().map(|u| u.key.as_str()))
                .bind(drive.unique.as_ref().and_then(|u| u.window).map(micros))
                .bind(drive.scope.app.as_deref())
                .bind(drive.scope.tenant.as_deref())
                .bind(self.channel())
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
            // The same start again is a retried call: it answers as the first did.
            if get::<Option<Uuid>>(&row, "same")?.is_some() {
                return Ok(Started::Created(run.id));
            }
            // A reused run ID is refused before its key is looked at (as every store does); a
            // taken drive job ID only when the key names no run.
            let clash = get::<Option<String>>(&row, "clash")?;
            if clash.as_deref() == Some("run") {
                let message = format!("run {} already exists", run.id);
                return Err(Error::new(ErrorKind::Conflict, message));
            }
            if let Some(existing) = get::<Option<Uuid>>(&row, "existing")? {
                return Ok(Started::Existing(RunId::from_uuid(existing)));
            }
            if clash.is_some() {
                let message = format!("the drive job's ID {} is already taken", drive.id);
                return Err(Error::new(ErrorKind::Conflict, message));
            }
            if let Some(holder) = get::<Option<Uuid>>(&row, "held")? {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the drive job's unique key is held by job {holder}"),
                ));
            }
            if let Some(created) = get::<Option<Uuid>>(&row, "created")? {
                return Ok(Started::Created(RunId::from_uuid(created)));
            }
            // A concurrent start of the same key committed first: its run is the one.
            let key = run.idempotency_key.as_deref().ok_or_else(|| {
                Error::internal(format!("postgres: run {} was neither stored nor refused", run.id))
            })?;
            let winner: Option<Uuid> =
                sqlx::query_scalar(self.shared.sql.workflow.run_by_key.clone())
                    .bind(&run.name)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
            winner.map(|id| Started::Existing(RunId::from_uuid(id))).ok_or_else(|| {
                Error::unavailable(
                    "postgres: a concurrent start of this run's key rolled back; retry",
                )
            })
        })
        .await
    }

    /// The snapshot of a run that is not suspended, read without a lock ([`READ_RUN`]); `None`
    /// for a suspended run, which [`load_snapshot`](WorkflowStore::load_snapshot) flips.
    async fn read_run(&self, lease: LeaseRef, run: RunId) -> Result<Option<RunSnapshot>> {
        self.timed("load_snapshot", async {
            let row = self.fenced_row(&self.shared.sql.workflow.read_run, lease, run).await?;
            let stored = run_from_row(&row)?;
            if stored.state == RunState::Suspended {
                return Ok(None);
            }
            let now = Timestamp::from_unix_micros(get(&row, "store_now")?);
            Ok(Some(RunSnapshot { run: stored, checkpoints: checkpoints_from_row(&row)?, now }))
        })
        .await
    }
}

#[async_trait]
impl WorkflowStore for PostgresStore {
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started> {
        let mut conn = self
            .timed("start_run", async { self.shared.pool.session().await.map_err(db_error) })
            .await?;
        let started = self.start_on(&mut conn, run, drive).await;
        self.timed("start_run", conn.end(started)).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.timed("get_run", async {
            let row = sqlx::query(self.shared.sql.workflow.get_run.clone())
                .bind(id.uuid())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            row.as_ref().map(run_from_row).transpose()
        })
        .await
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>> {
        let limit = page.effective_limit();
        self.timed("list_runs", async {
            let rows = sqlx::query(self.shared.sql.workflow.list_runs.clone())
                .bind(page.after.map(|id| id.uuid()))
                .bind(filter.state.map(RunState::as_str))
                .bind(&filter.name)
                .bind(sql_limit(limit + 1))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let items = rows.iter().map(run_from_row).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |run: &Run| run.id))
        })
        .await
    }

    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        self.timed("checkpoints", async {
            let row = sqlx::query(self.shared.sql.workflow.checkpoints.clone())
                .bind(run.uuid())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| no_run(run))?;
            checkpoints_from_row(&row)
        })
        .await
    }

    async fn load_snapshot(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        // A run that is not suspended needs no write: a read-only statement, whose commit
        // waits for no WAL flush.
        if let Some(snapshot) = self.read_run(lease, run).await? {
            return Ok(snapshot);
        }
        self.timed("load_snapshot", async {
            let row = self.fenced_row(&self.shared.sql.workflow.load_snapshot, lease, run).await?;
            let mut stored = run_from_row(&row)?;
            if let Some(at) = get::<Option<i64>>(&row, "flipped_at")? {
                stored.state = RunState::Running;
                stored.waiting.clear();
                stored.updated_at = Timestamp::from_unix_micros(at);
            }
            let now = Timestamp::from_unix_micros(get(&row, "store_now")?);
            Ok(RunSnapshot { run: stored, checkpoints: checkpoints_from_row(&row)?, now })
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
        // Group-committed with the other drives' writes (see `group::checkpoints`).
        let write = distinct_keys(checkpoints);
        self.timed("save_checkpoints", self.save_batched(lease, run, write)).await
    }

    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        self.suspend_fenced(lease, suspend).await
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.resolve_fenced(lease, run, key).await
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        let state = end.state().as_str();
        let (output, error) = match end {
            RunEnd::Completed(output) => (Some(output), None),
            // PostgreSQL text can not hold NUL: keep the message, mark where a NUL was (as the
            // finish of a job does with its failure message).
            RunEnd::Failed(error) | RunEnd::Cancelled(error) => {
                (None, Some(error.replace('\0', "\u{fffd}")))
            }
        };
        // Group-committed with the drives' checkpoint writes (see `group::checkpoints`).
        let end = End { state, output, error };
        self.timed("end_run", self.end_batched(lease, run, end)).await
    }

    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        // PostgreSQL text can not hold NUL: keep the reason, mark where a NUL was.
        let reason = reason.replace('\0', "\u{fffd}");
        self.timed("request_run_cancel", async {
            let row = sqlx::query(self.shared.sql.workflow.request_run_cancel.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(&reason)
                .bind(self.channel())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| no_run(id))?;
            let state: String = get(&row, "state")?;
            let state = state.parse::<RunState>().map_err(|e| {
                Error::internal(format!("postgres: run {id} has an unknown state: {e}"))
            })?;
            Ok(if state.is_final() { RunCancel::AlreadyFinal(state) } else { RunCancel::Requested })
        })
        .await
    }

    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()> {
        self.rewind_to(id, key).await
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        self.move_to_version(id, version, drive_job_name).await
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        self.publish(event).await
    }
}

/// Checkpoints as the save statement takes them: one per key, at the key's first place in the
/// batch, with its last data (as if written one after another).
fn distinct_keys(checkpoints: Vec<NewCheckpoint>) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut place: HashMap<String, usize> = HashMap::with_capacity(checkpoints.len());
    let (mut keys, mut data) = (Vec::new(), Vec::<Vec<u8>>::new());
    for checkpoint in checkpoints {
        match place.get(&checkpoint.key) {
            Some(&i) => data[i] = checkpoint.data,
            None => {
                place.insert(checkpoint.key.clone(), keys.len());
                keys.push(checkpoint.key);
                data.push(checkpoint.data);
            }
        }
    }
    (keys, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [
            &q.start_run,
            &q.run_by_key,
            &q.get_run,
            &q.list_runs,
            &q.checkpoints,
            &q.load_snapshot,
            &q.read_run,
            &q.request_run_cancel,
        ] {
            crate::assert_expanded(sql);
        }
    }

    #[test]
    fn repeated_keys_keep_their_first_place_and_last_data() {
        let batch = vec![
            NewCheckpoint::new("b", vec![1]),
            NewCheckpoint::new("a", vec![2]),
            NewCheckpoint::new("b", vec![3]),
        ];
        let (keys, data) = distinct_keys(batch);
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(data, [vec![3], vec![2]]);
    }
}
