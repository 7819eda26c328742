//! Multi-process durability tests for Dispatch: a worker process (`durability-worker`) that the
//! tests in `tests/` start, kill with SIGKILL, and start again on the same store, on SQLite and
//! on PostgreSQL.
//!
//! It holds no library code of its own beyond the job the worker runs and how a worker and a
//! test name and open one store; it is not published.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch::core::DynStore;
use dispatch::prelude::*;
use dispatch_store_postgres::PostgresStore;
use dispatch_store_sqlite::SqliteStore;

/// The job every durability scenario runs: sleeps 1–5 ms (by its input), then succeeds.
pub fn sleepy_job() -> JobDefinition<u64> {
    JobDefinition::new("sleepy", |_ctx: JobContext, n: u64| async move {
        tokio::time::sleep(Duration::from_millis(1 + n % 5)).await;
        Ok(())
    })
}

/// The PostgreSQL server the tests use: `DISPATCH_TEST_POSTGRES_URL`, else the local default.
pub fn postgres_url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// One store, as a test names it to a worker process: a SQLite file path, or `postgres:<schema>`
/// (a schema of the server at [`postgres_url`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// A SQLite database file.
    Sqlite(String),
    /// A schema of the test PostgreSQL server.
    Postgres(String),
}

impl StoreSpec {
    /// Parse the form [`Display`](std::fmt::Display) writes.
    pub fn parse(spec: &str) -> Self {
        match spec.strip_prefix("postgres:") {
            Some(schema) => Self::Postgres(schema.to_owned()),
            None => Self::Sqlite(spec.to_owned()),
        }
    }

    /// The `application_name` of the worker processes' PostgreSQL connections for this store,
    /// so a test can find (and terminate) exactly them.
    pub fn worker_application_name(&self) -> Option<String> {
        match self {
            Self::Postgres(schema) => Some(format!("{schema}_worker")),
            Self::Sqlite(_) => None,
        }
    }

    /// Open (creating and migrating when needed) the store; `role` is "worker" or "test".
    pub async fn open(&self, role: &str) -> anyhow::Result<DynStore> {
        Ok(match self {
            Self::Sqlite(path) => Arc::new(SqliteStore::open(path).await.context("open SQLite")?),
            Self::Postgres(schema) => Arc::new(
                PostgresStore::builder(postgres_url())
                    .schema(schema.as_str())
                    .application_name(format!("{schema}_{role}"))
                    .max_connections(8)
                    .build()
                    .await
                    .context("connect to PostgreSQL")?,
            ),
        })
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.write_str(path),
            Self::Postgres(schema) => write!(f, "postgres:{schema}"),
        }
    }
}
