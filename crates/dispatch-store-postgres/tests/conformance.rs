//! Runs the `dispatch-store-tests` conformance suite on the PostgreSQL store: every test gets a
//! fresh schema (`dispatch_test_<uuid>`) in the database at `DISPATCH_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), reading the test's manual clock. The
//! schemas of a run are dropped at its end. Without a server every test is reported ignored,
//! and fails instead under `CI=true`. Run with
//! `cargo test -p dispatch-store-postgres --test conformance`.

mod support;

use std::process::ExitCode;

use dispatch_core::SharedClock;
use dispatch_store_postgres::PostgresStore;
use dispatch_store_tests::StoreFactory;

/// Connections per test store: tests run in parallel against one server (libtest-mimic runs
/// one per core by default; at 4 each, a server with the default `max_connections = 100` fits
/// over 20 at once).
const MAX_CONNECTIONS: u32 = 4;

/// Makes a fresh schema per test (dropped at the end of the run).
struct Postgres {
    url: String,
}

#[async_trait::async_trait]
impl StoreFactory for Postgres {
    type Store = PostgresStore;

    fn name(&self) -> &str {
        "postgres"
    }

    async fn probe(&self) -> Result<(), String> {
        support::probe(&self.url).await
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<PostgresStore> {
        let schema = support::fresh_schema();
        let store = PostgresStore::builder(&self.url)
            .schema(schema)
            .application_name("dispatch-conformance")
            .max_connections(MAX_CONNECTIONS)
            .build()
            .await?;
        // No clock: the database's own (`now()`), as in production.
        Ok(match clock {
            Some(clock) => store.with_clock(clock),
            None => store,
        })
    }
}

fn main() -> ExitCode {
    let url = support::url();
    let code = dispatch_store_tests::run_conformance(Postgres { url: url.clone() });
    support::drop_created_schemas(&url);
    code
}
