//! Enqueue (and start workflow runs) inside a transaction with the application's own writes:
//! the jobs exist exactly when that transaction commits, and so does their wake-up.
//!
//! # A transaction of the store: [`PostgresStore::transaction`]
//!
//! The store opens a transaction on a connection of its [`pool`](PostgresStore::pool) and hands
//! the body a [`PostgresTransaction`]: the application's SQL runs on
//! [`conn`](PostgresTransaction::conn), typed jobs are enqueued with `dispatch_job`'s
//! `EnqueueTransactionExt` (`tx.enqueue(&definition, input)`, through [`EnqueueTransaction`]).
//! It commits when the body returns `Ok` and rolls back when it returns `Err`, all within the
//! store's call timeout.
//!
//! # The application's own transaction: [`PostgresStore::in_transaction`]
//!
//! Where the application opens (and commits) the transaction itself, on any connection to the
//! store's database, [`PostgresStore::in_transaction`] wraps that connection in a
//! [`PostgresTransaction`] for the same typed calls; [`PostgresStore::enqueue_in`] takes untyped
//! jobs on the connection directly.
//!
//! Either way the `NOTIFY` that wakes workers is issued inside the transaction, so PostgreSQL
//! delivers it only on commit; a worker's claim never sees an uncommitted job. Nothing else
//! fires from inside the transaction (no hooks). A reused job ID answers `Conflict` without an
//! SQL error, so the transaction stays usable. Other failures (a lost connection, a timeout)
//! leave the transaction failed: roll it back.

use async_trait::async_trait;
use dispatch_core::{
    EnqueueTransaction, Enqueued, Error, ErrorKind, NewJob, NewRun, Result, Started,
};
use sqlx::PgConnection;

use crate::{BoxFuture, PostgresStore, db_error};

/// An open transaction on a connection to the store's database: run the application's own SQL
/// on [`conn`](Self::conn) and enqueue jobs, typed with `dispatch_job::EnqueueTransactionExt`
/// (`tx.enqueue(&definition, input)`) or built with [`enqueue_jobs`](Self::enqueue_jobs); all
/// of it commits together or not at all. Handed to the body of
/// [`PostgresStore::transaction`], or made by [`PostgresStore::in_transaction`] for a
/// transaction the application opened.
pub struct PostgresTransaction<'t> {
    conn: &'t mut PgConnection,
    store: &'t PostgresStore,
}

impl std::fmt::Debug for PostgresTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransaction")
            .field("schema", &self.store.schema())
            .finish_non_exhaustive()
    }
}

impl PostgresTransaction<'_> {
    /// The connection, inside the transaction: run the application's own statements on it.
    /// In the body of [`PostgresStore::transaction`], leave the transaction itself to the store
    /// (no `COMMIT`, `ROLLBACK` or `BEGIN`; use `sqlx::Connection::begin` for a savepoint).
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// Enqueue `jobs` in this transaction; they (and their wake-up) exist exactly when it
    /// commits. Same validation, unique keys and per-item results as
    /// [`JobStore::enqueue`](dispatch_core::JobStore::enqueue); times come from the store's
    /// clock (the database clock: the transaction's start). For typed jobs use
    /// `dispatch_job::EnqueueTransactionExt` (`tx.enqueue(&definition, input)`).
    pub async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.store.enqueue_in(self.conn, jobs).await
    }

    /// Start a workflow run (with its drive job) in this transaction; it exists exactly when
    /// the transaction commits. Same answers as
    /// [`WorkflowStore::start_run`](dispatch_core::WorkflowStore::start_run); build `run` and
    /// `drive` with `dispatch_workflow::Workflows::new_run`.
    pub async fn start_run(&mut self, run: NewRun, drive: NewJob) -> Result<Started> {
        self.store.start_run_in(self.conn, run, drive).await
    }
}

#[async_trait]
impl EnqueueTransaction for PostgresTransaction<'_> {
    async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        PostgresTransaction::enqueue_jobs(self, jobs).await
    }
}

impl PostgresStore {
    /// Run `body` in one transaction on a connection of the store's pool: the application's own
    /// SQL (on [`PostgresTransaction::conn`]) and its jobs (typed through
    /// `dispatch_job::EnqueueTransactionExt`, or [`PostgresTransaction::enqueue_jobs`]) commit
    /// together when `body` returns `Ok`, and are rolled back when it returns `Err`, panics, or
    /// is dropped. Workers are woken by the jobs' `NOTIFY`, which PostgreSQL delivers on commit.
    ///
    /// The whole transaction, waiting for a connection included, is bounded by the call
    /// timeout; past it the transaction is rolled back and the call fails with
    /// [`ErrorKind::Timeout`]. Store errors (beginning, committing, the timeout) reach the
    /// caller as `E::from(dispatch_core::Error)`. The body's future must own what it uses (it
    /// may borrow only the transaction): move values in, cloning a `JobDefinition` if need be.
    ///
    /// ```no_run
    /// # type BoxError = Box<dyn std::error::Error + Send + Sync>;
    /// # async fn demo(
    /// #     store: dispatch_store_postgres::PostgresStore,
    /// #     ship_order: dispatch_job::JobDefinition<i64>,
    /// # ) -> Result<(), BoxError> {
    /// use dispatch_job::EnqueueTransactionExt as _;
    ///
    /// let order_id = 7_i64;
    /// store
    ///     .transaction(move |tx| {
    ///         Box::pin(async move {
    ///             sqlx::query("INSERT INTO orders (id) VALUES ($1)")
    ///                 .bind(order_id)
    ///                 .execute(tx.conn())
    ///                 .await?;
    ///             // The body owns what it uses: move in (a clone of) the definition.
    ///             tx.enqueue(&ship_order, order_id).await?;
    ///             Ok::<_, BoxError>(())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transaction<T, E, F>(&self, body: F) -> std::result::Result<T, E>
    where
        F: for<'t> FnOnce(
            &'t mut PostgresTransaction<'_>,
        ) -> BoxFuture<'t, std::result::Result<T, E>>,
        E: From<Error>,
    {
        let run = async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let mut open = PostgresTransaction { conn: &mut tx, store: self };
            match body(&mut open).await {
                Ok(value) => {
                    tx.commit().await.map_err(db_error)?;
                    Ok(value)
                }
                Err(err) => {
                    // The body's error is the answer; a failed rollback ends the transaction
                    // anyway (the pool drops a connection it can not reset).
                    let _ = tx.rollback().await;
                    Err(err)
                }
            }
        };
        match tokio::time::timeout(self.call_timeout, run).await {
            Ok(result) => result,
            Err(elapsed) => {
                let message =
                    format!("postgres transaction took longer than {:?}", self.call_timeout);
                Err(Error::new(ErrorKind::Timeout, message).with_source(elapsed).into())
            }
        }
    }

    /// Wrap `conn`, a connection inside a transaction the application opened and will commit or
    /// roll back, for the typed calls of `dispatch_job::EnqueueTransactionExt`: the jobs exist
    /// exactly when that transaction commits.
    ///
    /// ```no_run
    /// # type BoxError = Box<dyn std::error::Error + Send + Sync>;
    /// # async fn demo(
    /// #     store: dispatch_store_postgres::PostgresStore,
    /// #     ship_order: dispatch_job::JobDefinition<i64>,
    /// # ) -> Result<(), BoxError> {
    /// use dispatch_job::EnqueueTransactionExt as _;
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (7)").execute(&mut *tx).await?;
    /// store.in_transaction(&mut tx).enqueue(&ship_order, 7).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn in_transaction<'t>(&'t self, conn: &'t mut PgConnection) -> PostgresTransaction<'t> {
        PostgresTransaction { conn, store: self }
    }

    /// Enqueue `jobs` on `conn`, a connection inside a transaction the caller opened and will
    /// commit or roll back. Same validation, unique keys and per-item results as
    /// [`JobStore::enqueue`](dispatch_core::JobStore::enqueue); times come from this store's
    /// clock (the database clock: the transaction's start). For typed jobs, see
    /// [`in_transaction`](Self::in_transaction).
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
