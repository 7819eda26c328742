//! What the PostgreSQL test binaries (`it` and `conformance`) share: the server's URL, a probe,
//! fresh schemas that are dropped at the end of the run, and the runner of tests that need the
//! server (`dispatch_store_tests::server`: ignored when it is unreachable, failed instead under
//! `CI=true`, as the conformance suite does).

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The server the tests use unless `DISPATCH_TEST_POSTGRES_URL` names another.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Schemas made by this process, dropped by [`drop_created_schemas`].
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The URL of the test server.
pub fn url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether the server answers; the reason when it does not.
pub async fn probe(url: &str) -> Result<(), String> {
    let answer = async {
        let mut conn = PgConnection::connect(url).await.map_err(|e| e.to_string())?;
        sqlx::query("SELECT 1").execute(&mut conn).await.map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    };
    // Name the server without the credentials the URL may hold.
    let server = url.rsplit('@').next().unwrap_or(url);
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(result) => result.map_err(|e| format!("PostgreSQL at {server}: {e}")),
        Err(_) => Err(format!("PostgreSQL at {server} did not answer within 5 s")),
    }
}

/// A new schema name, recorded for [`drop_created_schemas`].
pub fn fresh_schema() -> String {
    let schema = format!("dispatch_test_{}", uuid::Uuid::new_v4().simple());
    CREATED.lock().unwrap_or_else(PoisonError::into_inner).push(schema.clone());
    schema
}

/// Drop every schema [`fresh_schema`] made in this process (best effort).
pub fn drop_created_schemas(url: &str) {
    let schemas = std::mem::take(&mut *CREATED.lock().unwrap_or_else(PoisonError::into_inner));
    if schemas.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    runtime.block_on(async {
        let Ok(mut conn) = PgConnection::connect(url).await else { return };
        for schema in schemas {
            let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            if let Err(err) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
                eprintln!("can not drop test schema {schema}: {err}");
            }
        }
    });
}

pub use dispatch_store_tests::server::ServerTest;

/// Run `tests` (name, test) as a libtest-mimic harness against the test server (see
/// `dispatch_store_tests::server`); then drop the schemas they made.
pub fn run(tests: Vec<(String, ServerTest)>) -> ExitCode {
    let url = url();
    let probe = dispatch_store_tests::server::probe_with(probe(&url));
    let code = dispatch_store_tests::server::run_server_tests(&url, probe, tests);
    drop_created_schemas(&url);
    code
}

/// Wait until `check` holds, polling every 10 ms, at most `limit`; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
