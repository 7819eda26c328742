//! Calls whose answer the caller never gets: a claim that times out while another session holds
//! a lock on the jobs table must not commit behind the caller's back (the server's statement
//! timeout is below the call timeout), and the leases of a claim whose answer was lost are given
//! back by the claim's token. Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::{ClaimRequest, ErrorKind, JobState, JobStore, LeaseToken, NewJob, WorkerId};
use dispatch_store_postgres::PostgresStore;
use sqlx::Connection;

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_timed_out_claim_commits_nothing", |url| {
            Box::pin(a_timed_out_claim_commits_nothing(url))
        }),
        ("a_lost_claim_is_released_by_its_token", |url| {
            Box::pin(a_lost_claim_is_released_by_its_token(url))
        }),
    ]
}

fn request(token: LeaseToken) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["locked".into()],
        limit: 10,
        lease_ttl: Duration::from_secs(600),
        token,
    }
}

/// While another session holds the jobs table locked past the call timeout, a claim fails with
/// `Timeout`; once the lock is gone the job is still available with its attempt unspent (before
/// the server-side timeout, the server went on and committed the claim: running, attempt 1,
/// under a lease nobody held).
async fn a_timed_out_claim_commits_nothing(url: String) {
    let schema = support::fresh_schema();
    let store = PostgresStore::builder(&url)
        .schema(schema.clone())
        .application_name(APP)
        .call_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("store");
    let id = store.enqueue(vec![NewJob::new("locked", vec![])]).await.unwrap()[0].id();
    let mut locker = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut tx = locker.begin().await.expect("begin");
    let lock = format!("LOCK TABLE \"{schema}\".jobs IN ACCESS EXCLUSIVE MODE");
    sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *tx).await.expect("lock");
    let claimed = store.claim(&request(LeaseToken::new())).await;
    let error = claimed.expect_err("the claim can not get past the lock");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    // Hold the lock a while longer: a statement still alive on the server would now wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while busy_sessions(&url).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the server gave up the claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.commit().await.expect("unlock");
    let job = store.get_job(id).await.unwrap().expect("job");
    assert_eq!((job.state, job.attempt), (JobState::Available, 0));
}

/// The application name of the store whose claim times out.
const APP: &str = "dispatch-lost-answers";

/// That store's sessions that are running a statement now.
async fn busy_sessions(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state = 'active'",
    )
    .bind(APP)
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_activity")
}

/// A claim that committed but whose answer the caller lost is released by its token: the jobs
/// are available at once with their attempts given back.
async fn a_lost_claim_is_released_by_its_token(url: String) {
    let store =
        PostgresStore::builder(&url).schema(support::fresh_schema()).build().await.expect("store");
    let jobs = vec![NewJob::new("locked", vec![]), NewJob::new("locked", vec![])];
    store.enqueue(jobs).await.unwrap();
    let token = LeaseToken::new();
    let claimed = store.claim(&request(token)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.lease.token == token), "leases carry the claim's token");
    assert_eq!(store.release_claim(token).await.unwrap(), 2);
    assert_eq!(store.release_claim(token).await.unwrap(), 0, "nothing left to release");
    for job in claimed {
        let job = store.get_job(job.job.id).await.unwrap().expect("job");
        assert_eq!((job.state, job.attempt), (JobState::Available, 0));
    }
}
