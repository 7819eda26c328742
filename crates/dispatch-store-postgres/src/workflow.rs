//! [`WorkflowStore`] for [`PostgresStore`]: runs, checkpoints, event waits and kept events in
//! the store's schema, next to the jobs that drive the runs (statements in
//! [`crate::workflow_sql`]).
//!
//! Every call is one statement, except four that are one short transaction: a publish, and a
//! suspend that waits for events, first take a transaction-level advisory lock per (name,
//! correlation) they touch, then run their statement. Without it a publish and a suspend of one
//! key running at once could each miss the other (the event kept, the wait registered, neither
//! delivered): a statement's snapshot is taken before any lock it takes, so the lock has to come
//! first, in a statement of its own. For the same reason a replay and a migration first lock the
//! run's drive job and the run in a statement of their own, then change them.

use std::collections::HashMap;

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Error, ErrorKind, LeaseRef, NewCheckpoint, NewEvent, NewJob, NewRun, Page,
    PageRequest, Published, Result, Run, RunCancel, RunEnd, RunFilter, RunId, RunSnapshot,
    RunState, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution, WorkflowStore,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, SqlStr};
use uuid::Uuid;

use crate::enqueue::validate_batch;
use crate::row::{checkpoints_from_row, get, micros, run_at_parts, run_from_row, sql_limit};
use crate::{PostgresStore, db_error};

/// A statement with its parameters bound.
type Bound<'q> = Query<'q, Postgres, PgArguments>;

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
            let row = sqlx::query(self.shared.sql.wf.start_run.clone())
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
            let winner: Option<Uuid> = sqlx::query_scalar(self.shared.sql.wf.run_by_key.clone())
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
}

#[async_trait]
impl WorkflowStore for PostgresStore {
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started> {
        let mut conn = self
            .timed("start_run", async { self.shared.pool.acquire().await.map_err(db_error) })
            .await?;
        self.start_on(&mut conn, run, drive).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.timed("get_run", async {
            let row = sqlx::query(self.shared.sql.wf.get_run.clone())
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
            let rows = sqlx::query(self.shared.sql.wf.list_runs.clone())
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

    async fn checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        self.timed("checkpoints", async {
            let row = sqlx::query(self.shared.sql.wf.checkpoints.clone())
                .bind(run.uuid())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| no_run(run))?;
            checkpoints_from_row(&row)
        })
        .await
    }

    async fn load_run(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        // A run that is not suspended needs no write: a read-only statement, whose commit
        // waits for no WAL flush.
        if let Some(snapshot) = self.read_run(lease, run).await? {
            return Ok(snapshot);
        }
        self.timed("load_run", async {
            let row = self.fenced_row(&self.shared.sql.wf.load_run, lease, run).await?;
            let mut stored = run_from_row(&row)?;
            if let Some(at) = get::<Option<i64>>(&row, "flipped_at")? {
                stored.state = RunState::Running;
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
        // Group-committed with the other drives' writes (see `crate::checkpoint_batch`).
        let write = distinct_keys(checkpoints);
        self.timed("save_checkpoints", self.save_batched(lease, run, write)).await
    }

    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        let wake_at = suspend.wake_at().ok_or_else(|| {
            Error::invalid_input("a suspend needs a wake time or an event to wait for")
        })?;
        let waits = &suspend.waits;
        let keys: Vec<&str> = waits.iter().map(|w| w.key.as_str()).collect();
        let names: Vec<&str> = waits.iter().map(|w| w.name.as_str()).collect();
        let correlations: Vec<&str> = waits.iter().map(|w| w.correlation.as_str()).collect();
        let deadlines: Vec<i64> = waits.iter().map(|w| w.deadline.as_unix_micros()).collect();
        let locks = self.event_locks(waits.iter().map(|w| (&*w.name, &*w.correlation)));
        let run = suspend.run;
        self.timed("suspend_run", async {
            let query = self
                .fenced(&self.shared.sql.wf.suspend, lease, run)
                .bind(wake_at.as_unix_micros())
                .bind(&keys)
                .bind(&names)
                .bind(&correlations)
                .bind(&deadlines)
                .bind(self.channel());
            let row = self.fetch_one_locked(&locks, query).await?;
            check_fence(&row, run)?;
            if get::<bool>(&row, "cancel_requested")? {
                return Ok(SuspendOutcome::CancelRequested);
            }
            if get::<bool>(&row, "delivered")? {
                return Ok(SuspendOutcome::Delivered);
            }
            match get::<Option<String>>(&row, "job_state")? {
                Some(_) => Ok(SuspendOutcome::Suspended { wake_at }),
                None => Err(lease_lost(run)),
            }
        })
        .await
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.timed("resolve_wait", async {
            let row = self
                .fenced(&self.shared.sql.wf.resolve_wait, lease, run)
                .bind(key)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error)?;
            check_fence(&row, run)?;
            if let Some(data) = get::<Option<Vec<u8>>>(&row, "data")? {
                return Ok(WaitResolution::Delivered(data));
            }
            if get::<bool>(&row, "removed")? {
                return Ok(WaitResolution::TimedOut);
            }
            // No wait was left to remove: either none was registered, or a publish delivered to
            // it while the statement ran, after its snapshot. Read the checkpoint again.
            let data: Option<Vec<u8>> =
                sqlx::query_scalar(self.shared.sql.wf.checkpoint_data.clone())
                    .bind(run.uuid())
                    .bind(key)
                    .fetch_optional(&self.shared.pool)
                    .await
                    .map_err(db_error)?;
            Ok(data.map_or(WaitResolution::TimedOut, WaitResolution::Delivered))
        })
        .await
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
        // Group-committed with the drives' checkpoint writes (see `crate::checkpoint_batch`).
        let end = crate::checkpoint_batch::End { state, output, error };
        self.timed("end_run", self.end_batched(lease, run, end)).await
    }

    async fn cancel_run(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        // PostgreSQL text can not hold NUL: keep the reason, mark where a NUL was.
        let reason = reason.replace('\0', "\u{fffd}");
        self.timed("cancel_run", async {
            let row = sqlx::query(self.shared.sql.wf.cancel_run.clone())
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

    async fn replay_run(&self, id: RunId, key: &str) -> Result<()> {
        self.timed("replay_run", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let locked = self.lock_drive(&mut tx, id, Some(key)).await?;
            if locked.key_seq.is_none() {
                return Err(Error::not_found(format!("run {id} has no checkpoint {key:?}")));
            }
            sqlx::query(self.shared.sql.wf.drop_waits.clone())
                .bind(id.uuid())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            let row = sqlx::query(self.shared.sql.wf.replay_run.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(key)
                .bind(self.channel())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            if !get::<bool>(&row, "replayed")? {
                return Err(Error::internal(format!(
                    "postgres: run {id} and its checkpoint {key:?} were locked but not replayed"
                )));
            }
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        self.timed("migrate_run", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let locked = self.lock_drive(&mut tx, id, None).await?;
            if locked.run_state == RunState::Completed {
                return Err(Error::new(ErrorKind::Conflict, format!("run {id} has completed")));
            }
            let row = sqlx::query(self.shared.sql.wf.migrate_run.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(i64::from(version))
                .bind(drive_job_name)
                .bind(self.channel())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            if !get::<bool>(&row, "migrated")? {
                return Err(Error::internal(format!(
                    "postgres: run {id} was locked but not migrated"
                )));
            }
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.max_payload_bytes)?;
        let locks = self.event_locks([(&*event.name, &*event.correlation)]);
        self.timed("publish_event", async {
            let query = sqlx::query(self.shared.sql.wf.publish.clone())
                .bind(self.now_param())
                .bind(&event.name)
                .bind(&event.correlation)
                .bind(event.scope.app.as_deref())
                .bind(event.scope.tenant.as_deref())
                .bind(event.payload.as_slice())
                .bind(event.broadcast)
                .bind(event.id.uuid())
                .bind(i64::try_from(event.keep_for.as_micros()).unwrap_or(i64::MAX))
                .bind(self.channel());
            let row = self.fetch_one_locked(&locks, query).await?;
            let missed: Vec<Uuid> = get(&row, "missed")?;
            if !missed.is_empty() {
                self.wake_drives(&missed).await;
            }
            let delivered: Vec<Uuid> = get(&row, "delivered")?;
            Ok(Published {
                delivered_to: delivered.into_iter().map(RunId::from_uuid).collect(),
                kept: get(&row, "kept")?,
            })
        })
        .await
    }
}

impl PostgresStore {
    /// The snapshot of a run that is not suspended, read without a lock (`READ_RUN` of
    /// [`crate::workflow_sql`]); `None` for a suspended run, which [`load_run`] flips.
    async fn read_run(&self, lease: LeaseRef, run: RunId) -> Result<Option<RunSnapshot>> {
        self.timed("load_run", async {
            let row = self.fenced_row(&self.shared.sql.wf.read_run, lease, run).await?;
            let stored = run_from_row(&row)?;
            if stored.state == RunState::Suspended {
                return Ok(None);
            }
            let now = Timestamp::from_unix_micros(get(&row, "store_now")?);
            Ok(Some(RunSnapshot { run: stored, checkpoints: checkpoints_from_row(&row)?, now }))
        })
        .await
    }

    /// Make drive jobs a publish delivered to but had to skip due now (see
    /// [`crate::workflow_sql`]'s `PUBLISH`). The publish is committed, so a failure here is not
    /// the caller's: it is logged, and the run wakes at its wait's deadline at the latest.
    async fn wake_drives(&self, jobs: &[Uuid]) {
        let wake = sqlx::query(self.shared.sql.wf.wake_drives.clone())
            .bind(self.now_param())
            .bind(jobs)
            .bind(self.channel())
            .execute(&self.shared.pool);
        if let Err(error) = wake.await {
            tracing::warn!(%error, "could not wake the drive jobs of a delivered event");
        }
    }

    /// `sql`, a fenced statement, with its first parameters bound: the store's now, the lease's
    /// job and token, the run.
    fn fenced(&self, sql: &SqlStr, lease: LeaseRef, run: RunId) -> Bound<'static> {
        sqlx::query(sql.clone())
            .bind(self.now_param())
            .bind(lease.job_id.uuid())
            .bind(lease.token.uuid())
            .bind(run.uuid())
    }

    /// The row of `sql` run fenced for `run`: `NotFound` for an unknown run, `LeaseLost` when
    /// `lease` does not hold its drive job.
    async fn fenced_row(&self, sql: &SqlStr, lease: LeaseRef, run: RunId) -> Result<PgRow> {
        let row = self
            .fenced(sql, lease, run)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| no_run(run))?;
        if !get::<bool>(&row, "held")? {
            return Err(lease_lost(run));
        }
        Ok(row)
    }

    /// Lock run `id`'s drive job, then the run (`LOCK_DRIVE` of [`crate::workflow_sql`]), in `tx`,
    /// for a replay or a migration: `NotFound` for an unknown run, `Conflict` while a drive
    /// holds it (its drive job is running). Answers the run's state and the `seq` of its
    /// checkpoint `key`, when asked for and stored.
    async fn lock_drive(
        &self,
        tx: &mut sqlx::PgConnection,
        id: RunId,
        key: Option<&str>,
    ) -> Result<LockedDrive> {
        let row = sqlx::query(self.shared.sql.wf.lock_drive.clone())
            .bind(id.uuid())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .ok_or_else(|| no_run(id))?;
        if get::<Option<String>>(&row, "job_state")?.as_deref() == Some("running") {
            return Err(Error::new(ErrorKind::Conflict, format!("a drive holds run {id}")));
        }
        let state: String = get(&row, "run_state")?;
        let run_state = state.parse::<RunState>().map_err(|e| {
            Error::internal(format!("postgres: run {id} has an unknown state: {e}"))
        })?;
        Ok(LockedDrive { run_state, key_seq: get(&row, "key_seq")? })
    }

    /// The advisory lock keys of (name, correlation) pairs in this store's schema, sorted and
    /// distinct, so concurrent callers take them in one order.
    fn event_locks<'a>(&self, keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<i64> {
        let mut locks: Vec<i64> = keys
            .into_iter()
            .map(|(name, correlation)| event_lock(self.schema(), name, correlation))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        locks
    }

    /// Run `query` and fetch its one row: alone when `locks` is empty, else in a transaction
    /// that first takes those advisory locks (see the module docs).
    async fn fetch_one_locked(&self, locks: &[i64], query: Bound<'_>) -> Result<PgRow> {
        if locks.is_empty() {
            return query.fetch_one(&self.shared.pool).await.map_err(db_error);
        }
        let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
        sqlx::query(self.shared.sql.wf.lock_event_keys.clone())
            .bind(locks)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let row = query.fetch_one(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(row)
    }
}

/// What [`PostgresStore::lock_drive`] found under its locks.
struct LockedDrive {
    /// The run's state.
    run_state: RunState,
    /// The `seq` of the asked-for checkpoint, when it is stored.
    key_seq: Option<i64>,
}

/// The advisory lock key of events named `name` with key `correlation` in `schema`: FNV-1a
/// over the three (0xff, never in UTF-8, between them), stable across processes. Collisions
/// only make unrelated publishes and suspends take turns.
fn event_lock(schema: &str, name: &str, correlation: &str) -> i64 {
    let bytes = schema.bytes().chain([0xff]).chain(name.bytes()).chain([0xff]);
    let hash = bytes.chain(correlation.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
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

/// `NotFound` for an unknown run, `LeaseLost` when the fence did not hold.
fn check_fence(row: &PgRow, run: RunId) -> Result<()> {
    if !get::<bool>(row, "found")? {
        return Err(no_run(run));
    }
    if !get::<bool>(row, "held")? {
        return Err(lease_lost(run));
    }
    Ok(())
}

pub(crate) fn no_run(run: RunId) -> Error {
    Error::not_found(format!("no run {run}"))
}

pub(crate) fn lease_lost(run: RunId) -> Error {
    Error::new(ErrorKind::LeaseLost, format!("the drive of run {run} no longer holds its lease"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn event_locks_depend_on_every_part() {
        let lock = event_lock("s", "paid", "o-1");
        assert_eq!(lock, event_lock("s", "paid", "o-1"), "stable");
        assert_ne!(lock, event_lock("t", "paid", "o-1"));
        assert_ne!(lock, event_lock("s", "paid", "o-2"));
        assert_ne!(event_lock("s", "ab", "c"), event_lock("s", "a", "bc"));
    }
}
