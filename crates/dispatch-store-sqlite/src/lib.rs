//! The SQLite Dispatch store: jobs, their dead letter queue and workflow runs in one SQLite file.
//!
//! Use it for single-node deployments, tools and tests that need jobs to survive a restart. It is
//! not a shared store for a fleet of machines: every process using it must see the same local
//! file (several processes on one host are fine; a network file system is not).
//!
//! # Concurrency
//!
//! All writes go through one writer connection, each in a `BEGIN IMMEDIATE` transaction, taken in
//! turn (first come, first served), so the store's own calls never see `SQLITE_BUSY` from one
//! another. Reads (`get_job`, `list_jobs`, `count_jobs`, `list_dlq`, `get_dlq`, `get_run`,
//! `list_runs`, `checkpoints`) use a small pool of reader connections and run beside the writer
//! (WAL). Every call has a timeout ([`DEFAULT_CALL_TIMEOUT`]) and fails with
//! [`ErrorKind::Timeout`] past it. A connection outside the store (another process, or the
//! application's own) that holds the write lock past the
//! [busy timeout](SqliteStore::busy_timeout) makes a write fail with [`ErrorKind::Unavailable`];
//! both kinds are transient, so the runtime retries such calls.
//!
//! # Workflows
//!
//! Workflow runs ([`WorkflowStore`](dispatch_core::WorkflowStore)) live in their own tables
//! (`runs`, `checkpoints`, `event_waits`, `kept_events`) beside the jobs, written by the same
//! writer, so each multi-part step is one transaction: a run and its drive job are created
//! together; a suspend registers its waits, marks the run suspended and snoozes the drive job
//! together; a delivery writes the wait's checkpoint and makes the drive job due together; and a
//! drive job that dies takes its run with it (failed, with the job's last error) in the
//! transaction that writes its DLQ entry. Every drive call checks its lease inside its own
//! transaction and writes nothing when the lease no longer holds the drive job.
//!
//! # Wake-ups
//!
//! A call that makes jobs available (enqueue, DLQ replay, a run's start, an event delivered to a
//! suspended run) wakes the idle workers of this process at once
//! ([`JobStore::wakeups`](dispatch_core::JobStore::wakeups)), whichever clone of the store they
//! use. Workers in other processes sharing the file find new jobs at their next poll.
//!
//! # Transactional enqueue
//!
//! To create jobs exactly when the application's own writes commit, run the application's
//! transaction on the store's writer with [`SqliteStore::transaction`]: the body gets a
//! [`SqliteTransaction`] with the writer connection for the application's SQL
//! ([`conn`](SqliteTransaction::conn)) and [`enqueue`](SqliteTransaction::enqueue) for the jobs
//! (typed ones built with `dispatch_job::JobDefinition::new_job`); all of it commits together,
//! and the workers of this process are woken after the commit. The transaction takes its turn
//! with the workers' calls, so a busy application can not starve them, but every store call
//! waits while it runs: keep it short (it is bounded by the call timeout).
//!
//! [`SqliteStore::enqueue_in`] writes jobs in a transaction on a connection the application owns
//! instead. That connection competes with the store's writer for SQLite's file lock, a contest
//! SQLite does not run fairly: back-to-back transactions there can starve the workers' claims,
//! finishes and heartbeats. Use it only when the transaction must run on that connection.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(store: dispatch_store_sqlite::SqliteStore) -> Result<(), BoxError> {
//! use dispatch_core::NewJob;
//!
//! let order_id = 7;
//! store
//!     .transaction(|tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO orders (id) VALUES (?)")
//!                 .bind(order_id)
//!                 .execute(tx.conn())
//!                 .await?;
//!             // Typed: `ship_order.new_job(&order_id, EnqueueOptions::default())?`.
//!             let job = NewJob::new("ship_order", order_id.to_string().into_bytes());
//!             tx.enqueue(vec![job]).await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a committed call survives a crash of
//! the process, but the last commits before a power loss or an operating system crash may be
//! lost (the database itself stays consistent). The WAL is checkpointed by a task of the store
//! on a connection of its own, shortly after commits, so the writer does not stop for it.
//!
//! ```no_run
//! # async fn demo() -> dispatch_core::Result<()> {
//! use dispatch_store_sqlite::SqliteStore;
//! let store = SqliteStore::open("jobs.db").await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```

mod claim;
mod dlq;
mod enqueue;
mod error;
mod events;
mod finish;
mod group;
mod job;
mod migrate;
mod rewind;
mod row;
mod run;
mod transaction;
mod wal_checkpoint;
mod workflow;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{Error, ErrorKind, Result, SharedClock, SystemClock};

use error::{db_error, open_error};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::Mutex;

pub use migrate::SCHEMA_VERSION;
pub use transaction::SqliteTransaction;

/// How long one store call may take before it fails with a timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections in the pool.
const READERS: u32 = 3;

/// The SQLite store. Cheap to clone: clones share the connections.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Arc<Mutex<SqliteConnection>>,
    /// Checkpoint writes waiting for the next group commit.
    writes: Arc<group::checkpoints::WriteQueue>,
    /// Run ends waiting for the next group commit of ends.
    ends: Arc<group::run_end::EndQueue>,
    readers: SqlitePool,
    clock: SharedClock,
    max_payload_bytes: usize,
    call_timeout: Duration,
    /// Wakes this process's workers after commits that make jobs available.
    wakeups: dispatch_core::WakeupHub,
    /// Checkpoints the WAL off the writer, told of every commit.
    wal: Arc<wal_checkpoint::Checkpointer>,
}

/// Run `connect` again while it fails with "database is locked": switching a new file to WAL
/// needs a lock that SQLite does not wait for, so two processes opening one new file at once can
/// see it. Bounded by [`BUSY_TIMEOUT`].
async fn retry_busy<T, F, Fut>(mut connect: F) -> std::result::Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match connect().await {
            Err(sqlx::Error::Database(e))
                if e.message().contains("locked") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

impl SqliteStore {
    /// Open (creating when missing) the database at `path_or_url`, a file path or a
    /// `sqlite:` URL, and bring its schema up to date with [`migrate`](Self::migrate).
    ///
    /// Fails with `Unavailable` when the file can not be opened or written (read-only), and with
    /// `IncompatibleSchema` when it is not a Dispatch database or was written by a newer version.
    pub async fn open(path_or_url: &str) -> Result<Self> {
        let options = if path_or_url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path_or_url).map_err(|e| {
                Error::invalid_input(format!("bad SQLite URL {path_or_url:?}")).with_source(e)
            })?
        } else {
            SqliteConnectOptions::new().filename(path_or_url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // The writer checkpoints only to reset the log (see `wal_checkpoint`).
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", wal_checkpoint::WRITER_AUTOCHECKPOINT_PAGES.to_string());
        let writer = retry_busy(|| writer_options.connect())
            .await
            .map_err(|e| open_error(path_or_url, e))?;
        let pool = SqlitePoolOptions::new().max_connections(READERS);
        let readers = retry_busy(|| pool.clone().connect_with(options.clone()))
            .await
            .map_err(|e| open_error(path_or_url, e))?;
        let store = Self {
            writer: Arc::new(Mutex::new(writer)),
            writes: Arc::default(),
            ends: Arc::default(),
            readers,
            clock: Arc::new(SystemClock),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            wakeups: dispatch_core::WakeupHub::new(),
            wal: Arc::new(wal_checkpoint::Checkpointer::start(options)),
        };
        store.migrate().await.map_err(|e| {
            if e.kind() == ErrorKind::Unavailable {
                Error::unavailable(format!("can not write {path_or_url:?}: {}", e.message()))
                    .with_source(e)
            } else {
                e
            }
        })?;
        Ok(store)
    }

    /// Read time from `clock` (tests inject a manual clock); the default is the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Reject payloads larger than `bytes` (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Fail calls that take longer than `timeout` (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Wait at most `timeout` (default 10 s) for a write lock that another connection holds
    /// (another process, or the application's own connection of [`enqueue_in`](Self::enqueue_in))
    /// before a write fails with [`ErrorKind::Unavailable`], which is transient: the runtime
    /// retries it. Keep it below the [call timeout](Self::call_timeout), which otherwise ends the
    /// wait first (with [`ErrorKind::Timeout`], transient too). It applies to the writer
    /// connection, which every clone of this store shares.
    pub async fn busy_timeout(self, timeout: Duration) -> Result<Self> {
        let millis = timeout.as_millis().min(i32::MAX as u128);
        // Safe: the text holds only fixed SQL and an integer.
        let sql = sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {millis}"));
        self.timed("busy_timeout", async {
            let mut conn = self.writer.lock().await;
            sqlx::query(sql).execute(&mut *conn).await.map_err(db_error)?;
            Ok(())
        })
        .await?;
        Ok(self)
    }

    /// Run `fut` under the call timeout.
    async fn timed<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(result) => result,
            Err(elapsed) => Err(Error::new(
                ErrorKind::Timeout,
                format!("sqlite {what} took longer than {:?}", self.call_timeout),
            )
            .with_source(elapsed)),
        }
    }

    /// Run `body` in one `BEGIN IMMEDIATE` transaction on the writer connection, under the call
    /// timeout: committed when it returns `Ok`, rolled back otherwise.
    async fn write<T, F>(&self, what: &str, body: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>>,
    {
        self.timed(what, async {
            let mut conn = self.writer.lock().await;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
            let value = body(&mut tx).await?;
            tx.commit().await.map_err(db_error)?;
            self.wal.wrote();
            Ok(value)
        })
        .await
    }
}

/// A boxed future that may borrow for `'a`, as the body of [`SqliteStore::transaction`] returns
/// it: `Box::pin(async move { … })`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use dispatch_core::{ErrorKind, JobStore, NewJob};

    use super::*;

    #[tokio::test]
    async fn a_call_that_waits_past_its_timeout_fails_with_timeout() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slow.db");
        let store = SqliteStore::open(path.to_str().unwrap())
            .await
            .unwrap()
            .call_timeout(Duration::from_millis(50));
        // Another call holds the writer.
        let held = store.writer.lock().await;
        let err = store.enqueue(vec![NewJob::new("a", vec![])]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        drop(held);
        store.enqueue(vec![NewJob::new("a", vec![])]).await.unwrap();
    }
}
