//! Enqueue inside the application's own transaction: the job exists exactly when that
//! transaction commits.
//!
//! The application opens its own connection to the same file and starts its transaction with
//! `BEGIN IMMEDIATE` (so it takes SQLite's write lock up front instead of failing to upgrade a
//! read transaction later). While it holds that lock, the store's own writer waits for it (up to
//! the busy timeout), so keep such transactions short. Nothing fires from inside the
//! transaction: no hooks, no wake-ups. Workers find the jobs at their next claim after the
//! commit (a local worker at its next poll or next-due wake-up; call
//! `dispatch_job::JobClient`'s wake-up path yourself for less latency).

use dispatch_core::{Enqueued, NewJob, Result};
use sqlx::SqliteConnection;

use crate::SqliteStore;
use crate::enqueue::{enqueue_batch, validate_batch};

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
}
