//! Runs the `dispatch-store-tests` conformance suite on the PostgreSQL store behind PgBouncer in
//! transaction mode ([`behind_transaction_pooler`]): the store's URL is the pooler at
//! `DISPATCH_TEST_PGBOUNCER_URL` (default `postgres://postgres@127.0.0.1:6432/test`), the direct
//! URL (listener, migrations) is `DISPATCH_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Every test gets a fresh schema, dropped at the end
//! of the run through the direct URL. When PgBouncer (or PostgreSQL) does not answer, every test
//! is reported ignored, and fails instead under `CI=true`. `.ci/run` starts a PgBouncer;
//! DEVELOPERS.md says how to start one by hand. Run with
//! `cargo test -p dispatch-store-postgres --test pgbouncer`.
//!
//! [`behind_transaction_pooler`]: dispatch_store_postgres::PostgresStoreBuilder::behind_transaction_pooler

mod support;

use std::process::ExitCode;

use dispatch_core::SharedClock;
use dispatch_store_postgres::PostgresStore;
use dispatch_store_tests::StoreFactory;

/// The PgBouncer the tests use unless `DISPATCH_TEST_PGBOUNCER_URL` names another.
const DEFAULT_PGBOUNCER_URL: &str = "postgres://postgres@127.0.0.1:6432/test";

/// Connections per test store, through the pooler (which multiplexes them over its own few).
const MAX_CONNECTIONS: u32 = 4;

/// Makes a fresh schema per test (dropped at the end of the run), reached through PgBouncer.
struct Pgbouncer {
    pooler_url: String,
    direct_url: String,
}

#[async_trait::async_trait]
impl StoreFactory for Pgbouncer {
    type Store = PostgresStore;

    fn name(&self) -> &str {
        "postgres-pgbouncer"
    }

    async fn probe(&self) -> Result<(), String> {
        support::probe(&self.direct_url).await?;
        support::probe(&self.pooler_url).await.map_err(|e| format!("PgBouncer: {e}"))
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<PostgresStore> {
        let store = PostgresStore::builder(&self.pooler_url)
            .behind_transaction_pooler(&self.direct_url)
            .schema(support::fresh_schema())
            .application_name("dispatch-pgbouncer")
            .max_connections(MAX_CONNECTIONS)
            .build()
            .await?;
        Ok(match clock {
            Some(clock) => store.with_clock(clock),
            None => store,
        })
    }
}

fn main() -> ExitCode {
    let direct_url = support::url();
    let pooler_url = std::env::var("DISPATCH_TEST_PGBOUNCER_URL")
        .unwrap_or_else(|_| DEFAULT_PGBOUNCER_URL.to_owned());
    let code = dispatch_store_tests::run_conformance(Pgbouncer {
        pooler_url,
        direct_url: direct_url.clone(),
    });
    support::drop_created_schemas(&direct_url);
    code
}
