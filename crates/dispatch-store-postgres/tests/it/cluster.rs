//! The cluster beyond the conformance suite: the record of leader writes trimmed to the newest
//! `LEADER_WRITES_KEPT` per name, and the registry, leadership and sweep deciding by the
//! database clock (the suite injects a manual clock). Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    ClaimRequest, FailureKind, JobState, JobStore, LeadershipStore, LeaseRef, LeaseToken,
    MembershipStore, NewJob, WorkerId, WorkerRegistration, WorkerState,
};
use dispatch_store_postgres::PostgresStore;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("leader_writes_keep_the_newest_thousand_per_name", |url| {
            Box::pin(leader_writes_keep_the_newest_thousand_per_name(url))
        }),
        ("the_database_clock_decides_without_an_injected_clock", |url| {
            Box::pin(the_database_clock_decides_without_an_injected_clock(url))
        }),
        ("a_term_taken_after_a_lock_wait_starts_when_taken", |url| {
            Box::pin(a_term_taken_after_a_lock_wait_starts_when_taken(url))
        }),
    ]
}

async fn store(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(2)
        .build()
        .await
        .expect("store")
}

fn registration(id: WorkerId) -> WorkerRegistration {
    WorkerRegistration {
        id,
        host: "host-b".into(),
        pid: 7,
        queues: vec!["default".into()],
        concurrency: 4,
        version: "0.1.0".into(),
    }
}

/// How many writes of leadership `name` the store's record holds, and the oldest one's `at`.
async fn recorded(url: &str, store: &PostgresStore, name: &str) -> (i64, Option<i64>) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let sql = format!(
        "SELECT count(*), min(at) FROM \"{}\".leader_writes WHERE name = $1",
        store.schema()
    );
    sqlx::query_as(AssertSqlSafe(sql)).bind(name).fetch_one(&mut conn).await.expect("count")
}

async fn leader_writes_keep_the_newest_thousand_per_name(url: String) {
    let store = store(&url).await;
    let term = store
        .acquire_leadership("trim", WorkerId::new(), Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("free");
    // A full record, written directly (a thousand sweeps would only be slower), and another
    // name's few writes.
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let fill = format!(
        "INSERT INTO \"{s}\".leader_writes (name, term, at, action) \
         SELECT 'trim', 1, g, 'old' FROM generate_series(1, {LEADER_WRITES_KEPT}) g; \
         INSERT INTO \"{s}\".leader_writes (name, term, at, action) \
         SELECT 'other', 1, g, 'old' FROM generate_series(1, 3) g",
        s = store.schema()
    );
    sqlx::raw_sql(AssertSqlSafe(fill)).execute(&mut conn).await.expect("fill");

    for sweep in 1..=2 {
        store.sweep_workers(&term, Duration::from_secs(5), 10).await.expect("sweep");
        let kept = i64::try_from(LEADER_WRITES_KEPT).expect("fits");
        assert_eq!(recorded(&url, &store, "trim").await, (kept, Some(1 + sweep)), "oldest go");
    }
    assert_eq!(recorded(&url, &store, "other").await, (3, Some(1)), "other names untouched");
    let writes = store.leader_writes("trim", usize::MAX).await.expect("writes");
    assert_eq!(writes.len(), LEADER_WRITES_KEPT, "clamped to the kept writes");
    let actions: Vec<&str> = writes.iter().rev().take(3).map(|w| w.action.as_str()).collect();
    assert_eq!(actions, vec!["sweep", "sweep", "old"], "newest last");
    assert_eq!(writes[0].at.as_unix_micros(), 3, "oldest first");
}

async fn the_database_clock_decides_without_an_injected_clock(url: String) {
    let store = store(&url).await;
    let (worker, rival) = (WorkerId::new(), WorkerId::new());
    let record = store.register_worker(&registration(worker)).await.expect("register");
    assert_eq!(record.started_at, record.last_seen);
    store.enqueue(vec![NewJob::new("lost", vec![])]).await.expect("enqueue");
    let request = ClaimRequest {
        worker,
        queues: vec!["default".into()],
        names: vec!["lost".into()],
        limit: 1,
        lease_ttl: Duration::from_secs(3600),
        token: LeaseToken::new(),
    };
    let claimed = store.claim(&request).await.expect("claim");
    let ttl = Duration::from_secs(60);
    let term = store.acquire_leadership("clock", rival, ttl).await.expect("acquire").expect("free");
    assert_eq!(term.expires_at, term.elected_at + ttl);
    let other = store.acquire_leadership("clock", worker, ttl).await.expect("acquire");
    assert_eq!(other, None, "the database clock says the term is valid");

    tokio::time::sleep(Duration::from_millis(50)).await;
    let sweep = store.sweep_workers(&term, Duration::from_millis(1), 10).await.expect("sweep");
    assert_eq!(sweep.gone, vec![worker], "silent for longer than the timeout");
    assert_eq!(sweep.rescue.rescued, vec![claimed[0].job.id]);
    let job = store.get_job(claimed[0].job.id).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Available);
    let error = job.errors.last().expect("recorded");
    assert_eq!(error.kind, FailureKind::WorkerLost);
    assert_eq!(error.message, dispatch_core::transition::lost_worker_message(worker));
    let writes = store.leader_writes("clock", 10).await.expect("writes");
    assert_eq!(writes.len(), 1);
    assert!(writes[0].at > record.last_seen && writes[0].at < term.expires_at, "{writes:?}");

    let lease = LeaseRef { job_id: claimed[0].job.id, token: claimed[0].lease.token };
    let beat = store.heartbeat_worker(worker, &[lease], ttl).await.expect("heartbeat");
    assert_eq!((beat.state, beat.leases.lost.len()), (WorkerState::Gone, 1));
    store.resign_leadership(&term).await.expect("resign");
    let next = store.acquire_leadership("clock", worker, ttl).await.expect("acquire");
    assert_eq!(next.map(|l| (l.term, l.holder)), Some((2, worker)), "free at once");
}

/// A leadership statement that waited for the leadership row's lock (here held by another
/// session for 2.5 s, as a client paused inside a transaction would) starts the new term when
/// it takes it, not when it began waiting: the lease it answers has not already run out.
async fn a_term_taken_after_a_lock_wait_starts_when_taken(url: String) {
    let store = store(&url).await;
    let first = store.acquire_leadership("held", WorkerId::new(), Duration::from_millis(1));
    first.await.expect("acquire").expect("free");
    let mut locker = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut locker).await.expect("begin");
    let lock =
        format!("SELECT 1 FROM \"{}\".leaders WHERE name = 'held' FOR UPDATE", store.schema());
    sqlx::query(AssertSqlSafe(lock)).execute(&mut locker).await.expect("lock");
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store.acquire_leadership("held", WorkerId::new(), Duration::from_secs(2)).await
        })
    };
    // Once the statement waits on the lock (so the test is not passed by a statement that had
    // not started yet), hold the lock past the lease it asks for.
    let blocked = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND a.query LIKE '%\"{}\".leaders%'",
        store.schema()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(AssertSqlSafe(blocked.clone()))
            .fetch_one(&mut locker)
            .await
            .expect("pg_locks");
        if waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the acquire never waited on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query("COMMIT").execute(&mut locker).await.expect("commit");
    let leader = waiting.await.expect("task").expect("acquire").expect("the first term expired");
    let now: i64 =
        sqlx::query_scalar("SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint")
            .fetch_one(&mut locker)
            .await
            .expect("now");
    assert_eq!(leader.term, 2);
    assert!(
        leader.expires_at.as_unix_micros() > now,
        "the term was born expired: expires {} at {now}",
        leader.expires_at.as_unix_micros()
    );
}
