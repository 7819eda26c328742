//! Enqueue (and start workflow runs) inside the application's own transaction: the jobs exist
//! exactly when that transaction commits, and so does their wake-up.
//!
//! Open the transaction on any connection to the store's database (the store's own
//! [`pool`](PostgresStore::pool) is fine), do the application's writes, call
//! [`PostgresStore::enqueue_in`], then commit or roll back. The `NOTIFY` that wakes workers is
//! issued inside the transaction, so PostgreSQL delivers it only on commit; a worker's claim
//! never sees an uncommitted job. Nothing else fires from inside the transaction (no hooks).
//!
//! A reused job ID answers `Conflict` without an SQL error, so the transaction stays usable.
//! Other failures (a lost connection, a timeout) leave the transaction failed: roll it back.

use dispatch_core::{Enqueued, NewJob, NewRun, Result, Started};
use sqlx::PgConnection;

use crate::PostgresStore;

impl PostgresStore {
    /// Enqueue `jobs` on `conn`, a connection inside a transaction the caller opened and will
    /// commit or roll back. Same validation, unique keys and per-item results as
    /// [`JobStore::enqueue`](dispatch_core::JobStore::enqueue); times come from this store's
    /// clock (the database clock: the transaction's start).
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        self.timed("enqueue_in", self.enqueue_on(conn, &jobs)).await
    }

    /// Start a workflow run (with its drive job) on `conn`, inside a transaction the caller
    /// opened: the run exists exactly when that transaction commits (its wake-up too). Same
    /// answers as [`WorkflowStore::start_run`](dispatch_core::WorkflowStore::start_run); build
    /// `run` and `drive` with `dispatch_workflow::Workflows::new_run`.
    pub async fn start_run_in(
        &self,
        conn: &mut PgConnection,
        run: NewRun,
        drive: NewJob,
    ) -> Result<Started> {
        self.start_on(conn, run, drive).await
    }
}
