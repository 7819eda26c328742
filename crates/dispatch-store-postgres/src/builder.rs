//! The store's builder: its options, connecting (and migrating, or checking the schema), the
//! pools and their settings, and the warm-up of the minimum connections.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgPool, SqlSafeStr};

use crate::claim::ClaimMarks;
use crate::pooler::{self, Pool};
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
    /// The direct URL behind a transaction pooler.
    direct_url: Option<String>,
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
            .field("behind_transaction_pooler", &self.direct_url.is_some())
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
            direct_url: None,
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

    /// The URL given to [`PostgresStore::builder`] names a transaction pooler (PgBouncer with
    /// `pool_mode = transaction`, or any pooler that hands a server session to a client for
    /// one transaction at a time), and `direct_url` names the PostgreSQL server behind it.
    ///
    /// What needs a session of its own connects to `direct_url`: the wake-up listener
    /// (`LISTEN`), and the migrations with their lock in [`build`](Self::build) and
    /// [`PostgresStore::migrate`]. Everything else goes through the pooler and keeps no session
    /// state there:
    ///
    /// - every statement runs inside a transaction (a statement sent on its own runs in a
    ///   transaction of its own), so both halves of sqlx's extended-protocol exchange (`Parse`,
    ///   then `Bind`/`Execute`, each ending in `Sync`) reach the same server session;
    /// - no statement is cached: sqlx's statement cache is off and the store's own statements
    ///   are unnamed; each transaction starts with `DEALLOCATE ALL` against named statements
    ///   another client left on the server session;
    /// - the settings each session gets when directly connected (`statement_timeout`,
    ///   `lock_timeout` and `idle_in_transaction_session_timeout` a little under the call
    ///   timeout, `jit = off`, and `plan_cache_mode = force_generic_plan` on the hot path) are
    ///   applied with `SET LOCAL` in each transaction's opening statement instead.
    ///
    /// The price: each call that is one statement when connected directly takes four round
    /// trips (open with the settings, parse, execute, commit), and every statement is parsed
    /// and planned each time it runs. Transaction-level advisory locks, which the store uses,
    /// work through the pooler; `NOTIFY` is sent at commit, as always.
    #[doc(alias = "pgbouncer")]
    pub fn behind_transaction_pooler(mut self, direct_url: impl Into<String>) -> Self {
        self.direct_url = Some(direct_url.into());
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
        let mut options = connect_options(&self.url)?.application_name(&self.application_name);
        let direct = match &self.direct_url {
            Some(url) => {
                // A cached statement would be looked for on another server session.
                options = options.statement_cache_capacity(0);
                Some(connect_options(url)?.application_name(&self.application_name))
            }
            None => None,
        };
        let session = direct.clone().unwrap_or_else(|| options.clone());
        // One connection first (a direct one behind a pooler): a refused or failed login is
        // reported at once (the pool would retry until its timeout), and it runs the migrations.
        let mut conn = match tokio::time::timeout(self.call_timeout, session.connect()).await {
            Ok(conn) => conn.map_err(|e| error::connect_error(&session, e))?,
            Err(elapsed) => {
                let message = format!(
                    "connecting to {} took longer than {:?}",
                    target(&session),
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
                direct,
                enqueues: enqueue::enqueues(),
                claim_marks: ClaimMarks::default(),
                sql: Statements::new(&quoted),
                schema: self.schema,
                wake: Wake::new(session, channel),
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
    /// Each session gets [`session_settings`] (with `settings`, more of them for pools with a
    /// purpose, see [`Shared::hot`]): after login when directly connected (`SET`s rather than
    /// startup options, which poolers may refuse), in each transaction's opening statement
    /// behind a transaction pooler (see [`pooler`]).
    fn pool(&self, options: &PgConnectOptions, size: u32, min: u32, settings: &str) -> Pool {
        let settings = session_settings(self.call_timeout, settings);
        let pool_options = PgPoolOptions::new()
            .max_connections(size)
            .min_connections(min)
            .acquire_timeout(self.call_timeout.mul_f64(0.9))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            });
        if self.direct_url.is_some() {
            let begin = AssertSqlSafe(pooler::begin_statement(&settings)).into_sql_str();
            return Pool::pooled(pool_options.connect_lazy_with(options.clone()), begin);
        }
        let settings = AssertSqlSafe(settings).into_sql_str();
        let pool_options = pool_options.after_connect(move |conn, _meta| {
            let settings = settings.clone();
            Box::pin(async move {
                sqlx::raw_sql(settings).execute(&mut *conn).await?;
                Ok(())
            })
        });
        Pool::direct(pool_options.connect_lazy_with(options.clone()))
    }
}

/// The settings of every store session, `SET`s separated by `;`, with `extra` (more of them, or
/// empty) among them:
///
/// - JIT compilation off: the store's statements run for a millisecond, but the planner's cost
///   estimates for the claim's skip scan grow with the (queue, name) pairs and the batch, and
///   past `jit_above_cost` a claim would spend hundreds of milliseconds compiling (measured:
///   350 ms for 3 queues x 300 names);
/// - `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout` at
///   [`server_timeout`]: a client paused inside a transaction (SIGSTOP, a debugger, a VM
///   freeze) loses it after the same bound instead of holding its row locks until it resumes.
fn session_settings(call_timeout: Duration, extra: &str) -> String {
    let server_ms = server_timeout(call_timeout).as_millis().max(1);
    let extra = if extra.is_empty() { String::new() } else { format!("{extra}; ") };
    // Safe: fixed text and a number of milliseconds, formatted here.
    format!(
        "SET jit = off; {extra}SET statement_timeout = {server_ms}; \
         SET lock_timeout = {server_ms}; SET idle_in_transaction_session_timeout = {server_ms}"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_gets_the_bounds_and_the_extra_settings() {
        let settings = session_settings(Duration::from_secs(30), PLAN_ONCE);
        assert_eq!(
            settings,
            "SET jit = off; SET plan_cache_mode = force_generic_plan; \
             SET statement_timeout = 27000; SET lock_timeout = 27000; \
             SET idle_in_transaction_session_timeout = 27000"
        );
        assert!(!session_settings(Duration::from_secs(1), "").contains("; ;"));
    }

    #[tokio::test]
    async fn a_bad_direct_url_fails_before_connecting() {
        let err = PostgresStoreBuilder::new("postgres://pooler.invalid/x".into())
            .behind_transaction_pooler("mysql://db.invalid/x")
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}
