//! The schema: ordered SQL migrations embedded at compile time, applied by
//! [`PostgresStore::migrate`] in the store's schema.

use dispatch_core::{Error, ErrorKind, Result};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{PostgresStore, db_error};

/// The migrations this crate knows, in order; version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema/0001_init.sql"),
    include_str!("schema/0002_workflows.sql"),
    include_str!("schema/0003_cancel.sql"),
    include_str!("schema/0004_claim_by_name.sql"),
    include_str!("schema/0005_state_index.sql"),
    include_str!("schema/0006_run_waiting.sql"),
];

/// The schema version this crate writes: the number of migrations it knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The name of the migrations table, inside the store's schema.
const MIGRATIONS_TABLE: &str = "dispatch_migrations";

impl PostgresStore {
    /// Bring the schema up to date: create it when missing, then apply every migration it
    /// lacks, all in one transaction that holds a transaction-level advisory lock keyed by the
    /// schema name, so processes migrating one schema at once take turns and each version is
    /// applied once. [`PostgresStoreBuilder::build`](crate::PostgresStoreBuilder::build) runs
    /// it; running it again does nothing.
    ///
    /// Fails with `IncompatibleSchema` when the schema records a version newer than this crate
    /// knows, or holds tables but no Dispatch migration record (not a Dispatch schema).
    pub async fn migrate(&self) -> Result<()> {
        self.timed("migrate", async {
            let mut conn = self.shared.pool.acquire().await.map_err(db_error)?;
            self.migrate_on(&mut conn).await
        })
        .await
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
        let newest = newest_version(conn).await?;
        if newest > SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::IncompatibleSchema,
                format!(
                    "schema {schema:?} has version {newest}, newer than this version of \
                     dispatch-store-postgres knows ({SCHEMA_VERSION})"
                ),
            ));
        }
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

/// Create the migrations table in an empty schema; refuse a schema that has tables but no
/// migrations table (another program's).
async fn check_ours(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    if tables.iter().any(|t| t == MIGRATIONS_TABLE) {
        return Ok(());
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
    sqlx::query(
        "CREATE TABLE dispatch_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The newest version the schema records (0 for none).
async fn newest_version(conn: &mut PgConnection) -> Result<i64> {
    let newest: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM dispatch_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(newest.map_or(0, i64::from))
}
