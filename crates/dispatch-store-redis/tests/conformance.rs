//! Runs the `dispatch-store-tests` conformance suite on the Redis store: every test gets a fresh
//! key prefix on the server at `DISPATCH_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! reading the test's manual clock; a test's keys are deleted at the end of the run. Without a
//! server every test is reported ignored, and fails instead under `CI=true`. Run with
//! `cargo test -p dispatch-store-redis --test conformance`.

mod support;

use std::process::ExitCode;

use dispatch_core::SharedClock;
use dispatch_store_redis::RedisStore;
use dispatch_store_tests::StoreFactory;

/// Makes a store under a fresh prefix per test (its keys deleted at the end of the run).
struct Redis {
    url: String,
}

#[async_trait::async_trait]
impl StoreFactory for Redis {
    type Store = RedisStore;

    fn name(&self) -> &str {
        "redis"
    }

    async fn probe(&self) -> Result<(), String> {
        support::probe(&self.url).await
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<RedisStore> {
        let store = RedisStore::builder(&self.url)
            .prefix(support::fresh_prefix())
            .max_connections(2)
            .build()
            .await?;
        // No clock: the server's own (`TIME`), as in production.
        Ok(match clock {
            Some(clock) => store.with_clock(clock),
            None => store,
        })
    }
}

fn main() -> ExitCode {
    let url = support::url();
    let code = dispatch_store_tests::run_conformance(Redis { url: url.clone() });
    support::delete_created_prefixes(&url);
    code
}
