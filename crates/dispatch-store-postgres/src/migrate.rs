//! The schema: ordered SQL migrations embedded at compile time, applied by
//! [`PostgresStore::migrate`] in the store's schema.

use dispatch_core::{Error, ErrorKind, Result};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use crate::{PostgresStore, db_error, error};

/// The migrations this crate knows, in order; version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema/0001_init.sql"),
    include_str!("schema/0002_workflows.sql"),
    include_str!("schema/0003_cancel.sql"),
    include_str!("schema/0004_claim_by_name.sql"),
    include_str!("schema/0005_state_index.sql"),
    include_str!("schema/0006_run_waiting.sql"),
    include_str!("schema/0007_cluster.sql"),
    include_str!("schema/0008_retention.sql"),
    include_str!("schema/0009_cron.sql"),
    include_str!("schema/0010_dlq_unreplayed.sql"),
    include_str!("schema/0011_lease_index.sql"),
    include_str!("schema/0012_flow.sql"),
];

/// The schema version this crate writes: the number of migrations it knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The name of the migrations table, inside the store's schema.
const MIGRATIONS_TABLE: &str = "dispatch_migrations";

impl PostgresStore {
    /// Bring the schema up to date: create it when missing, then apply every migration it
    /// lacks, all in one transaction that holds a transaction-level advisory lock keyed by the
    /// schema name, so processes migrating one schema at once take turns and each version is
    /// applied once; behind a transaction pooler
    /// ([`behind_transaction_pooler`](crate::PostgresStoreBuilder::behind_transaction_pooler)),
    /// on a connection of its own to the direct URL. [`PostgresStoreBuilder::build`](crate::PostgresStoreBuilder::build) runs
    /// it; running it again does nothing. Run it in a deploy step when the application opens its
    /// stores without migrating
    /// ([`PostgresStoreBuilder::migrate`](crate::PostgresStoreBuilder::migrate)).
    ///
    /// Fails with `IncompatibleSchema` when the schema records a version newer than this crate
    /// knows, or holds tables but no Dispatch migration record (not a Dispatch schema).
    pub async fn migrate(&self) -> Result<()> {
        self.timed("migrate", async {
            let Some(direct) = &self.shared.direct else {
                let mut conn = self.shared.pool.inner().acquire().await.map_err(db_error)?;
                return self.migrate_on(&mut conn).await;
            };
            // Behind a transaction pooler: DDL and its lock on a session of their own.
            let mut conn = direct.connect().await.map_err(|e| error::connect_error(direct, e))?;
            let migrated = self.migrate_on(&mut conn).await;
            // Best effort: the migrations are committed whether or not the goodbye arrives.
            let _ = conn.close().await;
            migrated
        })
        .await
    }

    /// Check, without writing or locking, that the schema has exactly this crate's version:
    /// `NotMigrated` when it is missing, empty or older, `IncompatibleSchema` when it is newer or
    /// not a Dispatch schema.
    pub(crate) async fn check_migrated_on(&self, conn: &mut PgConnection) -> Result<()> {
        let schema = self.schema();
        if !has_migrations_table(conn, schema).await? {
            return Err(not_migrated(schema, "it has no Dispatch tables"));
        }
        let newest = newest_version(conn, &crate::quote_schema(schema)?).await?;
        if newest < SCHEMA_VERSION {
            let why = format!(
                "it has schema version {newest}, older than this version needs ({SCHEMA_VERSION})"
            );
            return Err(not_migrated(schema, &why));
        }
        refuse_newer(schema, newest)
    }

    /// [`migrate`](Self::migrate) on `conn`, in a transaction of its own.
    pub(crate) async fn migrate_on(&self, conn: &mut PgConnection) -> Result<()> {
        let mut tx = conn.begin().await.map_err(db_error)?;
        self.migrate_in(&mut tx).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn migrate_in(&self, conn: &mut PgConnection) -> Result<()> {
        let schema = self.schema();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dispatch.migrate.' || $1))")
            .bind(schema)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        let quoted = crate::quote_schema(schema)?;
        // Safe: the schema name is checked against [a-z_][a-z0-9_]*.
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted}; \
             SET LOCAL search_path TO {quoted}, pg_catalog"
        );
        sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut *conn).await.map_err(db_error)?;
        check_ours(conn, schema).await?;
        let newest = newest_version(conn, &quoted).await?;
        refuse_newer(schema, newest)?;
        let applied = usize::try_from(newest).unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            sqlx::raw_sql(*migration).execute(&mut *conn).await.map_err(db_error)?;
            sqlx::query(
                "INSERT INTO dispatch_migrations (version, applied_at) \
                 VALUES ($2, coalesce($1::bigint, (extract(epoch from now()) * 1000000)::bigint))",
            )
            .bind(self.now_param())
            .bind(i64::try_from(index + 1).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }
}

/// The tables of `schema` (none when it does not exist); `IncompatibleSchema` when there are
/// tables but no migrations table (another program's). Whether the migrations table is there.
async fn has_migrations_table(conn: &mut PgConnection, schema: &str) -> Result<bool> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    if tables.iter().any(|t| t == MIGRATIONS_TABLE) {
        return Ok(true);
    }
    if !tables.is_empty() {
        return Err(Error::new(
            ErrorKind::IncompatibleSchema,
            format!(
                "schema {schema:?} is not a Dispatch schema: it has tables ({}) but no \
                 {MIGRATIONS_TABLE}",
                tables.join(", ")
            ),
        ));
    }
    Ok(false)
}

/// Create the migrations table in an empty schema; refuse a schema that has tables but no
/// migrations table (another program's).
async fn check_ours(conn: &mut PgConnection, schema: &str) -> Result<()> {
    if has_migrations_table(conn, schema).await? {
        return Ok(());
    }
    sqlx::query(
        "CREATE TABLE dispatch_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The newest version the schema named by `quoted` (a checked, quoted identifier) records (0
/// for none).
async fn newest_version(conn: &mut PgConnection, quoted: &str) -> Result<i64> {
    // Safe: the schema name is checked against [a-z_][a-z0-9_]*.
    let sql = format!("SELECT max(version) FROM {quoted}.{MIGRATIONS_TABLE}");
    let newest: Option<i32> =
        sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *conn).await.map_err(db_error)?;
    Ok(newest.map_or(0, i64::from))
}

/// `IncompatibleSchema` for a version newer than this crate knows.
fn refuse_newer(schema: &str, newest: i64) -> Result<()> {
    if newest > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::IncompatibleSchema,
            format!(
                "schema {schema:?} has version {newest}, newer than this version of \
                 dispatch-store-postgres knows ({SCHEMA_VERSION})"
            ),
        ));
    }
    Ok(())
}

/// `NotMigrated` for `schema`, saying why and what to run.
fn not_migrated(schema: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::NotMigrated,
        format!(
            "schema {schema:?} is not migrated ({why}): run the migrations first, with \
             PostgresStore::connect or PostgresStore::migrate (for example in a deploy step)"
        ),
    )
}
