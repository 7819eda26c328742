//! The schema: ordered SQL migrations embedded at compile time, applied by [`SqliteStore::migrate`].

use dispatch_core::{Error, ErrorKind, Result, Timestamp};
use sqlx::{Connection, Row, SqliteConnection};

use crate::{SqliteStore, db_error};

/// The migrations this crate knows, in order; version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[include_str!("schema/0001_init.sql")];

/// The schema version this crate writes: the number of migrations it knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl SqliteStore {
    /// Bring the schema up to date: apply every migration the database lacks, each in its own
    /// `BEGIN IMMEDIATE` transaction, so two processes starting at once apply each version once.
    /// [`open`](Self::open) runs it; running it again does nothing.
    ///
    /// Fails with `IncompatibleSchema` when the database records a version newer than this crate
    /// knows, or holds tables but no Dispatch migration record (not a Dispatch database).
    pub async fn migrate(&self) -> Result<()> {
        self.timed("migrate", async {
            let mut conn = self.writer.lock().await;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
            prepare(&mut tx).await?;
            tx.commit().await.map_err(db_error)?;
            for version in 1..=SCHEMA_VERSION {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
                apply(&mut tx, version, self.clock.now()).await?;
                tx.commit().await.map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }
}

/// Create the migrations table in a new database, and check an existing one is ours and not
/// newer than this crate.
async fn prepare(conn: &mut SqliteConnection) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let ours = tables.iter().any(|t| t == "dispatch_migrations");
    if !ours && !tables.is_empty() {
        return Err(Error::new(
            ErrorKind::IncompatibleSchema,
            format!(
                "not a Dispatch database: it has tables ({}) but no dispatch_migrations",
                tables.join(", ")
            ),
        ));
    }
    if !ours {
        sqlx::query(
            "CREATE TABLE dispatch_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER)",
        )
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    }
    let newest: Option<i64> = sqlx::query("SELECT max(version) AS v FROM dispatch_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?
        .try_get("v")
        .map_err(db_error)?;
    if let Some(newest) = newest.filter(|&v| v > SCHEMA_VERSION) {
        return Err(Error::new(
            ErrorKind::IncompatibleSchema,
            format!(
                "the database has schema version {newest}, newer than this version of \
                 dispatch-store-sqlite knows ({SCHEMA_VERSION})"
            ),
        ));
    }
    Ok(())
}

/// Apply migration `version` unless the database has it.
async fn apply(conn: &mut SqliteConnection, version: i64, now: Timestamp) -> Result<()> {
    let have: Option<i64> =
        sqlx::query_scalar("SELECT version FROM dispatch_migrations WHERE version = ?")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    if have.is_some() {
        return Ok(());
    }
    let index = usize::try_from(version - 1).map_err(|e| Error::internal(e.to_string()))?;
    sqlx::raw_sql(MIGRATIONS[index]).execute(&mut *conn).await.map_err(db_error)?;
    sqlx::query("INSERT INTO dispatch_migrations (version, applied_at) VALUES (?, ?)")
        .bind(version)
        .bind(now.as_unix_micros())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}
