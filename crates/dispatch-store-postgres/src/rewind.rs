//! Rewinding a run to one of its checkpoints (a rewind: the checkpoints written after it are
//! dropped and the run is driven again from there), and migrating a run to another version.
//!
//! Each is one short transaction that first locks the run's drive job and the run in a
//! statement of its own ([`LOCK_DRIVE`]), then changes them: a statement's snapshot is taken
//! before any lock it takes, so the lock has to come first for the changes to see what a drive,
//! a claim or a cancel committed before it.

use dispatch_core::{Error, ErrorKind, Result, RunId, RunState};
use sqlx::SqlStr;

use crate::error::no_run;
use crate::row::get;
use crate::{PostgresStore, db_error, statement};

/// The first statement of a rewind or a migration (both one transaction): lock run `$1`'s
/// drive job row, then the run's (the order of the fenced statements and of `CANCEL_RUN` in
/// `workflow`), so no claim, drive or cancel interleaves, and every later statement of the
/// transaction (a snapshot of its own) sees what they committed before. Answers the run's
/// `run_state`, its drive job's `job_state`, and the `seq` of its checkpoint `$2` (`key_seq`;
/// NULL when `$2` is NULL or no such checkpoint exists). No row: unknown run.
const LOCK_DRIVE: &str = "WITH job AS (SELECT j.id, j.state FROM {s}.jobs j \
       JOIN {s}.runs x ON j.id = x.drive_job WHERE x.id = $1 FOR UPDATE OF j) \
     SELECT x.state AS run_state, job.state AS job_state, \
       (SELECT c.seq FROM {s}.checkpoints c WHERE c.run_id = x.id AND c.key = $2) AS key_seq \
     FROM {s}.runs x LEFT JOIN job ON true WHERE x.id = $1 FOR UPDATE OF x";

/// Drop run `$1`'s event waits (a rewind, after [`LOCK_DRIVE`]). A statement of its own: a
/// publish delivering to one of them holds its row, and the delete waits for it, so the next
/// statement's snapshot sees the checkpoint that publish wrote.
const DROP_WAITS: &str = "DELETE FROM {s}.event_waits w WHERE w.run_id = $1";

/// The columns a re-armed drive job (alias `j`) is given: no attempt, no lease, no cancel
/// request, not finished. Its state and run time come with it.
const REARM: &str = "attempt = 0, lease_owner = NULL, lease_token = NULL, lease_expires = NULL, \
     cancel_requested = false, finished_at = NULL";

/// Rewind run `$2` to its checkpoint `$3` (after [`LOCK_DRIVE`] and [`DROP_WAITS`], in their
/// transaction): the checkpoints written after it (greater `seq`) are deleted, the run is
/// running again (output, error, finish time and cancel request cleared) and its drive job is
/// re-armed, due now, with one NOTIFY (`$4`) of its queue.
const REWIND_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     cp AS (SELECT c.seq FROM {s}.checkpoints c WHERE c.run_id = $2 AND c.key = $3), \
     dropped AS (DELETE FROM {s}.checkpoints c USING cp WHERE c.run_id = $2 AND c.seq > cp.seq), \
     reopened AS (UPDATE {s}.runs x SET state = 'running', waiting = NULL, output = NULL, \
       error = NULL, finished_at = NULL, cancel_reason = NULL, updated_at = t.now FROM t, cp \
       WHERE x.id = $2 RETURNING x.drive_job), \
     rearmed AS (UPDATE {s}.jobs j SET state = 'available', run_at = t.now, {rearm} \
       FROM reopened r, t WHERE j.id = r.drive_job RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, q.queue) FROM rearmed q) \
     SELECT EXISTS (SELECT 1 FROM reopened) AS rewound, (SELECT count(*) FROM woke) AS notified";

/// Move run `$2` to version `$3` (after [`LOCK_DRIVE`], in its transaction): a failed or
/// cancelled run is running again (output, error, finish time and cancel request cleared), and
/// its drive job is renamed `$4` and re-armed: due at its current run time when it is available
/// (a suspended run keeps its wake time), else now. One NOTIFY (`$5`) of its queue.
const MIGRATE_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     moved AS (UPDATE {s}.runs x SET version = $3, updated_at = t.now, \
       state = CASE WHEN x.state IN ('failed', 'cancelled') THEN 'running' ELSE x.state END, \
       output = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL ELSE x.output END, \
       error = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL ELSE x.error END, \
       finished_at = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL \
         ELSE x.finished_at END, \
       cancel_reason = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL \
         ELSE x.cancel_reason END \
       FROM t WHERE x.id = $2 AND x.state <> 'completed' RETURNING x.drive_job), \
     rearmed AS (UPDATE {s}.jobs j SET name = $4, state = 'available', \
       run_at = CASE WHEN j.state = 'available' THEN j.run_at ELSE t.now END, {rearm} \
       FROM moved m, t WHERE j.id = m.drive_job RETURNING j.queue), \
     woke AS (SELECT pg_notify($5, q.queue) FROM rearmed q) \
     SELECT EXISTS (SELECT 1 FROM moved) AS migrated, (SELECT count(*) FROM woke) AS notified";

/// The statements of rewinds and migrations, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    lock_drive: SqlStr,
    drop_waits: SqlStr,
    rewind_run: SqlStr,
    migrate_run: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| statement(&template.replace("{rearm}", REARM), quoted);
        Self {
            lock_drive: build(LOCK_DRIVE),
            drop_waits: build(DROP_WAITS),
            rewind_run: build(REWIND_RUN),
            migrate_run: build(MIGRATE_RUN),
        }
    }
}

impl PostgresStore {
    /// Rewind run `id` to its checkpoint `key` ([`REWIND_RUN`]), in one transaction.
    pub(crate) async fn rewind_to(&self, id: RunId, key: &str) -> Result<()> {
        self.timed("rewind_run", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let locked = self.lock_drive(&mut tx, id, Some(key)).await?;
            if locked.key_seq.is_none() {
                return Err(Error::not_found(format!("run {id} has no checkpoint {key:?}")));
            }
            sqlx::query(self.shared.sql.rewind.drop_waits.clone())
                .bind(id.uuid())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            let row = sqlx::query(self.shared.sql.rewind.rewind_run.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(key)
                .bind(self.channel())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            if !get::<bool>(&row, "rewound")? {
                return Err(Error::internal(format!(
                    "postgres: run {id} and its checkpoint {key:?} were locked but not rewound"
                )));
            }
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    /// Move run `id` to `version` and its drive job to `drive_job_name` ([`MIGRATE_RUN`]), in
    /// one transaction.
    pub(crate) async fn move_to_version(
        &self,
        id: RunId,
        version: u32,
        drive_job_name: &str,
    ) -> Result<()> {
        self.timed("migrate_run", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let locked = self.lock_drive(&mut tx, id, None).await?;
            if locked.run_state == RunState::Completed {
                return Err(Error::new(ErrorKind::Conflict, format!("run {id} has completed")));
            }
            let row = sqlx::query(self.shared.sql.rewind.migrate_run.clone())
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

    /// Lock run `id`'s drive job, then the run ([`LOCK_DRIVE`]), in `tx`,
    /// for a rewind or a migration: `NotFound` for an unknown run, `Conflict` while a drive
    /// holds it (its drive job is running). Answers the run's state and the `seq` of its
    /// checkpoint `key`, when asked for and stored.
    async fn lock_drive(
        &self,
        tx: &mut sqlx::PgConnection,
        id: RunId,
        key: Option<&str>,
    ) -> Result<LockedDrive> {
        let row = sqlx::query(self.shared.sql.rewind.lock_drive.clone())
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
}

/// What [`PostgresStore::lock_drive`] found under its locks.
struct LockedDrive {
    /// The run's state.
    run_state: RunState,
    /// The `seq` of the asked-for checkpoint, when it is stored.
    key_seq: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.lock_drive, &q.drop_waits, &q.rewind_run, &q.migrate_run] {
            crate::assert_expanded(sql);
        }
    }
}
