//! What the Redis test binaries share: the server's URL, a probe, and fresh key prefixes whose
//! keys are deleted at the end of the run.

// Each test binary uses a part of this module.
#![allow(dead_code)]

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
