//! Runs the `dispatch-store-tests` conformance suite on the PostgreSQL store behind PgBouncer in
//! transaction mode ([`behind_transaction_pooler`]): the store's URL is the pooler at
//! `DISPATCH_TEST_PGBOUNCER_URL` (default `postgres://postgres@127.0.0.1:6432/test`), the direct
//! URL (listener, migrations) is `DISPATCH_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Every test gets a fresh schema, dropped at the end
//! of the run through the direct URL. Then a few tests of the pooler setting itself (the session
//! settings reach the store's transactions and stay out of the pooler's sessions; the claim's
//! `EXPLAIN` works through it). When PgBouncer (or PostgreSQL) does not answer, every test
//! is reported ignored, and fails instead under `CI=true`. `.ci/run` starts a PgBouncer;
//! DEVELOPERS.md says how to start one by hand. Run with
//! `cargo test -p dispatch-store-postgres --test pgbouncer`.
//!
//! [`behind_transaction_pooler`]: dispatch_store_postgres::PostgresStoreBuilder::behind_transaction_pooler

mod support;

use std::process::ExitCode;
use std::time::Duration;

use dispatch_core::{ClaimRequest, JobStore, LeaseToken, SharedClock, WorkerId};
use dispatch_store_postgres::{BoxFuture, PostgresStore};
use dispatch_store_tests::StoreFactory;
use sqlx::{Connection, PgConnection, Row};
use support::ServerTest;

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
        probe(&self.direct_url, &self.pooler_url).await
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

/// Whether PostgreSQL and the pooler answer; the reason when one does not. The pooler is asked
/// with a simple query: sqlx's `query` would prepare a named statement, left behind on whichever
/// server session the pooler chose (the next client to prepare that name there would fail).
async fn probe(direct_url: &str, pooler_url: &str) -> Result<(), String> {
    support::probe(direct_url).await?;
    let answer = async {
        let mut conn = PgConnection::connect(pooler_url).await.map_err(|e| e.to_string())?;
        sqlx::raw_sql("SELECT 1").execute(&mut conn).await.map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    };
    let server = pooler_url.rsplit('@').next().unwrap_or(pooler_url);
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(result) => result.map_err(|e| format!("PgBouncer at {server}: {e}")),
        Err(_) => Err(format!("PgBouncer at {server} did not answer within 5 s")),
    }
}

/// The PgBouncer's URL.
fn pooler_url() -> String {
    std::env::var("DISPATCH_TEST_PGBOUNCER_URL")
        .unwrap_or_else(|_| DEFAULT_PGBOUNCER_URL.to_owned())
}

/// A store in a fresh schema behind the pooler at `pooler_url`, with a 10 s call timeout (its
/// sessions' server-side bounds: 9 s).
async fn store(pooler_url: &str) -> PostgresStore {
    PostgresStore::builder(pooler_url)
        .behind_transaction_pooler(support::url())
        .schema(support::fresh_schema())
        .max_connections(2)
        .call_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("store behind PgBouncer")
}

/// The store's transactions run under its settings (`SET LOCAL`), and the pooler's sessions
/// keep none of them afterwards.
async fn settings_reach_transactions_not_sessions(pooler_url: String) {
    let store = store(&pooler_url).await;
    let shown = store
        .transaction(|tx| -> BoxFuture<'_, dispatch_core::Result<Vec<String>>> {
            Box::pin(async move {
                let mut shown = Vec::new();
                for name in SETTINGS {
                    // Safe: fixed names.
                    let sql = sqlx::AssertSqlSafe(format!("SHOW {name}"));
                    let value: String = sqlx::query_scalar(sql)
                        .persistent(false)
                        .fetch_one(tx.conn())
                        .await
                        .expect("show");
                    shown.push(value);
                }
                Ok(shown)
            })
        })
        .await
        .expect("transaction");
    assert_eq!(shown, ["9s", "9s", "9s", "off"]);
    // Outside a transaction, through the pooler: the server's defaults, whichever session. A
    // simple query: one message, so one session answers it.
    for _ in 0..4 {
        let sql = "SELECT current_setting('statement_timeout') || ' ' || current_setting('jit')";
        let row = sqlx::raw_sql(sql).fetch_one(store.pool()).await.expect("current settings");
        let shown: String = row.try_get(0).expect("text");
        assert_eq!(shown, "0 on", "a session of the pooler kept the store's settings");
    }
}

/// What the store sets per session (directly) or per transaction (behind a pooler).
const SETTINGS: [&str; 4] =
    ["statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "jit"];

/// `explain_claim` prepares the claim under a name, explains and drops it: inside one
/// transaction behind the pooler.
async fn explain_claim_works_through_the_pooler(pooler_url: String) {
    let store = store(&pooler_url).await;
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["a".into()],
        limit: 10,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    for _ in 0..3 {
        let plan = store.explain_claim(&request).await.expect("explain");
        assert!(plan.contains("\"Plan\""), "{plan}");
    }
    assert!(store.claim(&request).await.expect("claim").is_empty());
}

/// The pooler setting's own tests.
fn pooler_tests() -> Vec<(String, ServerTest)> {
    vec![
        ("pooler::settings_reach_transactions_not_sessions".to_owned(), |url| {
            Box::pin(settings_reach_transactions_not_sessions(url))
        }),
        ("pooler::explain_claim_works_through_the_pooler".to_owned(), |url| {
            Box::pin(explain_claim_works_through_the_pooler(url))
        }),
    ]
}

fn main() -> ExitCode {
    let direct_url = support::url();
    let pooler_url = pooler_url();
    let suite = dispatch_store_tests::run_conformance(Pgbouncer {
        pooler_url: pooler_url.clone(),
        direct_url: direct_url.clone(),
    });
    let probe = dispatch_store_tests::server::probe_with(probe(&direct_url, &pooler_url));
    let own = dispatch_store_tests::server::run_server_tests(&pooler_url, probe, pooler_tests());
    support::drop_created_schemas(&direct_url);
    if suite == ExitCode::SUCCESS { own } else { suite }
}
