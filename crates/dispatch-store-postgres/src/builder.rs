//! The store's builder: its options, connecting (and migrating, or checking the schema), the
//! pools and their settings, and the warm-up of the minimum connections.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::claim::ClaimMarks;
use crate::wake::Wake;
use crate::{
    DEFAULT_APPLICATION_NAME, DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_SCHEMA,
    PostgresStore, Shared, Statements, db_error, enqueue, error, group, quote_schema, target, wake,
};

/// The hot-path sessions: two for claims (one fetch loop claims at a time, so two cover two
/// workers sharing a store) and one per group enqueue writer.
const HOT_CONNECTIONS: u32 = 2 + enqueue::WRITERS as u32;

/// The setting of the hot-path sessions: each prepared statement gets one (generic) plan.
const PLAN_ONCE: &str = "SET plan_cache_mode = force_generic_plan";

/// A pooled connection idle this long is pinged before it is used again.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

/// Options for [`PostgresStore::builder`]: where the tables live, what the connections are
/// called, how many there are and how long a call may take.
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    application_name: String,
    max_connections: u32,
    min_connections: u32,
    migrate: bool,
    call_timeout: Duration,
    max_payload_bytes: usize,
}

/// Leaves out the URL: it may hold the password.
impl std::fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("migrate", &self.migrate)
            .field("call_timeout", &self.call_timeout)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// The default options for a store at `url`.
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            schema: DEFAULT_SCHEMA.to_owned(),
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_connections: 0,
            migrate: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Keep the tables in `schema` (default [`DEFAULT_SCHEMA`]): lowercase ASCII letters,
    /// digits and `_`, not starting with a digit, at most 63 bytes, not starting with `pg_`.
    /// The schema is created when missing (when [migrating](Self::migrate)).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Name the store's connections `name` in `pg_stat_activity` (default
    /// [`DEFAULT_APPLICATION_NAME`]); the wake-up listener's connection carries it too.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Open at most `n` pooled connections (default [`DEFAULT_MAX_CONNECTIONS`], at least 1).
    /// The wake-up listener holds one more while anyone subscribes, and the hot path (claims,
    /// enqueues) runs on four of its own.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Keep at least `n` pooled connections open (default 0, at most
    /// [`max_connections`](Self::max_connections)), and open them, with the hot path's own
    /// sessions, in [`build`](Self::build): the first calls do not wait for a connection, and a
    /// configuration the server refuses (a setting, too many connections) fails the build
    /// instead of a later call. With 0 every connection opens when a call first needs it.
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// Whether [`build`](Self::build) brings the schema up to date (default `true`). With
    /// `false` it runs no DDL and takes no migration lock, for a role that may not change the
    /// schema: it only reads the migrations table, and fails with [`ErrorKind::NotMigrated`]
    /// when the schema is missing or older than this version (run [`PostgresStore::migrate`]
    /// first, for example in a deploy step).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Fail calls that take longer than `timeout` (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Reject payloads larger than `bytes` (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Connect, bring the schema up to date with [`PostgresStore::migrate`] (or check it is, see
    /// [`migrate`](Self::migrate)), and open the [minimum connections](Self::min_connections).
    ///
    /// Fails with `InvalidInput` for a malformed URL or schema name, `Unavailable` when the
    /// server can not be reached (or refuses the login), `Timeout` past the call timeout,
    /// `IncompatibleSchema` when the schema is not a Dispatch schema or was written by a newer
    /// version, and, when not migrating, `NotMigrated` when the schema is missing or older.
    pub async fn build(self) -> Result<PostgresStore> {
        let quoted = quote_schema(&self.schema)?;
        let options = connect_options(&self.url)?.application_name(&self.application_name);
        // One connection first: a refused or failed login is reported at once (the pool
        // would retry until its timeout), and it runs the migrations.
        let mut conn = match tokio::time::timeout(self.call_timeout, options.connect()).await {
            Ok(conn) => conn.map_err(|e| error::connect_error(&options, e))?,
            Err(elapsed) => {
                let message = format!(
                    "connecting to {} took longer than {:?}",
                    target(&options),
                    self.call_timeout
                );
                return Err(Error::new(ErrorKind::Timeout, message).with_source(elapsed));
            }
        };
        let channel = wake::channel_name(&self.schema);
        let min = self.min_connections.min(self.max_connections);
        let hot_min = if min > 0 { HOT_CONNECTIONS } else { 0 };
        let store = PostgresStore {
            shared: Arc::new(Shared {
                pool: self.pool(&options, self.max_connections, min, ""),
                hot: self.pool(&options, HOT_CONNECTIONS, hot_min, PLAN_ONCE),
                enqueues: enqueue::enqueues(),
                claim_marks: ClaimMarks::default(),
                sql: Statements::new(&quoted),
                schema: self.schema,
                wake: Wake::new(options, channel),
                checkpoints: group::checkpoints::writes(),
            }),
            clock: None,
            max_payload_bytes: self.max_payload_bytes,
            call_timeout: self.call_timeout,
        };
        if self.migrate {
            store.timed("migrate", store.migrate_on(&mut conn)).await?;
        } else {
            store.timed("open", store.check_migrated_on(&mut conn)).await?;
        }
        // Best effort: the migrations are committed whether or not the goodbye arrives.
        let _ = conn.close().await;
        let warm_up = async {
            tokio::try_join!(warm_up(store.pool(), min), warm_up(store.hot_pool(), hot_min))
        };
        store.timed("warm-up", warm_up).await?;
        Ok(store)
    }

    /// The pool, opening connections as calls need them. Connections are pinged before reuse
    /// only after sitting idle for [`PING_AFTER_IDLE`], so a busy store spends one round trip
    /// per call. Acquiring gives up a little before the call timeout, so a server that went
    /// away is reported `Unavailable` rather than `Timeout`.
    ///
    /// Each new connection turns JIT compilation off for its session: the store's statements
    /// run for a millisecond, but the planner's cost estimates for the claim's skip scan grow
    /// with the (queue, name) pairs and the batch, and past `jit_above_cost` a claim would
    /// spend hundreds of milliseconds compiling (measured: 350 ms for 3 queues x 300 names).
    ///
    /// `SET`s after login rather than startup options, which poolers may refuse. `settings` are
    /// more of them, for pools with a purpose (see [`Shared::hot`]).
    fn pool(
        &self,
        options: &PgConnectOptions,
        size: u32,
        min: u32,
        settings: &'static str,
    ) -> PgPool {
        let server_ms = server_timeout(self.call_timeout).as_millis().max(1);
        PgPoolOptions::new()
            .max_connections(size)
            .min_connections(min)
            .acquire_timeout(self.call_timeout.mul_f64(0.9))
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    sqlx::raw_sql("SET jit = off").execute(&mut *conn).await?;
                    if !settings.is_empty() {
                        sqlx::raw_sql(settings).execute(&mut *conn).await?;
                    }
                    // Safe: a number of milliseconds, formatted here. A client paused inside a
                    // transaction (SIGSTOP, a debugger, a VM freeze) loses it after the same
                    // bound instead of holding its row locks until it resumes.
                    let bound = format!(
                        "SET statement_timeout = {server_ms}; SET lock_timeout = {server_ms}; \
                         SET idle_in_transaction_session_timeout = {server_ms}"
                    );
                    sqlx::raw_sql(sqlx::AssertSqlSafe(bound)).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options.clone())
    }
}

/// Open `n` connections of `pool` at once (each acquire opens one while the others are held),
/// so they are there before the first call; the pool keeps them (its minimum is `n`).
async fn warm_up(pool: &PgPool, n: u32) -> Result<()> {
    let held = futures::future::try_join_all((0..n).map(|_| pool.acquire())).await;
    held.map(drop).map_err(db_error)
}

/// The server-side bound of every statement on the store's sessions (`statement_timeout`,
/// `lock_timeout` and `idle_in_transaction_session_timeout`): a tenth below the call timeout, at least 50 ms below it. A statement the
/// caller gave up on (a claim stuck behind another session's lock) is then cancelled by the
/// server before the caller stops waiting, instead of committing after it: no lease nobody
/// holds. The call timeout is set on the builder only, so the two can not cross.
fn server_timeout(call_timeout: Duration) -> Duration {
    let margin = (call_timeout / 10).max(Duration::from_millis(50));
    call_timeout.saturating_sub(margin).max(Duration::from_millis(1))
}

/// The connect options of a `postgres://` or `postgresql://` URL.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::invalid_input(
            "a PostgreSQL URL starts with postgres:// or postgresql://",
        ));
    }
    PgConnectOptions::from_str(url)
        .map_err(|e| Error::invalid_input("bad PostgreSQL URL").with_source(e))
}
