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
//! another. Reads (`get_job`, `list_jobs`, `count_jobs`, `list_dlq`, `get_dlq`, `count_dlq`,
//! `get_run`, `list_runs`, `checkpoints`, `get_cron`, `find_cron`, `list_cron`, `due_cron`,
//! `queue_flow`, `list_queue_flows`, `next_due`) use a small pool of reader connections and run beside the writer (WAL). Every call has a timeout
//! ([`DEFAULT_CALL_TIMEOUT`]) and fails with
//! [`ErrorKind::Timeout`] past it. A connection outside the store (another process, or the
//! application's own) that holds the write lock past the
//! [busy timeout](SqliteStoreBuilder::busy_timeout) makes a write fail with [`ErrorKind::Unavailable`];
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
//! # Flow control
//!
//! Queue configs ([`FlowStore`](dispatch_core::FlowStore): fleet-wide running limits, rates,
//! tenant limits and lanes, pauses) and concurrency keys are enforced by the claim, inside its
//! own write transaction: the writer is the one door every claim on the file goes through, so
//! two claims never both pass a full gate. A claim of queues without configs is the plain claim,
//! one statement as before (it checks, in that statement, that none of its queues has a
//! config). A job a gated claim started holds a running slot in each of its gates until it
//! leaves running by any path; a trigger on the jobs table gives the slots back, so finishes,
//! rescues, sweeps and workflow suspends need no code of their own for it. Tenant lanes are read
//! through an index of available jobs with a tenant (a skip scan finds the tenants); the lane of
//! jobs without a tenant is read from the claim index past at most
//! [`LANE_SCAN_LIMIT`](dispatch_core::flow::LANE_SCAN_LIMIT) entries.
//!
//! # Wake-ups
//!
//! A call that makes jobs available (enqueue, DLQ replay, a cron fire, a run's start, an event
//! delivered to a suspended run) wakes the idle workers of this process at once
//! ([`JobStore::wakeups`](dispatch_core::JobStore::wakeups)), whichever clone of the store they
//! use. Workers in other processes sharing the file find new jobs at their next poll.
//!
//! # Opening and migrating
//!
//! [`SqliteStore::open`] opens the file (creating it) and brings its schema up to date: the one
//! call a single process needs. Where the schema is migrated once, by a deploy step, the
//! application opens with [`SqliteStore::builder`] and
//! [`migrate(false)`](SqliteStoreBuilder::migrate): that runs no DDL and creates no file, and fails with [`ErrorKind::NotMigrated`] until the
//! deploy step has run [`SqliteStore::migrate`].
//!
//! ```no_run
//! # async fn demo() -> dispatch_core::Result<()> {
//! use dispatch_store_sqlite::{SqliteStore, Synchronous};
//!
//! // The deploy step.
//! SqliteStore::open("jobs.db").await?.migrate().await?;
//! // The application.
//! let store = SqliteStore::builder("jobs.db")
//!     .migrate(false)
//!     .synchronous(Synchronous::Full)
//!     .build()
//!     .await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! # Transactional enqueue
//!
//! To create jobs exactly when the application's own writes commit, run the application's
//! transaction on the store's writer with [`SqliteStore::transaction`]: the body gets a
//! [`SqliteTransaction`] with the writer connection for the application's SQL
//! ([`conn`](SqliteTransaction::conn)) and enqueues typed jobs with `dispatch_job`'s
//! `EnqueueTransactionExt` (`tx.enqueue(&definition, input)`); all of it commits together,
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
//! # async fn demo(
//! #     store: dispatch_store_sqlite::SqliteStore,
//! #     ship_order: dispatch_job::JobDefinition<i64>,
//! # ) -> Result<(), BoxError> {
//! use dispatch_job::EnqueueTransactionExt as _;
//!
//! let order_id = 7;
//! store
//!     .transaction(move |tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO orders (id) VALUES (?)")
//!                 .bind(order_id)
//!                 .execute(tx.conn())
//!                 .await?;
//!             // The body owns what it uses: move in (a clone of) the definition.
//!             tx.enqueue(&ship_order, order_id).await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Retention
//!
//! The store prunes finished work ([`RetentionStore`](dispatch_core::RetentionStore)): the
//! leader calls `prune` under its term, and each call is one short write transaction removing at
//! most `limit` rows of each kind, oldest first, by the rules of [`dispatch_core::retention`].
//! Every kind is found through an index holding only what could be pruned, so a call that finds
//! nothing old enough costs the same on a large database as on an empty one. A call holds the
//! writer while it runs (claims and finishes wait for it): keep `limit` in the hundreds to a
//! thousand and call again while the report says `more`.
//!
//! SQLite does not give freed space back to the file system: after a prune the file keeps its
//! size and the freed pages go on a free list, which the next inserts take before the file
//! grows. A store that prunes as it goes therefore stays at the size of the work it keeps (plus
//! its busiest backlog), and does not grow for ever. The store does not turn on `auto_vacuum`:
//! it can only be set on an empty database (an existing file needs a full `VACUUM` to switch),
//! and `incremental_vacuum` moves pages under the one writer for space the next inserts reuse
//! anyway. To shrink the file after a one-off backlog, stop the application and run `VACUUM`
//! (it rewrites the whole file and needs as much free disk again).
//!
//! # Durability
//!
//! The database runs in WAL mode, by default with `synchronous=NORMAL` ([`Synchronous::Normal`]):
//! a committed call survives a crash of the process, but the last commits before a power loss or
//! an operating system crash may be lost (the database itself stays consistent).
//! [`Synchronous::Full`] keeps those too, at the price of an fsync per commit
//! ([`SqliteStoreBuilder::synchronous`]). The WAL is checkpointed by a task of the store on a
//! connection of its own, shortly after commits, so the writer does not stop for it.
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
mod cluster;
mod cron;
mod dlq;
mod enqueue;
mod error;
mod events;
mod finish;
mod flow;
mod group;
mod job;
mod migrate;
mod retention;
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
/// The `sqlx` this store is built on: run the application's own SQL in a store transaction
/// (`tx.conn()`) with it, so the versions always match.
pub use sqlx;
pub use transaction::SqliteTransaction;

/// How long one store call may take before it fails with a timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection waits for another process's lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections in the pool unless told otherwise.
pub const DEFAULT_READERS: u32 = 3;

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

/// How hard SQLite works to make a commit durable (its `synchronous` setting), in WAL mode.
///
/// Every mode keeps the database consistent; they differ in which crashes the last commits
/// survive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=NORMAL`, the default: a committed transaction survives a crash of the
    /// process, but the last commits before a power loss or an operating system crash may be
    /// lost. The WAL is synced at checkpoints only, so a commit costs no fsync.
    #[default]
    Normal,
    /// `synchronous=FULL`: a committed transaction survives a power loss or an operating system
    /// crash too, at the price of an fsync of the WAL per commit.
    Full,
}

impl Synchronous {
    fn pragma(self) -> SqliteSynchronous {
        match self {
            Self::Normal => SqliteSynchronous::Normal,
            Self::Full => SqliteSynchronous::Full,
        }
    }
}

/// Options for [`SqliteStore::builder`]: whether to migrate, how many readers, how durable a
/// commit is, and the store's limits. Finish with [`build`](Self::build).
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SqliteStoreBuilder {
    path_or_url: String,
    migrate: bool,
    readers: u32,
    synchronous: Synchronous,
    call_timeout: Duration,
    busy_timeout: Duration,
    max_payload_bytes: usize,
}

impl SqliteStoreBuilder {
    /// Whether [`build`](Self::build) brings the schema up to date (default `true`). With
    /// `false` it runs no DDL and does not create a missing file: it only checks the database
    /// has this version's schema, and fails with [`ErrorKind::NotMigrated`] when the file does
    /// not exist or its schema is missing or older (migrate it first, with
    /// [`SqliteStore::open`] or [`SqliteStore::migrate`], for example in a deploy step).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Keep `n` reader connections (default [`DEFAULT_READERS`], at least 1) for the calls that
    /// only read (lookups and listings); writes go to the one writer connection.
    pub fn readers(mut self, n: u32) -> Self {
        self.readers = n.max(1);
        self
    }

    /// How durable a commit is (default [`Synchronous::Normal`]; see [`Synchronous`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Fail calls that take longer than `timeout` (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Wait at most `timeout` (default [`DEFAULT_BUSY_TIMEOUT`]) for a write lock another
    /// connection holds (another process, or the application's own connection of
    /// [`SqliteStore::enqueue_in`]) before a write fails with [`ErrorKind::Unavailable`], which
    /// is transient: the runtime retries it. Keep it below the
    /// [call timeout](Self::call_timeout), which otherwise ends the wait first (with
    /// [`ErrorKind::Timeout`], transient too).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Reject payloads larger than `bytes` (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Open the database, and migrate it or check it is migrated (see
    /// [`migrate`](Self::migrate)).
    ///
    /// Fails with `InvalidInput` for a malformed URL, `Unavailable` when the file can not be
    /// opened or written (read-only), `IncompatibleSchema` when it is not a Dispatch database or
    /// was written by a newer version, and, when not migrating, `NotMigrated` when its schema is
    /// missing or older than this version.
    pub async fn build(self) -> Result<SqliteStore> {
        let options = self.connect_options()?;
        // The writer checkpoints only to reset the log (see `wal_checkpoint`).
        let writer_options = options
            .clone()
            .pragma("wal_autocheckpoint", wal_checkpoint::WRITER_AUTOCHECKPOINT_PAGES.to_string());
        let writer = retry_busy(self.busy_timeout, || writer_options.connect())
            .await
            .map_err(|e| self.open_error(&options, e))?;
        let pool = SqlitePoolOptions::new().max_connections(self.readers);
        let readers = retry_busy(self.busy_timeout, || pool.clone().connect_with(options.clone()))
            .await
            .map_err(|e| self.open_error(&options, e))?;
        let store = SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            writes: Arc::default(),
            ends: Arc::default(),
            readers,
            clock: Arc::new(SystemClock),
            max_payload_bytes: self.max_payload_bytes,
            call_timeout: self.call_timeout,
            wakeups: dispatch_core::WakeupHub::new(),
            wal: Arc::new(wal_checkpoint::Checkpointer::start(options)),
        };
        if self.migrate {
            store.migrate().await.map_err(|e| self.write_error(e))?;
        } else {
            store.check_migrated(&self.path_or_url).await?;
        }
        Ok(store)
    }

    /// The options every connection of the store opens with.
    fn connect_options(&self) -> Result<SqliteConnectOptions> {
        let path_or_url = &self.path_or_url;
        let options = if path_or_url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path_or_url).map_err(|e| {
                Error::invalid_input(format!("bad SQLite URL {path_or_url:?}")).with_source(e)
            })?
        } else {
            SqliteConnectOptions::new().filename(path_or_url)
        };
        Ok(options
            // Only migrating creates the database: a producer must not make an empty file.
            .create_if_missing(self.migrate)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(self.synchronous.pragma())
            .busy_timeout(self.busy_timeout)
            .foreign_keys(true))
    }

    /// A failed connect as a typed error: without migrating, a file that does not exist is a
    /// database nobody migrated.
    fn open_error(&self, options: &SqliteConnectOptions, err: sqlx::Error) -> Error {
        if !self.migrate && !options.get_filename().exists() {
            return migrate::not_migrated(&self.path_or_url, "the database file does not exist")
                .with_source(err);
        }
        open_error(&self.path_or_url, err)
    }

    /// A failed migration, naming the file when it could not be written.
    fn write_error(&self, err: Error) -> Error {
        if err.kind() == ErrorKind::Unavailable {
            let message = format!("can not write {:?}: {}", self.path_or_url, err.message());
            Error::unavailable(message).with_source(err)
        } else {
            err
        }
    }
}

/// Run `connect` again while it fails with "database is locked": switching a new file to WAL
/// needs a lock that SQLite does not wait for, so two processes opening one new file at once can
/// see it. Bounded by `busy_timeout`.
async fn retry_busy<T, F, Fut>(
    busy_timeout: Duration,
    mut connect: F,
) -> std::result::Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + busy_timeout;
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
    /// `sqlite:` URL, and bring its schema up to date with [`migrate`](Self::migrate): the
    /// quickstart. [`builder`](Self::builder) opens without migrating and sets the options.
    ///
    /// Fails with `Unavailable` when the file can not be opened or written (read-only), and with
    /// `IncompatibleSchema` when it is not a Dispatch database or was written by a newer version.
    pub async fn open(path_or_url: &str) -> Result<Self> {
        Self::builder(path_or_url).build().await
    }

    /// Options for a store at `path_or_url` (a file path or a `sqlite:` URL); finish with
    /// [`build`](SqliteStoreBuilder::build).
    pub fn builder(path_or_url: impl Into<String>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path_or_url: path_or_url.into(),
            migrate: true,
            readers: DEFAULT_READERS,
            synchronous: Synchronous::default(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Read time from `clock` (tests inject a manual clock); the default is the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
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
        // Migrated under the default timeout first: ten migrations on a loaded machine can
        // take longer than the short one this test is about.
        SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let store = SqliteStore::builder(path.to_str().unwrap())
            .migrate(false)
            .call_timeout(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        // Another call holds the writer.
        let held = store.writer.lock().await;
        let err = store.enqueue(vec![NewJob::new("a", vec![])]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        drop(held);
        store.enqueue(vec![NewJob::new("a", vec![])]).await.unwrap();
    }

    /// `PRAGMA synchronous` on the writer and on a reader: 1 is NORMAL, 2 is FULL.
    async fn synchronous_of(store: &SqliteStore) -> (i64, i64) {
        let pragma = "PRAGMA synchronous";
        let mut writer = store.writer.lock().await;
        let on_writer = sqlx::query_scalar(pragma).fetch_one(&mut *writer).await.unwrap();
        let on_reader = sqlx::query_scalar(pragma).fetch_one(&store.readers).await.unwrap();
        (on_writer, on_reader)
    }

    #[tokio::test]
    async fn synchronous_is_normal_unless_full_is_asked_for() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.db").to_str().unwrap().to_owned();
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(synchronous_of(&store).await, (1, 1));
        drop(store);
        let store =
            SqliteStore::builder(&path).synchronous(Synchronous::Full).build().await.unwrap();
        assert_eq!(synchronous_of(&store).await, (2, 2));
    }
}
