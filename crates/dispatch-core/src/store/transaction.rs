//! An open store transaction that jobs can be enqueued in: [`EnqueueTransaction`].
//!
//! Stores that can write jobs inside the application's own transaction (SQLite, PostgreSQL) hand
//! the application a value of their own for it (`SqliteTransaction`, `PostgresTransaction`),
//! with the connection for the application's SQL. This trait is what those values share, so
//! that the typed enqueue of `dispatch-job` (its `EnqueueTransactionExt`, implemented for every
//! `EnqueueTransaction`) reads the same on every store, while the transaction itself, its
//! connection type and when it commits stay the store's.

use async_trait::async_trait;

use crate::{Enqueued, NewJob, Result};

/// An open transaction of a store in which jobs can be enqueued: they exist exactly when the
/// transaction commits, together with whatever else it wrote.
///
/// Implemented by the stores' transaction types; applications call the typed methods of
/// `dispatch_job::EnqueueTransactionExt` instead of this one.
#[async_trait]
pub trait EnqueueTransaction: Send {
    /// Enqueue `jobs` in this transaction, answering one result per job in order. Same
    /// validation, unique keys and per-item results as
    /// [`JobStore::enqueue`](crate::JobStore::enqueue).
    async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;
}
