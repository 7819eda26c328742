//! What the wake-up and health tests share: two stores on one schema under one application
//! name, and the PIDs of the store's listener connection, found by that name.

use dispatch_store_postgres::PostgresStore;
use sqlx::PgPool;

use crate::support;

/// Two stores on one fresh schema, both named `app` in `pg_stat_activity`: the one that
/// listens (or runs a worker) and the one that enqueues.
pub(crate) async fn two_stores(url: &str, app: &str) -> (PostgresStore, PostgresStore) {
    let schema = support::fresh_schema();
    let build = || {
        PostgresStore::builder(url).schema(&schema).application_name(app).max_connections(4).build()
    };
    (build().await.expect("listening store"), build().await.expect("enqueuing store"))
}

/// A unique application name, so a test finds its own connections.
pub(crate) fn app_name() -> String {
    format!("dispatch-listener-{}", uuid::Uuid::new_v4().simple())
}

/// The backend PIDs of `app`'s connections that last ran a LISTEN (the listener's).
pub(crate) async fn listener_pids(admin: &PgPool, app: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(app)
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity")
}
