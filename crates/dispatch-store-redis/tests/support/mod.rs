//! What the Redis test binaries (`it` and `conformance`) share: the server's URL, a probe,
//! fresh key prefixes whose keys are deleted at the end of the run, and the runner of tests that
//! need the server (`dispatch_store_tests::server`: ignored when it is unreachable, failed
//! instead under `CI=true`, as the conformance suite does).

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The server the tests use unless `DISPATCH_TEST_REDIS_URL` names another.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Prefixes made by this process, deleted by [`delete_created_prefixes`].
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The URL of the test server.
pub fn url() -> String {
    std::env::var("DISPATCH_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Whether the server answers; the reason when it does not.
pub async fn probe(url: &str) -> Result<(), String> {
    let answer = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn =
            client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())?;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(result) => result.map_err(|e: String| format!("Redis at {url}: {e}")),
        Err(_) => Err(format!("Redis at {url} did not answer within 5 s")),
    }
}

/// A new key prefix, recorded for [`delete_created_prefixes`].
pub fn fresh_prefix() -> String {
    let prefix = format!("dispatch_test_{}", uuid::Uuid::new_v4().simple());
    CREATED.lock().unwrap_or_else(PoisonError::into_inner).push(prefix.clone());
    prefix
}

/// Delete every key under the prefixes [`fresh_prefix`] made in this process (best effort).
pub fn delete_created_prefixes(url: &str) {
    let prefixes = std::mem::take(&mut *CREATED.lock().unwrap_or_else(PoisonError::into_inner));
    if prefixes.is_empty() {
        return;
    }
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(mut conn) = client.get_connection() else { return };
    for prefix in prefixes {
        let pattern = format!("{{{prefix}}}:*");
        let keys: Vec<String> = match redis::cmd("KEYS").arg(&pattern).query(&mut conn) {
            Ok(keys) => keys,
            Err(err) => {
                eprintln!("can not list the keys of test prefix {prefix}: {err}");
                continue;
            }
        };
        for chunk in keys.chunks(1000) {
            if let Err(err) = redis::cmd("UNLINK").arg(chunk).query::<i64>(&mut conn) {
                eprintln!("can not delete the keys of test prefix {prefix}: {err}");
            }
        }
    }
}

pub use dispatch_store_tests::server::ServerTest;

/// Run `tests` (name, test) as a libtest-mimic harness against the test server (see
/// `dispatch_store_tests::server`); then delete the keys of the prefixes they made.
pub fn run(tests: Vec<(String, ServerTest)>) -> ExitCode {
    let url = url();
    let probe = dispatch_store_tests::server::probe_with(probe(&url));
    let code = dispatch_store_tests::server::run_server_tests(&url, probe, tests);
    delete_created_prefixes(&url);
    code
}

/// Poll `check` every 10 ms until it answers `Some`, at most `limit`; its answer.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
