//! Connecting and migrating: concurrent migrations of one schema, schemas this version can not
//! use, opening without migrating (a producer beside a migrated worker; `NotMigrated` for a
//! missing or older schema, creating nothing), the pool's warm-up, and how connection trouble
//! surfaces (unreachable server, call timeout, terminated connections). Needs the test server
//! (see `support`).

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{ErrorKind, JobState, JobStore, NewJob};
use dispatch_job::{JobClient, JobContext, JobDefinition, Worker};
use dispatch_store_postgres::{PostgresStore, SCHEMA_VERSION};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("concurrent_migrations_share_one_schema", |url| {
            Box::pin(concurrent_migrations_share_one_schema(url))
        }),
        ("a_newer_schema_is_refused", |url| Box::pin(a_newer_schema_is_refused(url))),
        ("a_foreign_schema_is_refused", |url| Box::pin(a_foreign_schema_is_refused(url))),
        ("a_producer_that_does_not_migrate_enqueues_for_a_worker_on_a_migrated_store", |url| {
            Box::pin(a_producer_that_does_not_migrate_enqueues_for_a_worker_on_a_migrated_store(
                url,
            ))
        }),
        ("without_migrating_a_missing_schema_is_not_migrated_and_not_created", |url| {
            Box::pin(without_migrating_a_missing_schema_is_not_migrated_and_not_created(url))
        }),
        ("without_migrating_an_older_schema_is_not_migrated", |url| {
            Box::pin(without_migrating_an_older_schema_is_not_migrated(url))
        }),
        ("warm_up_opens_the_minimum_connections_at_build", |url| {
            Box::pin(warm_up_opens_the_minimum_connections_at_build(url))
        }),
        ("an_unreachable_server_is_unavailable", |url| {
            Box::pin(an_unreachable_server_is_unavailable(url))
        }),
        ("a_call_waiting_past_its_timeout_fails_with_timeout", |url| {
            Box::pin(a_call_waiting_past_its_timeout_fails_with_timeout(url))
        }),
        ("terminated_connections_are_unavailable_then_replaced", |url| {
            Box::pin(terminated_connections_are_unavailable_then_replaced(url))
        }),
    ]
}

async fn execute(url: &str, sql: String) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await.expect("execute");
}

async fn versions(url: &str, schema: &str) -> Vec<i32> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let sql = format!("SELECT version FROM \"{schema}\".dispatch_migrations ORDER BY version");
    sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("versions")
}

async fn concurrent_migrations_share_one_schema(url: String) {
    let schema = support::fresh_schema();
    let build = || {
        let (url, schema) = (url.clone(), schema.clone());
        tokio::spawn(async move { PostgresStore::builder(url).schema(schema).build().await })
    };
    let (first, second) = (build(), build());
    let first = first.await.expect("task").expect("first store");
    let second = second.await.expect("task").expect("second store");
    let want: Vec<i32> = (1..=SCHEMA_VERSION as i32).collect();
    assert_eq!(versions(&url, &schema).await, want, "each version applied once");

    // Migrating again, concurrently, changes nothing.
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.expect("migrate again");
    b.expect("migrate again");
    assert_eq!(versions(&url, &schema).await, want);
    let id = first.enqueue(vec![NewJob::new("a", vec![])]).await.expect("enqueue")[0].id();
    assert!(second.get_job(id).await.expect("get_job").is_some(), "one schema, one table");
}

async fn a_newer_schema_is_refused(url: String) {
    let schema = support::fresh_schema();
    let store = PostgresStore::builder(&url).schema(&schema).build().await.expect("store");
    execute(
        &url,
        format!(
            "INSERT INTO \"{schema}\".dispatch_migrations (version, applied_at) VALUES (999, 0)"
        ),
    )
    .await;
    let err = store.migrate().await.expect_err("a newer schema");
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
    assert!(err.message().contains("999"), "{err}");
    let err = PostgresStore::builder(&url).schema(&schema).build().await.expect_err("newer");
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
    let err = open_without_migrating(&url, &schema).await.expect_err("newer, not migrating");
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
}

async fn open_without_migrating(url: &str, schema: &str) -> dispatch_core::Result<PostgresStore> {
    PostgresStore::builder(url).schema(schema).migrate(false).build().await
}

async fn a_producer_that_does_not_migrate_enqueues_for_a_worker_on_a_migrated_store(url: String) {
    let schema = support::fresh_schema();
    let migrated = PostgresStore::builder(&url).schema(&schema).build().await.expect("migrated");
    let producer = open_without_migrating(&url, &schema).await.expect("open without migrating");

    let ship = JobDefinition::new("ship_order", |_ctx: JobContext, _order: u32| async { Ok(()) });
    let client = JobClient::standalone(Arc::new(producer));
    let id = client.enqueue(&ship, 7).await.expect("enqueue").id();
    let worker =
        Worker::builder(Arc::new(migrated.clone())).register(ship).build().expect("worker").start();
    let completed = support::eventually(Duration::from_secs(60), || async {
        let job = migrated.get_job(id).await.expect("get_job").expect("the producer's job");
        job.state == JobState::Completed
    })
    .await;
    worker.stop().await;
    assert!(completed, "the worker on the migrated store ran the producer's job");
}

async fn without_migrating_a_missing_schema_is_not_migrated_and_not_created(url: String) {
    let schema = support::fresh_schema();
    let err = open_without_migrating(&url, &schema).await.expect_err("no schema");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
    assert!(err.message().contains("PostgresStore::migrate"), "names the call to run: {err}");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&mut conn)
            .await
            .expect("look for the schema");
    assert!(!created, "opening without migrating created schema {schema}");

    // An empty schema (made by the operator) is no better.
    execute(&url, format!("CREATE SCHEMA \"{schema}\"")).await;
    let err = open_without_migrating(&url, &schema).await.expect_err("an empty schema");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
}

async fn without_migrating_an_older_schema_is_not_migrated(url: String) {
    let schema = support::fresh_schema();
    drop(PostgresStore::builder(&url).schema(&schema).build().await.expect("migrated"));
    // The schema as the previous version left it, as far as its record says.
    execute(
        &url,
        format!("DELETE FROM \"{schema}\".dispatch_migrations WHERE version = {SCHEMA_VERSION}"),
    )
    .await;
    let err = open_without_migrating(&url, &schema).await.expect_err("an older schema");
    assert_eq!(err.kind(), ErrorKind::NotMigrated, "{err}");
    let older = format!("version {}", SCHEMA_VERSION - 1);
    assert!(err.message().contains(&older), "{err}");
}

/// The connections named `app` in `pg_stat_activity`.
async fn connections_named(url: &str, app: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(&mut conn)
        .await
        .expect("count connections")
}

async fn warm_up_opens_the_minimum_connections_at_build(url: String) {
    let app = format!("dispatch-warm-{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::builder(&url)
        .schema(support::fresh_schema())
        .application_name(&app)
        .max_connections(5)
        .min_connections(3)
        .build()
        .await
        .expect("store");
    assert_eq!(store.pool().size(), 3, "the minimum is open when build returns");
    let hot = store.hot_pool().size();
    assert!(hot > 0, "the hot path's sessions are opened too");
    // At once: a lazy pool would hold none (only the migration's connection may linger).
    assert!(connections_named(&url, &app).await >= 3);
    // Exactly those, once the migration's connection has gone.
    let want = i64::from(3 + hot);
    let settled = support::eventually(Duration::from_secs(30), || async {
        connections_named(&url, &app).await == want
    })
    .await;
    assert!(settled, "{} connections, want {want}", connections_named(&url, &app).await);

    // Without a minimum, nothing stays open after build.
    let lazy_app = format!("dispatch-lazy-{}", uuid::Uuid::new_v4().simple());
    let lazy = PostgresStore::builder(&url)
        .schema(support::fresh_schema())
        .application_name(&lazy_app)
        .build()
        .await
        .expect("store");
    assert_eq!((lazy.pool().size(), lazy.hot_pool().size()), (0, 0));
}

async fn a_foreign_schema_is_refused(url: String) {
    let schema = support::fresh_schema();
    execute(&url, format!("CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".users (id int)"))
        .await;
    let err = PostgresStore::builder(&url).schema(&schema).build().await.expect_err("foreign");
    assert_eq!(err.kind(), ErrorKind::IncompatibleSchema, "{err}");
    assert!(err.message().contains("not a Dispatch schema"), "{err}");
    assert!(err.message().contains("users"), "{err}");
}

async fn an_unreachable_server_is_unavailable(_url: String) {
    let err = PostgresStore::builder("postgres://postgres@127.0.0.1:1/test")
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("127.0.0.1:1/test"), "{err}");
}

async fn a_call_waiting_past_its_timeout_fails_with_timeout(url: String) {
    let schema = support::fresh_schema();
    // Migrated under the default timeout first: on a busy server the migrations alone can take
    // longer than the short timeout this test is about.
    PostgresStore::builder(&url).schema(&schema).build().await.expect("migrate");
    let store = PostgresStore::builder(&url)
        .schema(&schema)
        .call_timeout(Duration::from_millis(300))
        .migrate(false)
        .build()
        .await
        .expect("store");
    // Another session holds the jobs table.
    let mut other = PgConnection::connect(&url).await.expect("connect");
    let mut tx = other.begin().await.expect("begin");
    let lock = format!("LOCK TABLE \"{schema}\".jobs IN ACCESS EXCLUSIVE MODE");
    sqlx::raw_sql(AssertSqlSafe(lock)).execute(&mut *tx).await.expect("lock");
    let err = store.enqueue(vec![NewJob::new("a", vec![])]).await.expect_err("blocked");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    tx.rollback().await.expect("rollback");
    let ok = support::eventually(Duration::from_secs(10), || async {
        store.enqueue(vec![NewJob::new("a", vec![])]).await.is_ok()
    })
    .await;
    assert!(ok, "the store works again once the lock is gone");
}

async fn terminated_connections_are_unavailable_then_replaced(url: String) {
    let app = format!("dispatch-terminate-{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::builder(&url)
        .schema(support::fresh_schema())
        .application_name(&app)
        .max_connections(1)
        .build()
        .await
        .expect("store");
    store.enqueue(vec![NewJob::new("a", vec![])]).await.expect("enqueue");
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert_eq!(terminated, [true], "the store's one connection carries its application_name");
    // The next call finds the connection gone: unavailable (a transient error), or a success
    // when the pool noticed first.
    if let Err(err) = store.count_jobs().await {
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
    let counts = store.count_jobs().await.expect("a new connection replaces the lost one");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 1);
}
