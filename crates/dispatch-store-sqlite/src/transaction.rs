//! Enqueue inside the application's own transaction: the job exists exactly when that
//! transaction commits.
//!
//! The application opens its own connection to the same file and starts its transaction with
//! `BEGIN IMMEDIATE` (so it takes SQLite's write lock up front instead of failing to upgrade a
//! read transaction later). While it holds that lock, the store's own writer waits for it (up to
//! the busy timeout), so keep such transactions short. Nothing fires from inside the
//! transaction: no hooks, no wake-ups (the jobs may yet be rolled back). Workers find the jobs at
//! their next claim after the commit: at their next poll, or at once when the application calls
//! [`SqliteStore::wake`] after committing.

use dispatch_core::{Enqueued, NewJob, NewRun, Result, Started};
use sqlx::SqliteConnection;

use crate::SqliteStore;
use crate::enqueue::{enqueue_batch, validate_batch};
use crate::workflow::start_in;

impl SqliteStore {
    /// Enqueue `jobs` on `conn`, a connection to this store's file inside a transaction the
    /// caller opened (with `BEGIN IMMEDIATE`) and will commit or roll back. Same validation,
    /// unique keys and per-item results as [`JobStore::enqueue`](dispatch_core::JobStore::enqueue).
    pub async fn enqueue_in(
        &self,
        conn: &mut SqliteConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.max_payload_bytes)?;
        let now = self.clock.now();
        enqueue_batch(conn, jobs, now).await
    }

    /// Start a workflow run (with its drive job) on `conn`, inside a transaction the caller
    /// opened with `BEGIN IMMEDIATE`: the run exists exactly when that transaction commits. Same
    /// answers as [`WorkflowStore::start_run`](dispatch_core::WorkflowStore::start_run); build
    /// `run` and `drive` with `dispatch_workflow::Workflows::new_run`. Call
    /// [`wake`](Self::wake) with the drive job's queue after committing for a prompt start.
    pub async fn start_run_in(
        &self,
        conn: &mut SqliteConnection,
        run: NewRun,
        drive: NewJob,
    ) -> Result<Started> {
        validate_batch(std::slice::from_ref(&drive), self.max_payload_bytes)?;
        start_in(conn, run, drive, self.clock.now()).await
    }
}

impl SqliteStore {
    /// Wake this process's idle workers of `queue` now, for example right after committing a
    /// transaction that enqueued through [`enqueue_in`](Self::enqueue_in). Workers in other
    /// processes are not reached; they find the jobs at their next poll.
    pub fn wake(&self, queue: &str) {
        self.wakeups.notify([queue]);
    }
}
