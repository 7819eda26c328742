//! The PostgreSQL Dispatch store: jobs and their dead letter queue in a PostgreSQL database,
//! shared by any number of worker and client processes.
//!
//! Use it when several processes or machines work one queue, when jobs must be enqueued inside
//! the application's own transaction ([`PostgresStore::transaction`]), or when idle workers
//! should wake at once on jobs enqueued elsewhere ([`JobStore::wakeups`], `LISTEN`/`NOTIFY`).
//! It is not a way to reach jobs of a SQLite or memory store, and it does not manage the
//! server: backups, replication, vacuum and connection limits are the operator's.
//!
//! # Layout
//!
//! Everything lives in one schema (default [`DEFAULT_SCHEMA`], see
//! [`PostgresStoreBuilder::schema`]): tables `jobs` and `dlq`, the workflow tables `runs`,
//! `checkpoints`, `event_waits` and `kept_events`, the cluster tables `workers`, `leaders` and
//! `leader_writes`, the cron table `cron_entries`, the flow control tables `queue_configs`,
//! `gates` and `flow_releases`, and the store's own migrations table
//! `dispatch_migrations`. Several stores (or test runs) share a database in separate
//! schemas. Times are `bigint` microseconds since the Unix epoch, like
//! [`Timestamp`](dispatch_core::Timestamp).
//!
//! # Time
//!
//! Without an injected clock the store reads the database clock (`now()`, the start of the
//! statement's transaction), so workers whose clocks disagree still agree on run-at times and
//! lease expiry. [`with_clock`](PostgresStore::with_clock) makes every statement use the given
//! clock instead (tests use a manual clock).
//!
//! # Round trips
//!
//! Each hot-path call is one statement for the whole batch: claim (`FOR UPDATE SKIP LOCKED`
//! over a partial index of available jobs), finish (array parameters; dead jobs get their DLQ
//! entries in the same statement), heartbeat, rescue and enqueue. A finish batch with items that
//! did not apply, or an enqueue whose unique keys were taken, reads once more to answer them.
//! A claim naming a queue with a flow config ([`FlowStore`](dispatch_core::FlowStore)) is the
//! exception: the claim statement sees the config and claims nothing, and the gated claim runs
//! as one transaction of several statements (`flow`). Every call has a timeout ([`DEFAULT_CALL_TIMEOUT`]) and fails with
//! [`ErrorKind::Timeout`] past it; a lost or refused connection is
//! [`ErrorKind::Unavailable`].
//!
//! # Workflows
//!
//! [`WorkflowStore`](dispatch_core::WorkflowStore) keeps runs next to the jobs that drive them.
//! A drive's calls are fenced in the statement itself: the drive job's row is locked only while
//! the caller's lease holds it, and nothing is written otherwise (`LeaseLost`). Each call is one
//! statement (a start inserts the run and its drive job together; a suspend registers the waits,
//! marks the run and snoozes the drive job together), except that a publish and a suspend that
//! waits for events first take a transaction-level advisory lock per (name, correlation), so
//! neither can miss the other. A finish or rescue that kills a drive job fails its run in the
//! same statement.
//!
//! # Wake-ups and transactional enqueue
//!
//! Enqueues, DLQ replays, and finishes or rescues that make jobs available each send one
//! `NOTIFY` per call on [`channel`](PostgresStore::channel) (payload: the queue, or empty when
//! the call touched several). The first [`wakeups`](JobStore::wakeups) subscriber starts one
//! listener task per store on a dedicated connection; it sends `Wakeup::any()` whenever it
//! (re)connects, because notifications sent while it was away are lost, and stops when the last
//! clone of the store is dropped. A transaction writes jobs, and their `NOTIFY`, together with
//! the application's own writes: both exist only if it commits. [`PostgresStore::transaction`]
//! runs one on the store's pool, with commit on `Ok` and rollback on `Err`;
//! [`PostgresStore::in_transaction`] joins a transaction the application opened itself. In
//! either, `dispatch_job`'s `EnqueueTransactionExt` enqueues typed jobs
//! (`tx.enqueue(&definition, input)`); [`PostgresStore::enqueue_in`] takes untyped ones.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(
//! #     store: dispatch_store_postgres::PostgresStore,
//! #     ship_order: dispatch_job::JobDefinition<i64>,
//! # ) -> Result<(), BoxError> {
//! use dispatch_job::EnqueueTransactionExt as _;
//!
//! let order_id = 7_i64;
//! store
//!     .transaction(move |tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO orders (id) VALUES ($1)")
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
//! # Connecting and migrating
//!
//! [`PostgresStore::connect`] connects and brings the schema up to date, holding an advisory
//! lock while it migrates: the one call a single deployment needs. Where the application's
//! role may not change the schema, or many processes start at once, a deploy step runs
//! [`PostgresStore::migrate`] and the application connects with
//! [`migrate(false)`](PostgresStoreBuilder::migrate): no DDL, no lock, only a read of the
//! migrations table, failing with [`ErrorKind::NotMigrated`] until the deploy step has run.
//! [`min_connections`](PostgresStoreBuilder::min_connections) opens connections at build, so
//! the first calls find them ready.
//!
//! ```no_run
//! # async fn demo() -> dispatch_core::Result<()> {
//! use dispatch_store_postgres::PostgresStore;
//!
//! // The deploy step, as a role that may run DDL.
//! PostgresStore::builder("postgres://migrator@db.internal/app")
//!     .schema("jobs")
//!     .build()
//!     .await?;
//! // The application.
//! let store = PostgresStore::builder("postgres://app@db.internal/app")
//!     .schema("jobs")
//!     .application_name("billing-worker")
//!     .migrate(false)
//!     .min_connections(2)
//!     .build()
//!     .await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! # Behind PgBouncer
//!
//! A transaction pooler (PgBouncer with `pool_mode = transaction`, and poolers like it) gives a
//! client connection a server session for one transaction at a time, so what lives in a session
//! does not survive it: `LISTEN`, session-level advisory locks, `SET`, and prepared statements
//! (sqlx prepares each statement in one exchange and executes it in the next; between them the
//! pooler may switch sessions, and another client's statement of the same name, or its unnamed
//! one, gets run instead: measured through PgBouncer 1.18, 16 tasks x 300 statements, over 80 % of
//! them failed or answered another statement's result). Tell the builder the pooler is there
//! and where PostgreSQL itself is:
//!
//! ```no_run
//! # async fn demo() -> dispatch_core::Result<()> {
//! use dispatch_store_postgres::PostgresStore;
//!
//! let store = PostgresStore::builder("postgres://app@pgbouncer.internal:6432/app")
//!     .behind_transaction_pooler("postgres://app@db.internal:5432/app")
//!     .build()
//!     .await?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! [`behind_transaction_pooler`](PostgresStoreBuilder::behind_transaction_pooler) changes this:
//!
//! - the wake-up listener (`LISTEN`) and the migrations (their advisory lock and DDL) connect
//!   to the direct URL: one connection while anyone subscribes, one while migrating;
//! - every statement runs in a transaction, a statement on its own in a transaction of its own,
//!   so the pooler keeps both exchanges of a statement on one server session; each transaction
//!   opens with `DEALLOCATE ALL`, statements are not cached (sqlx's statement cache is off) and
//!   the store's own are unnamed;
//! - the session settings of a direct connection (`statement_timeout`, `lock_timeout` and
//!   `idle_in_transaction_session_timeout` just under the call timeout, `jit = off`, and the
//!   hot path's `plan_cache_mode = force_generic_plan`) become `SET LOCAL`s in each
//!   transaction's opening statement: the store's statements run under the same bounds.
//!
//! What is lost: speed. A call that is one round trip connected directly takes four (open,
//! parse, execute, commit), and every statement is parsed and planned on every call, the hot
//! path's included (a direct session plans it once). The store's advisory locks are
//! transaction-level (`pg_advisory_xact_lock`) and its `NOTIFY`s are sent at commit: both work
//! through the pooler as they are.
//!
//! The application's own SQL on [`PostgresStore::pool`] goes through the pooler with none of
//! this: run it in a transaction ([`PostgresStore::transaction`] opens one with the settings
//! above), and with [`persistent(false)`](sqlx::query::Query::persistent) if the pooler
//! tracks no prepared statements (PgBouncer before 1.21, or `max_prepared_statements = 0`). A
//! transaction the application opens itself for [`in_transaction`](PostgresStore::in_transaction)
//! starts as the store's do, `store.pool().begin_with("BEGIN; DEALLOCATE ALL")`: the store's
//! statements in it are prepared under sqlx's names, which a statement another transaction left
//! on that server session would already hold (or the operator sets PgBouncer's
//! `server_reset_query_always = 1`, a `DISCARD ALL` after every transaction). As
//! a backstop for any session the pooler hands out, the operator sets the bounds on the role
//! or the database rather than per session:
//! `ALTER ROLE app SET idle_in_transaction_session_timeout = '30s'` (a session left idle in a
//! transaction pins vacuum's horizon), `ALTER ROLE app SET statement_timeout = '30s'`,
//! `ALTER ROLE app SET jit = off`. On the pooler: `pool_mode = transaction`,
//! `ignore_startup_parameters = extra_float_digits` (sqlx sends it at login), and
//! `default_pool_size` for the transactions in flight at once, not the clients. With PgBouncer
//! 1.21 and `max_prepared_statements` above 0, upgrade to 1.22 (which follows `DEALLOCATE
//! ALL`) or set it to 0.
//!
//! # Retention, bloat and vacuum
//!
//! The leader prunes finished work through [`RetentionStore`](dispatch_core::RetentionStore)
//! (`retention`): one fenced statement per call, each kind deleted oldest first in a batch of at
//! most the call's limit (`FOR UPDATE SKIP LOCKED`, so it never waits for a row), over indexes
//! that start at the oldest eligible row, so a call costs its batch whatever the table holds
//! (measured: ~30,000 rows/s in batches of 1,000, the longest call ~0.1 s).
//!
//! Claims and finishes change `state`, which partial indexes name, so they are never HOT
//! updates, and lease renewals change an indexed column too: each leaves a dead row version
//! and dead index entries for vacuum. Migration 0008 sets `jobs` to vacuum at 1 % dead rows
//! with ten times the default cost limit (storage parameters: override them with `ALTER TABLE
//! … SET`). Vacuum can only remove what no snapshot can see: **set
//! `idle_in_transaction_session_timeout`** for every role that uses the database (the store's
//! own sessions set it). One session left idle inside a transaction pins the xmin horizon for
//! the whole server; over a million dead rows it halved a drain. ARCHITECTURE.md, "Bloat and
//! vacuum", has the measurements and the choices (one table, no partitions).
//!
//! # Modules
//!
//! The skeleton every Dispatch store shares (a concern lives in the same file name in each),
//! each statement beside the code that runs it:
//!
//! - `lib.rs`: the store, the state its clones share, the statement builder; `builder`: its
//!   options, connecting, migrating (or checking the schema) and the pools.
//! - `job`: `JobStore`, forwarding to `enqueue` (batches, group-committed), `claim` (claims,
//!   the next-due probe, claim marks) and `finish` (finishes and rescue); it keeps heartbeats,
//!   cancel requests and lookups.
//! - `dlq`: `DlqStore` (statements with optional filters built with sea-query; a bulk replay is
//!   one short transaction per batch).
//! - `cron`: `CronStore` (entries upserted by scope and name; each `fire_cron` call one fenced
//!   transaction that enqueues through `enqueue`'s statement).
//! - `retention`: `RetentionStore` (the leader's fenced, batched prune).
//! - `flow`: `FlowStore` (queue configs, pauses, progress) and, in `flow/claim`, the gated
//!   claim: a claim naming a queue with a config, one transaction that locks the gates it
//!   passes and admits jobs by `dispatch_core::flow::Admission`; finishes give slots back
//!   through a trigger that appends to `flow_releases`, never touching a gate row.
//! - `cluster`: `MembershipStore` and `LeadershipStore` (the worker registry, leadership terms
//!   and the record of fenced leader writes); a sweep reclaims a gone worker's jobs with the
//!   rescue body of `finish`, and a worker's heartbeat renews leases with `job`'s.
//! - `workflow`: `WorkflowStore` and runs; `workflow/checkpoint` group-commits checkpoint
//!   writes and run ends, `workflow/fence` is the lease check of a drive's calls. It forwards
//!   to `events` (publish, suspend, wait resolution) and `rewind` (rewind a run to a
//!   checkpoint, migrate it to another version).
//! - `group`: the group commit that `enqueue` and `workflow/checkpoint` share.
//! - `pooler`: the store's pools as the statements' executor, and running them behind a
//!   transaction pooler.
//! - `row` (rows, and the column lists they are selected by), `error` (driver errors as the
//!   core `Error`), `wake` (`LISTEN`/`NOTIFY`), `migrate` (the schema, `schema/*.sql`),
//!   `transaction` (transactions of the store or of the application that enqueue and start
//!   runs).

mod builder;
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
mod pooler;
mod retention;
mod rewind;
mod row;
mod run;
mod transaction;
mod wake;
mod workflow;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use dispatch_core::JobStore;
use dispatch_core::{Error, ErrorKind, Result, SharedClock};
use sea_query::PostgresQueryBuilder;
use sea_query_sqlx::{SqlxBinder, SqlxValues};
use sqlx::postgres::PgConnectOptions;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgPool, Postgres, SqlSafeStr, SqlStr};

use pooler::Pool;

pub use builder::PostgresStoreBuilder;
pub use migrate::SCHEMA_VERSION;
/// The `sqlx` this store is built on: run the application's own SQL in a store transaction
/// (`tx.conn()`) with it, so the versions always match.
pub use sqlx;
pub use transaction::PostgresTransaction;

use claim::ClaimMarks;
use enqueue::Enqueues;
pub(crate) use error::db_error;
use wake::Wake;

/// How long one store call may take before it fails with a timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The schema the store's tables live in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "dispatch";
/// The `application_name` the store's connections carry unless told otherwise.
pub const DEFAULT_APPLICATION_NAME: &str = "dispatch";
/// Connections in the store's pool unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// The longest schema name PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_LEN: usize = 63;

/// The PostgreSQL store. Cheap to clone: clones share the pool and the wake-up listener, which
/// stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    clock: Option<SharedClock>,
    max_payload_bytes: usize,
    call_timeout: Duration,
}

/// What every clone of one store shares.
#[derive(Debug)]
struct Shared {
    /// The store's statements run on it (as an executor, [`Pool::begin`], [`Pool::session`]),
    /// each in a transaction of its own behind a transaction pooler (see `pooler`).
    pool: Pool,
    /// The sessions of the hot path (claims, grouped enqueues, the idle fetch loop's next-due
    /// probe): they plan each statement once per session ([`PLAN_ONCE`]). Left to choose, the
    /// server plans every claim and enqueue anew, since their parameters (arrays, a limit)
    /// make a custom plan look cheaper than the generic one, and planning them costs more than
    /// running them (measured: 0.32 ms planning against 0.15 ms running for a claim, 0.41
    /// against 0.10 for an enqueue). Those statements are written so that their generic plan
    /// is the one they need ([`PostgresStore::explain_claim`] shows the claim's). A pool of its
    /// own, because other statements (a finish touching runs, the workflow writes) do need
    /// plans made for their values.
    hot: Pool,
    /// Behind a transaction pooler, where session-level work connects directly to PostgreSQL
    /// ([`PostgresStore::migrate`]; the wake-up listener keeps its own copy); `None` when the
    /// store's URL is PostgreSQL itself.
    direct: Option<PgConnectOptions>,
    /// Enqueues waiting to be written in a group (see `enqueue`).
    enqueues: Enqueues,
    /// Where claims start reading each priority level (see `claim`).
    claim_marks: ClaimMarks,
    sql: Statements,
    schema: String,
    wake: Wake,
    /// Checkpoint writes and run ends waiting for their group commit (see
    /// `group::checkpoints`).
    checkpoints: group::checkpoints::Writes,
}

/// Every statement of one store, built once for its schema; each concern's statements live
/// beside its code.
#[derive(Debug)]
struct Statements {
    job: job::Sql,
    enqueue: enqueue::Sql,
    claim: claim::Sql,
    finish: finish::Sql,
    flow: flow::Sql,
    dlq: dlq::Sql,
    cron: cron::Sql,
    workflow: workflow::Sql,
    events: events::Sql,
    rewind: rewind::Sql,
    cluster: cluster::Sql,
    retention: retention::Sql,
}

impl Statements {
    /// The statements for the schema named by `quoted`, a validated, double-quoted identifier.
    fn new(quoted: &str) -> Self {
        Self {
            job: job::Sql::new(quoted),
            enqueue: enqueue::Sql::new(quoted),
            claim: claim::Sql::new(quoted),
            finish: finish::Sql::new(quoted),
            flow: flow::Sql::new(quoted),
            dlq: dlq::Sql::new(quoted),
            cron: cron::Sql::new(quoted),
            workflow: workflow::Sql::new(quoted),
            events: events::Sql::new(quoted),
            rewind: rewind::Sql::new(quoted),
            cluster: cluster::Sql::new(quoted),
            retention: retention::Sql::new(quoted),
        }
    }
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/database`) with the default
    /// options, and bring the schema up to date: the quickstart. [`builder`](Self::builder)
    /// connects without migrating and sets the options. See [`PostgresStoreBuilder::build`] for
    /// the errors.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

    /// Options for a store at `url`; finish with [`build`](PostgresStoreBuilder::build).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(url.into())
    }

    /// Read time from `clock` (tests inject a manual clock) instead of the database clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// The store's connection pool: to open the transactions that
    /// [`in_transaction`](Self::in_transaction) and [`enqueue_in`](Self::enqueue_in) write into,
    /// or for the application's own queries against the same database.
    ///
    /// Behind a transaction pooler
    /// ([`behind_transaction_pooler`](PostgresStoreBuilder::behind_transaction_pooler)) these
    /// are connections through the pooler: statements outside a transaction, and named prepared
    /// statements (sqlx's default), are not safe there; run the application's statements in a
    /// transaction, with [`sqlx::query::Query::persistent`]`(false)`.
    pub fn pool(&self) -> &PgPool {
        self.shared.pool.inner()
    }

    /// The pool of the hot path (claims and enqueues), apart from [`pool`](Self::pool): a few
    /// sessions that plan each statement once (`plan_cache_mode = force_generic_plan`). For
    /// diagnostics and tests.
    pub fn hot_pool(&self) -> &PgPool {
        self.shared.hot.inner()
    }

    /// The `NOTIFY` channel this store's wake-ups travel on: `dispatch_<schema>` (a hash of the
    /// schema name when that would be longer than PostgreSQL keeps).
    pub fn channel(&self) -> &str {
        self.shared.wake.channel()
    }

    /// The time parameter of every statement: the injected clock's now, or `None` (SQL NULL)
    /// for the database clock.
    fn now_param(&self) -> Option<i64> {
        self.clock.as_ref().map(|clock| clock.now().as_unix_micros())
    }

    /// Run `fut` under the call timeout.
    async fn timed<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(result) => result,
            Err(elapsed) => Err(Error::new(
                ErrorKind::Timeout,
                format!("postgres {what} took longer than {:?}", self.call_timeout),
            )
            .with_source(elapsed)),
        }
    }
}

/// A boxed future that may borrow for `'a`, as the body of [`PostgresStore::transaction`]
/// returns it: `Box::pin(async move { … })`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store's now: the injected clock's time (`$1`) or the database's transaction time, in
/// microseconds since the epoch.
const NOW: &str = "coalesce($1::bigint, (extract(epoch from now()) * 1000000)::bigint)";

/// The store's now read when it is evaluated, not at the transaction's start
/// (`clock_timestamp()`): for a decision made after waiting for a row lock (leadership terms).
const LATE_NOW: &str =
    "coalesce($1::bigint, (extract(epoch from clock_timestamp()) * 1000000)::bigint)";

/// `template` as a statement for the schema named by `quoted` (a validated, double-quoted
/// identifier): `{sat(a, b)}` expanded, then `{now}`, `{late_now}` ([`LATE_NOW`]) and `{s}`.
///
/// Templates name the schema `{s}` (replaced by the quoted, validated schema name) and the
/// store's clock `{now}` ([`NOW`]): parameter `$1`, an injected clock's time in microseconds,
/// or NULL to read the database clock. Each statement resolves `{now}` once, in a `t` CTE, so
/// one statement sees one time. Sums of a time and a duration, `{sat(a, b)}`, saturate at
/// `i64::MAX`, like `Timestamp + Duration` (and are NULL for a NULL duration). Each concern
/// expands its own placeholders (column lists, shared parts) first.
fn statement(template: &str, quoted: &str) -> SqlStr {
    let sql = expand_sat(template)
        .replace("{now}", NOW)
        .replace("{late_now}", LATE_NOW)
        .replace("{s}", quoted);
    // Safe: fixed text and a schema name checked against [a-z_][a-z0-9_]*.
    AssertSqlSafe(sql).into_sql_str()
}

/// A statement built with sea-query (those with optional filters), ready to run: its text on
/// the schema-qualified tables the builder was given, every value a bound parameter.
fn built<Q: SqlxBinder>(query: &Q) -> Query<'static, Postgres, SqlxValues> {
    let (sql, values) = query.build_sqlx(PostgresQueryBuilder);
    // Safe: sea-query's text, whose only identifiers are fixed names and the validated schema.
    sqlx::query_with(AssertSqlSafe(sql), values)
}

/// A limit as sea-query binds it: unsigned, sent as `bigint`, so at most `i64::MAX`.
fn built_limit(n: usize) -> u64 {
    Ord::min(u64::try_from(n).unwrap_or(u64::MAX), i64::MAX.unsigned_abs())
}

/// Replace each `{sat(a, b)}` with `a + b` computed exactly and saturated at `i64::MAX`.
fn expand_sat(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{sat(") {
        out.push_str(&rest[..start]);
        let args_start = start + "{sat(".len();
        let Some(len) = rest[args_start..].find(")}") else { break };
        let args = &rest[args_start..args_start + len];
        let (a, b) = args.split_once(',').unwrap_or((args, "0"));
        let sum = format!("({}::numeric + {})", a.trim(), b.trim());
        // Not LEAST: it ignores NULLs, and a NULL duration must give a NULL time.
        out.push_str(&format!(
            "(CASE WHEN {sum} > {MAX} THEN {MAX} ELSE {sum}::bigint END)",
            MAX = i64::MAX
        ));
        rest = &rest[args_start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `host:port/database` of `options`, for messages (never the password).
fn target(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// The schema name as a quoted identifier, after checking it is one this store accepts.
fn quote_schema(schema: &str) -> Result<String> {
    let mut chars = schema.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > MAX_IDENTIFIER_LEN || schema.starts_with("pg_") {
        return Err(Error::invalid_input(format!(
            "schema name {schema:?} must match [a-z_][a-z0-9_]*, be at most \
             {MAX_IDENTIFIER_LEN} bytes and not start with \"pg_\""
        )));
    }
    Ok(format!("\"{schema}\""))
}

/// Test helper: no placeholder is left in `sql` (a `{` before a lowercase letter, `$chan`).
#[cfg(test)]
fn assert_expanded(sql: &SqlStr) {
    let text = sql.as_str();
    let left = text
        .match_indices('{')
        .any(|(i, _)| text[i + 1..].starts_with(|c: char| c.is_ascii_lowercase()));
    assert!(!left && !text.contains("$chan"), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::connect_options;

    #[test]
    fn sat_expands_every_occurrence() {
        let sql = expand_sat("a {sat(t.now, $6)} b {sat(x, y)} c");
        let max = "9223372036854775807";
        assert_eq!(
            sql,
            format!(
                "a (CASE WHEN (t.now::numeric + $6) > {max} THEN {max} \
                 ELSE (t.now::numeric + $6)::bigint END) b \
                 (CASE WHEN (x::numeric + y) > {max} THEN {max} ELSE (x::numeric + y)::bigint END) c"
            )
        );
    }

    #[test]
    fn schema_names_are_checked_and_quoted() {
        assert_eq!(quote_schema("dispatch").unwrap(), "\"dispatch\"");
        assert_eq!(quote_schema("_a1_b").unwrap(), "\"_a1_b\"");
        assert!(quote_schema(&"a".repeat(63)).is_ok());
        for bad in ["", "1abc", "Upper", "a-b", "a\"b", "a b", "pg_x", "é", &"a".repeat(64)] {
            let err = quote_schema(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let builder = PostgresStore::builder("postgres://app:s3cret@db/app");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let options = connect_options("postgres://app:s3cret@db/app").unwrap();
        let wake = Wake::new(options, "dispatch_x".into());
        assert!(!format!("{wake:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_bad_schema_or_url_fails_before_connecting() {
        let err = PostgresStore::builder("postgres://nowhere.invalid/x")
            .schema("Bad")
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let err = PostgresStore::connect("mysql://x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}
