//! The schema: ordered SQL migrations embedded at compile time, applied by [`SqliteStore::migrate`].

use dispatch_core::{Error, ErrorKind, Result, Timestamp};
use sqlx::{Connection, Row, SqliteConnection};

use crate::SqliteStore;
use crate::error::db_error;

/// The migrations this crate knows, in order; version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema/0001_init.sql"),
    include_str!("schema/0002_due_index.sql"),
    include_str!("schema/0003_workflows.sql"),
    include_str!("schema/0004_cancel.sql"),
    include_str!("schema/0005_drop_state_index.sql"),
    include_str!("schema/0006_run_waiting.sql"),
    include_str!("schema/0007_cluster.sql"),
    include_str!("schema/0008_retention.sql"),
    include_str!("schema/0009_cron.sql"),
    include_str!("schema/0010_flow.sql"),
];

/// The schema version this crate writes: the number of migrations it knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl SqliteStore {
    /// Bring the schema up to date: apply every migration the database lacks, each in its own
    /// `BEGIN IMMEDIATE` transaction, so two processes starting at once apply each version once.
    /// [`open`](Self::open) runs it; running it again does nothing. Run it in a deploy step when
    /// the application opens its stores without migrating
    /// ([`SqliteStoreBuilder::migrate`](crate::SqliteStoreBuilder::migrate)).
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

    /// Check, without writing, that the database at `path` has exactly this crate's schema:
    /// `NotMigrated` when it is empty or older, `IncompatibleSchema` when it is newer or not a
    /// Dispatch database.
    pub(crate) async fn check_migrated(&self, path: &str) -> Result<()> {
        self.timed("open", async {
            let mut conn = self.writer.lock().await;
            match recorded_version(&mut conn).await? {
                None | Some(0) => Err(not_migrated(path, "it has no Dispatch schema")),
                Some(newest) if newest < SCHEMA_VERSION => Err(not_migrated(
                    path,
                    &format!(
                        "it has schema version {newest}, older than this version needs \
                         ({SCHEMA_VERSION})"
                    ),
                )),
                Some(newest) => refuse_newer(newest),
            }
        })
        .await
    }
}

/// Create the migrations table in a new database, and check an existing one is ours and not
/// newer than this crate.
async fn prepare(conn: &mut SqliteConnection) -> Result<()> {
    let newest = match recorded_version(conn).await? {
        Some(newest) => newest,
        None => {
            sqlx::query(
                "CREATE TABLE dispatch_migrations \
                 (version INTEGER PRIMARY KEY, applied_at INTEGER)",
            )
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            0
        }
    };
    refuse_newer(newest)
}

/// The newest schema version the database records (0 when its migrations table is empty), or
/// `None` for an empty database; `IncompatibleSchema` for tables without a migrations table.
async fn recorded_version(conn: &mut SqliteConnection) -> Result<Option<i64>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    if !tables.iter().any(|t| t == "dispatch_migrations") {
        if tables.is_empty() {
            return Ok(None);
        }
        return Err(Error::new(
            ErrorKind::IncompatibleSchema,
            format!(
                "not a Dispatch database: it has tables ({}) but no dispatch_migrations",
                tables.join(", ")
            ),
        ));
    }
    let newest: Option<i64> = sqlx::query("SELECT max(version) AS v FROM dispatch_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?
        .try_get("v")
        .map_err(db_error)?;
    Ok(Some(newest.unwrap_or(0)))
}

/// `IncompatibleSchema` for a version newer than this crate knows.
fn refuse_newer(newest: i64) -> Result<()> {
    if newest > SCHEMA_VERSION {
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

/// `NotMigrated` for the database at `path`, saying why and what to run.
pub(crate) fn not_migrated(path: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::NotMigrated,
        format!(
            "the database {path:?} is not migrated ({why}): run the migrations first, with \
             SqliteStore::open or SqliteStore::migrate (for example in a deploy step)"
        ),
    )
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dispatch_core::ErrorKind;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;

    /// A fresh directory for one test's files.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn path_in(dir: &std::path::Path, file: &str) -> String {
        dir.join(file).to_str().unwrap().to_owned()
    }

    async fn versions(store: &SqliteStore) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM dispatch_migrations ORDER BY version")
            .fetch_all(&store.readers)
            .await
            .unwrap()
    }

    async fn open_err(path: &str) -> dispatch_core::Error {
        SqliteStore::open(path).await.expect_err("the open should fail")
    }

    #[tokio::test]
    async fn migrate_twice_is_idempotent() {
        let dir = temp_dir();
        let store = SqliteStore::open(&path_in(&dir, "a.db")).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let want: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions(&store).await, want);
        drop(store);
        let store = SqliteStore::open(&path_in(&dir, "a.db")).await.unwrap();
        assert_eq!(versions(&store).await, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_of_a_new_file_share_one_schema() {
        let dir = temp_dir();
        let path = path_in(&dir, "race.db");
        let (a, b) = (path.clone(), path.clone());
        let first = tokio::spawn(async move { SqliteStore::open(&a).await });
        let second = tokio::spawn(async move { SqliteStore::open(&b).await });
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        let want: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions(&first).await, want);
        assert_eq!(versions(&second).await, want);
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_not_a_dispatch_database() {
        let dir = temp_dir();
        let path = path_in(&dir, "garbage.db");
        std::fs::write(&path, vec![0xA5; 8192]).unwrap();
        let err = open_err(&path).await;
        assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
        assert!(err.message().contains("not a Dispatch database"), "{err}");
    }

    #[tokio::test]
    async fn a_sqlite_file_of_another_program_is_not_a_dispatch_database() {
        let dir = temp_dir();
        let path = path_in(&dir, "other.db");
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE users (id INTEGER)").execute(&mut conn).await.unwrap();
        drop(conn);
        let err = open_err(&path).await;
        assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
        assert!(err.message().contains("not a Dispatch database"), "{err}");
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = temp_dir();
        let path = path_in(&dir, "newer.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut conn = store.writer.lock().await;
        sqlx::query("INSERT INTO dispatch_migrations (version, applied_at) VALUES (999, 0)")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        drop(store);
        let err = open_err(&path).await;
        assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
        assert!(err.message().contains("999"), "{err}");
    }

    #[tokio::test]
    async fn a_read_only_database_is_refused_clearly() {
        let dir = temp_dir();
        let path = path_in(&dir, "ro.db");
        // An empty file is an empty SQLite database; opened read-only it can not be migrated.
        std::fs::write(&path, b"").unwrap();
        let err = open_err(&format!("sqlite://{path}?mode=ro")).await;
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains("read-only"), "{err}");
    }

    #[tokio::test]
    async fn an_unopenable_path_is_unavailable() {
        let dir = temp_dir();
        let err = open_err(&path_in(&dir, "missing/dir/x.db")).await;
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains("can not open"), "{err}");
        let err = open_err(dir.to_str().unwrap()).await;
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
}
