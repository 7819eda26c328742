//! What a claim reads: O(its batch), whatever else its queue holds. A queue crowded with jobs
//! that are not due (suspended workflow drives, snoozes, retries) or that belong to names the
//! worker does not run must not make each claim walk them, since every NOTIFY makes every idle
//! worker claim. Checked on the claim's own plan (`PostgresStore::explain_claim`), on a table
//! that was never analyzed (the planner's worst guesses) and again after `ANALYZE`. And what a
//! lookup of running jobs by ID reads while vacuum is held back. Needs the test server (see
//! `support`).

use std::time::Duration;

use sqlx::Connection as _;

use dispatch_core::{ClaimRequest, JobStore, LeaseToken, WorkerId};
use dispatch_store_postgres::PostgresStore;
use serde_json::Value;

use crate::support::{self, ServerTest};

/// Jobs of each crowd: due jobs of another name, and future jobs of the claimed name.
const CROWD: i64 = 100_000;
/// Due jobs of the claimed name: fewer than the claim's limit, so the claim is a short one.
const DUE: i64 = 5;
/// The claim's limit.
const LIMIT: usize = 16;
/// Rows any plan node may read and throw away (the crowd is 2,000 times as many).
const MAX_FILTERED: f64 = 100.0;
/// Shared buffers a claim may touch (reading the crowd touches thousands).
const MAX_BUFFERS: f64 = 300.0;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_claim_beside_a_crowded_queue_reads_only_its_batch", |url| {
            Box::pin(a_claim_beside_a_crowded_queue_reads_only_its_batch(url))
        }),
        ("a_claim_over_many_names_is_not_jit_compiled", |url| {
            Box::pin(a_claim_over_many_names_is_not_jit_compiled(url))
        }),
        ("a_claims_asynchronous_commit_ends_with_its_transaction", |url| {
            Box::pin(a_claims_asynchronous_commit_ends_with_its_transaction(url))
        }),
        ("a_job_below_the_claim_mark_is_claimed", |url| {
            Box::pin(a_job_below_the_claim_mark_is_claimed(url))
        }),
        ("running_jobs_are_looked_up_by_id_while_vacuum_is_held_back", |url| {
            Box::pin(running_jobs_are_looked_up_by_id_while_vacuum_is_held_back(url))
        }),
    ]
}

async fn a_claim_beside_a_crowded_queue_reads_only_its_batch(url: String) {
    let schema = support::fresh_schema();
    let store = PostgresStore::builder(url.as_str())
        .schema(schema.clone())
        .max_connections(2)
        .call_timeout(Duration::from_secs(60))
        .build()
        .await
        .expect("store");
    crowd(&store, &schema).await;
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["crowded".into()],
        limit: LIMIT,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };

    check_plan(&store.explain_claim(&request).await.expect("explain"), "never analyzed");
    let analyze = format!("ANALYZE \"{schema}\".jobs");
    sqlx::raw_sql(sqlx::AssertSqlSafe(analyze)).execute(store.pool()).await.expect("analyze");
    check_plan(&store.explain_claim(&request).await.expect("explain"), "analyzed");

    // The plan was explained, not run: the due jobs are all still there to claim.
    let claimed = store.claim(&request).await.expect("claim");
    assert_eq!(claimed.len(), DUE as usize);
    assert!(claimed.iter().all(|c| c.job.name == "crowded"));
}

/// The planner's estimates for the claim grow with its (queue, name) pairs and its batch; past
/// `jit_above_cost` the server would compile every claim (hundreds of milliseconds each) unless
/// the store's sessions turn JIT off.
async fn a_claim_over_many_names_is_not_jit_compiled(url: String) {
    let store = small_store(&url).await;
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into(), "mail".into(), "reports".into()],
        names: (0..300).map(|n| format!("job-{n}")).collect(),
        limit: 256,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let plan = store.explain_claim(&request).await.expect("explain");
    let plans: Value = serde_json::from_str(&plan).expect("plan JSON");
    assert!(plans[0].get("JIT").is_none(), "a claim was JIT-compiled: {plan}");
}

/// A claim commits without waiting for the WAL flush (`synchronous_commit = off` for its own
/// transaction only): the session it ran on must commit durably again afterwards, since the
/// hot-path pool hands that session to enqueues next.
async fn a_claims_asynchronous_commit_ends_with_its_transaction(url: String) {
    let store = small_store(&url).await;
    let job = dispatch_core::NewJob::new("plain", Vec::new());
    store.enqueue(vec![job.clone()]).await.expect("enqueue");
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec![job.queue.clone()],
        names: vec![job.name.clone()],
        limit: 1,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    assert_eq!(store.claim(&request).await.expect("claim").len(), 1);
    // One connection: the claim's session is the one asked.
    let setting: String =
        sqlx::query_scalar("SHOW synchronous_commit").fetch_one(store.pool()).await.expect("show");
    assert_eq!(setting, "on", "the claim's asynchronous commit outlived its transaction");
}

/// While claims come back full, a level is read from just below what this store claimed last
/// (past the dead index entries of earlier claims). A job that lands below that mark (here: a
/// run-at an hour in the past, enqueued after the mark was set) is still claimed: as soon as
/// the marked ranges can not fill a batch, the claim reads below the marks too.
async fn a_job_below_the_claim_mark_is_claimed(url: String) {
    let store = small_store(&url).await;
    let jobs: Vec<_> = (0..30u8).map(|n| dispatch_core::NewJob::new("marked", vec![n])).collect();
    store.enqueue(jobs).await.expect("enqueue");
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["marked".into()],
        limit: 10,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let mut claimed = store.claim(&request).await.expect("first claim").len();
    assert_eq!(claimed, 10, "a full first claim sets the mark");

    let mut early = dispatch_core::NewJob::new("marked", b"early".to_vec());
    let now = dispatch_core::Clock::now(&dispatch_core::SystemClock);
    let an_hour_ago =
        dispatch_core::Timestamp::from_unix_micros(now.as_unix_micros() - 3_600_000_000);
    early.run_at = dispatch_core::RunAt::At(an_hour_ago);
    store.enqueue(vec![early.clone()]).await.expect("enqueue early");

    // Twenty-one jobs are due: a claim of up to 25 takes them all, the one below the mark too.
    let rest = ClaimRequest { limit: 25, ..request };
    let batch = store.claim(&rest).await.expect("claim");
    assert!(batch.iter().any(|c| c.job.id == early.id), "the job below the mark was not claimed");
    claimed += batch.len();
    assert_eq!(claimed, 31);
}

/// A store of one pooled connection in a fresh schema.
/// A finish, a heartbeat and a drive's fence look running jobs up by ID. While a session holds
/// the xmin horizon back (here: a transaction that took an ID and stays open), every ended
/// attempt leaves a dead entry in the index of leases; a lookup planned through that index
/// reads them all on every call. The lookup, shaped as the finish's, must go by primary key.
async fn running_jobs_are_looked_up_by_id_while_vacuum_is_held_back(url: String) {
    let store = small_store(&url).await;
    let mut pin = sqlx::PgConnection::connect(&url).await.expect("pinning session");
    sqlx::raw_sql("BEGIN; SELECT txid_current()").execute(&mut pin).await.expect("pin");
    let request = |limit| ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["churn".into()],
        limit,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    for _ in 0..3 {
        let jobs: Vec<_> = (0..1000).map(|_| dispatch_core::NewJob::new("churn", vec![])).collect();
        store.enqueue(jobs).await.expect("enqueue");
        let claimed = store.claim(&request(1000)).await.expect("claim");
        let finishes: Vec<_> = claimed
            .iter()
            .map(|c| dispatch_core::Finish {
                lease: dispatch_core::LeaseRef { job_id: c.job.id, token: c.lease.token },
                outcome: dispatch_core::Outcome::Complete,
            })
            .collect();
        store.finish(&finishes).await.expect("finish");
    }
    let jobs: Vec<_> = (0..16).map(|_| dispatch_core::NewJob::new("churn", vec![])).collect();
    store.enqueue(jobs).await.expect("enqueue");
    let running = store.claim(&request(16)).await.expect("claim");
    let ids: Vec<String> = running.iter().map(|c| c.job.id.uuid().to_string()).collect();
    let schema = store.schema();
    let analyze = format!("ANALYZE \"{schema}\".jobs");
    sqlx::raw_sql(sqlx::AssertSqlSafe(analyze)).execute(store.pool()).await.expect("analyze");
    // A utility statement takes no parameters: the IDs (UUIDs the store made) are inlined.
    let explain = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) \
         WITH i AS (SELECT * FROM unnest('{{{}}}'::uuid[]) AS i(job_id)) \
         SELECT j.id FROM \"{schema}\".jobs j \
         WHERE j.id IN (SELECT job_id FROM i) AND j.state = 'running' ORDER BY j.id FOR UPDATE",
        ids.join(",")
    );
    let row =
        sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_one(store.pool()).await.expect("explain");
    // The plan is `json`, whose binary form is its text.
    let text: String = sqlx::Row::try_get_unchecked(&row, 0).expect("plan text");
    let plan: Value = serde_json::from_str(&text).expect("plan JSON");
    sqlx::raw_sql("ROLLBACK").execute(&mut pin).await.expect("unpin");
    let mut nodes = Vec::new();
    collect(&plan[0]["Plan"], &mut nodes);
    let lease_index = nodes.iter().any(|n| n["Index Name"].as_str() == Some("jobs_lease"));
    assert!(!lease_index, "running jobs were looked up through the lease index: {plan}");
    let buffers = plan[0]["Plan"]["Shared Hit Blocks"].as_f64().unwrap_or(0.0);
    assert!(buffers <= MAX_BUFFERS, "a lookup of 16 jobs touched {buffers} buffers: {plan}");
}

async fn small_store(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(1)
        .build()
        .await
        .expect("store")
}

/// Fill the queue in one statement per crowd, as a bulk load would, with autovacuum off for the
/// table so it stays never analyzed until the test says so.
async fn crowd(store: &PostgresStore, schema: &str) {
    let sql = format!(
        "ALTER TABLE \"{schema}\".jobs SET (autovacuum_enabled = false); \
         INSERT INTO \"{schema}\".jobs (id, name, queue, payload, priority, state, attempt, \
           max_attempts, run_at, created_at) \
         SELECT gen_random_uuid(), c.name, 'default', '\\x', 0, 'available', 0, 3, \
           (extract(epoch from now()) * 1000000)::bigint + c.offset_us, \
           (extract(epoch from now()) * 1000000)::bigint \
         FROM (VALUES ('crowded', 86400000000, {CROWD}), ('unhandled', -1000000, {CROWD}), \
           ('crowded', -1000000, {DUE})) AS c(name, offset_us, n) \
         CROSS JOIN LATERAL generate_series(1, c.n) AS g"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(store.pool()).await.expect("crowd");
}

/// Assert that the claim's plan read O(limit) rows: no node threw many away, and the statement
/// touched few buffers.
fn check_plan(json: &str, table: &str) {
    let plans: Value = serde_json::from_str(json).expect("plan JSON");
    let root = &plans[0]["Plan"];
    let mut nodes = Vec::new();
    collect(root, &mut nodes);
    for node in &nodes {
        let filtered = node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Index Recheck"].as_f64().unwrap_or(0.0);
        assert!(
            filtered <= MAX_FILTERED,
            "{table}: a claim node threw away {filtered} rows, it reads the queue and not its \
             batch: {node}"
        );
    }
    let buffers = ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|key| root[*key].as_f64().unwrap_or(0.0))
        .sum::<f64>();
    assert!(
        buffers <= MAX_BUFFERS,
        "{table}: a claim touched {buffers} buffers, it reads the queue and not its batch: {json}"
    );
}

/// `node` and every node under it.
fn collect<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    for child in node["Plans"].as_array().into_iter().flatten() {
        collect(child, out);
    }
}
