//! Opening with and without migrating: a producer that may not migrate works on a database a
//! worker's store migrated, and is refused with `NotMigrated` (creating nothing) where nobody
//! did, or where the schema is older than this version.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{ErrorKind, JobState, JobStore};
use dispatch_job::{JobClient, JobContext, JobDefinition, Worker};
use dispatch_store_sqlite::{SCHEMA_VERSION, SqliteStore};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::time::Instant;

/// A path in a fresh directory, the file not created.
fn fresh_path() -> PathBuf {
    let dir = std::env::temp_dir()
        .join("dispatch-sqlite-migrate")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("jobs.db")
}

async fn open_without_migrating(path: &std::path::Path) -> dispatch_core::Result<SqliteStore> {
    SqliteStore::builder(path.display().to_string()).migrate(false).build().await
}

/// A connection of the database's own, outside any store.
async fn raw(path: &std::path::Path) -> SqliteConnection {
    SqliteConnectOptions::new().filename(path).connect().await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_does_not_migrate_enqueues_for_a_worker_on_a_migrated_store() {
    let path = fresh_path();
    let migrated = SqliteStore::open(&path.display().to_string()).await.expect("migrated store");
    let producer = open_without_migrating(&path).await.expect("open without migrating");

    let ship = JobDefinition::new("ship_order", |_ctx: JobContext, _order: u32| async { Ok(()) });
    let client = JobClient::standalone(Arc::new(producer));
    let id = client.enqueue(&ship, 7).await.expect("enqueue").id();
    let worker =
        Worker::builder(Arc::new(migrated.clone())).register(ship).build().expect("worker").start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = migrated.get_job(id).await.expect("get_job").expect("the producer's job");
        if job.state == JobState::Completed {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete: {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn without_migrating_a_missing_file_is_not_migrated_and_is_not_created() {
    let path = fresh_path();
    let err = open_without_migrating(&path).await.expect_err("no database");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
    assert!(err.message().contains("SqliteStore::migrate"), "names the call to run: {err}");
    assert!(!path.exists(), "opening without migrating created {}", path.display());
}

#[tokio::test]
async fn without_migrating_an_empty_database_is_not_migrated_and_stays_empty() {
    let path = fresh_path();
    std::fs::write(&path, b"").expect("an empty database file");
    let err = open_without_migrating(&path).await.expect_err("no schema");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut raw(&path).await)
        .await
        .expect("count tables");
    assert_eq!(tables, 0, "opening without migrating ran DDL");
}

#[tokio::test]
async fn without_migrating_an_older_schema_is_not_migrated() {
    let path = fresh_path();
    drop(SqliteStore::open(&path.display().to_string()).await.expect("migrated store"));
    // The database as the previous version left it, as far as its record says.
    sqlx::query("DELETE FROM dispatch_migrations WHERE version = ?")
        .bind(SCHEMA_VERSION)
        .execute(&mut raw(&path).await)
        .await
        .expect("forget the newest migration");
    let err = open_without_migrating(&path).await.expect_err("an older schema");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
    let older = format!("version {}", SCHEMA_VERSION - 1);
    assert!(err.message().contains(&older), "{err}");
}

#[tokio::test]
async fn without_migrating_a_newer_schema_is_incompatible() {
    let path = fresh_path();
    drop(SqliteStore::open(&path.display().to_string()).await.expect("migrated store"));
    sqlx::query("INSERT INTO dispatch_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&mut raw(&path).await)
        .await
        .expect("a newer version");
    let err = open_without_migrating(&path).await.expect_err("a newer schema");
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
}
