//! Enqueue inside the application's own transaction: the job exists exactly when that
//! transaction commits.
//!
//! # On the store's writer: [`SqliteStore::transaction`]
//!
//! The pattern to use. The application's transaction runs on the store's own writer connection,
//! taken in turn with every other store write (claims, finishes, heartbeats, enqueues), first
//! come, first served: the application's SQL and its jobs commit together, and a worker's call
//! waits for at most the transactions that were already waiting before it. After the commit the
//! store wakes this process's idle workers of the queues enqueued to, so the jobs start at once.
//! [`SqliteTransaction`] implements [`EnqueueTransaction`], so `dispatch_job`'s
//! `EnqueueTransactionExt` enqueues typed jobs in it: `tx.enqueue(&definition, input)`, as on
//! PostgreSQL.
//!
//! Every store call of the process waits while such a transaction runs, so keep it short: no
//! network calls or user input inside. It is bounded by the store's
//! [call timeout](crate::SqliteStoreBuilder::call_timeout), past which it is rolled back and fails with
//! [`ErrorKind::Timeout`](dispatch_core::ErrorKind::Timeout).
//!
//! # On a connection the application owns: [`SqliteStore::enqueue_in`]
//!
//! For transactions that must run on the application's own connection. That connection starts
//! its transaction with `BEGIN IMMEDIATE` (so it takes SQLite's write lock up front instead of
//! failing to upgrade a read transaction later), and while it holds the lock the store's writer
//! waits for it (up to the [busy timeout](crate::SqliteStoreBuilder::busy_timeout)). SQLite's lock wait is not
//! fair: an application that runs such transactions back to back takes the lock again before the
//! store's writer wakes to try, so the workers' claims, finishes and heartbeats can starve and time
//! out. Nothing fires from inside the transaction: no hooks, no wake-ups (the jobs may yet be
//! rolled back). Workers find the jobs at their next poll, or at once when the application calls
//! [`SqliteStore::wake`] after committing.

use async_trait::async_trait;
use dispatch_core::{
    EnqueueTransaction, Enqueued, Error, ErrorKind, NewJob, NewRun, Result, Started,
};
use sqlx::{Connection, SqliteConnection};

use crate::enqueue::{enqueue_batch, validate_batch};
use crate::error::db_error;
use crate::workflow::start_in;
use crate::{BoxFuture, SqliteStore};

/// A transaction on the store's writer connection, handed to the body of
/// [`SqliteStore::transaction`]: run the application's own SQL on [`conn`](Self::conn) and
/// enqueue jobs, typed with `dispatch_job::EnqueueTransactionExt` (`tx.enqueue(&definition,
/// input)`, through [`EnqueueTransaction`]) or built with [`enqueue_jobs`](Self::enqueue_jobs);
/// all of it commits together or not at all.
pub struct SqliteTransaction<'t> {
    conn: &'t mut SqliteConnection,
    store: &'t SqliteStore,
    /// The queues of the jobs created so far, woken after the commit.
    queues: Vec<String>,
}

impl std::fmt::Debug for SqliteTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransaction").field("queues", &self.queues).finish_non_exhaustive()
    }
}

impl SqliteTransaction<'_> {
    /// The writer connection, inside the transaction: run the application's own statements on
    /// it. Leave the transaction itself to the store (no `COMMIT`, `ROLLBACK` or `BEGIN`; use
    /// `sqlx::Connection::begin` for a savepoint).
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.conn
    }

    /// Enqueue `jobs` in this transaction; they exist exactly when it commits. Same validation,
    /// unique keys and per-item results as [`JobStore::enqueue`](dispatch_core::JobStore::enqueue).
    /// For typed jobs use `dispatch_job::EnqueueTransactionExt` (`tx.enqueue(&definition,
    /// input)`). The workers of their queues are woken after the commit.
    pub async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.store.max_payload_bytes)?;
        let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        let results = enqueue_batch(self.conn, jobs, self.store.clock.now()).await?;
        for (result, queue) in results.iter().zip(queues) {
            if !result.is_duplicate() && !self.queues.contains(&queue) {
                self.queues.push(queue);
            }
        }
        Ok(results)
    }

    /// Start a workflow run (with its drive job) in this transaction; it exists exactly when
    /// the transaction commits. Same answers as
    /// [`WorkflowStore::start_run`](dispatch_core::WorkflowStore::start_run); build `run` and
    /// `drive` with `dispatch_workflow::Workflows::new_run`.
    pub async fn start_run(&mut self, run: NewRun, drive: NewJob) -> Result<Started> {
        run.validate(self.store.max_payload_bytes)?;
        validate_batch(std::slice::from_ref(&drive), self.store.max_payload_bytes)?;
        let queue = drive.queue.clone();
        let started = start_in(self.conn, run, drive, self.store.clock.now()).await?;
        if matches!(started, Started::Created(_)) && !self.queues.contains(&queue) {
            self.queues.push(queue);
        }
        Ok(started)
    }
}

#[async_trait]
impl EnqueueTransaction for SqliteTransaction<'_> {
    async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        SqliteTransaction::enqueue_jobs(self, jobs).await
    }
}

impl SqliteStore {
    /// Run `body` in one `BEGIN IMMEDIATE` transaction on the store's writer connection: the
    /// application's own SQL (on [`SqliteTransaction::conn`]) and its jobs (typed through
    /// `dispatch_job::EnqueueTransactionExt`, or [`SqliteTransaction::enqueue_jobs`]) commit
    /// together when `body` returns `Ok`, and are rolled back when it returns `Err`, panics, or
    /// is dropped. After the commit the idle workers of
    /// this process that serve the enqueued queues are woken. This is the way to enqueue inside
    /// an application's transaction (see the [module docs](crate#transactional-enqueue)).
    ///
    /// The transaction takes the store's single writer in turn with every other store write,
    /// and every store call of the process (claims, finishes, heartbeats) waits while it runs:
    /// keep `body` short. It is bounded by the [call timeout](crate::SqliteStoreBuilder::call_timeout), waiting for
    /// the writer included; past it the transaction is rolled back and the call fails with
    /// [`ErrorKind::Timeout`]. Store errors (beginning, committing, the timeout) reach the
    /// caller as `E::from(dispatch_core::Error)`. The body's future must own what it uses (it
    /// may borrow only the transaction): move values in, cloning a `JobDefinition` if need be.
    ///
    /// ```no_run
    /// # type BoxError = Box<dyn std::error::Error + Send + Sync>;
    /// # async fn demo(
    /// #     store: dispatch_store_sqlite::SqliteStore,
    /// #     ship_order: dispatch_job::JobDefinition<i64>,
    /// # ) -> Result<(), BoxError> {
    /// use dispatch_job::EnqueueTransactionExt as _;
    ///
    /// let order_id = 7;
    /// store
    ///     .transaction(move |tx| {
    ///         Box::pin(async move {
    ///             sqlx::query("INSERT INTO orders (id) VALUES (?)")
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
            &'t mut SqliteTransaction<'_>,
        ) -> BoxFuture<'t, std::result::Result<T, E>>,
        E: From<Error>,
    {
        let run = async {
            let mut conn = self.writer.lock().await;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
            let mut open = SqliteTransaction { conn: &mut tx, store: self, queues: Vec::new() };
            let value = body(&mut open).await?;
            let queues = std::mem::take(&mut open.queues);
            tx.commit().await.map_err(db_error)?;
            self.wal.wrote();
            Ok::<_, E>((value, queues))
        };
        let (value, queues) = match tokio::time::timeout(self.call_timeout, run).await {
            Ok(result) => result?,
            Err(elapsed) => {
                let message =
                    format!("sqlite transaction took longer than {:?}", self.call_timeout);
                return Err(Error::new(ErrorKind::Timeout, message).with_source(elapsed).into());
            }
        };
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(value)
    }

    /// Enqueue `jobs` on `conn`, a connection to this store's file inside a transaction the
    /// caller opened (with `BEGIN IMMEDIATE`) and will commit or roll back. Same validation,
    /// unique keys and per-item results as [`JobStore::enqueue`](dispatch_core::JobStore::enqueue).
    ///
    /// Prefer [`transaction`](Self::transaction), which runs the application's transaction on
    /// the store's own writer. Here the application's connection competes with the store's
    /// writer for SQLite's write lock, and that contest is not fair: transactions run back to
    /// back on `conn` can hold the workers' claims, finishes and heartbeats off for longer than
    /// their timeouts (a busy error past the [busy timeout](crate::SqliteStoreBuilder::busy_timeout), transient, or
    /// a call timeout). Use it only for transactions that must run on a connection the
    /// application owns, and keep them short and spaced. Nothing wakes the workers: call
    /// [`wake`](Self::wake) after committing.
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
    ///
    /// Prefer [`SqliteTransaction::start_run`] inside [`transaction`](Self::transaction): the
    /// starvation risk of [`enqueue_in`](Self::enqueue_in) applies here too.
    pub async fn start_run_in(
        &self,
        conn: &mut SqliteConnection,
        run: NewRun,
        drive: NewJob,
    ) -> Result<Started> {
        run.validate(self.max_payload_bytes)?;
        validate_batch(std::slice::from_ref(&drive), self.max_payload_bytes)?;
        start_in(conn, run, drive, self.clock.now()).await
    }
}

impl SqliteStore {
    /// Wake this process's idle workers of `queue` now, for example right after committing a
    /// transaction that enqueued through [`enqueue_in`](Self::enqueue_in). Workers in other
    /// processes are not reached; they find the jobs at their next poll.
    /// [`transaction`](Self::transaction) does this by itself.
    pub fn wake(&self, queue: &str) {
        self.wakeups.notify([queue]);
    }
}
