//! What the integration tests share: a store on a fresh prefix reading the server's clock, new
//! jobs, claims, and the server's time.

use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, JobStore, LeaseRef, LeaseToken, NewJob, Timestamp, WorkerId,
};
use dispatch_store_redis::RedisStore;

/// A store on a fresh key prefix, on the server's clock.
pub(crate) async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(crate::support::fresh_prefix())
        .max_connections(2)
        .build()
        .await
        .expect("connect")
}

/// A job `name` in `queue`.
pub(crate) fn job_in(name: &str, queue: &str) -> NewJob {
    let mut job = NewJob::new(name, b"{}".to_vec());
    job.queue = queue.to_owned();
    job
}

/// A claim of up to `limit` jobs `name` in `queue`, leased for `ttl`.
pub(crate) fn request(queue: &str, name: &str, limit: usize, ttl: Duration) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: vec![queue.to_owned()],
        names: vec![name.to_owned()],
        limit,
        lease_ttl: ttl,
        token: LeaseToken::new(),
    }
}

/// Claim with `request` every 10 ms until a job comes, at most `limit`.
pub(crate) async fn claim_when_due(
    store: &RedisStore,
    request: &ClaimRequest,
    limit: Duration,
) -> ClaimedJob {
    let claimed = crate::support::eventually(limit, || async {
        store.claim(request).await.expect("claim").into_iter().next()
    })
    .await;
    claimed.unwrap_or_else(|| panic!("nothing claimed within {limit:?}"))
}

/// The lease of a claimed job.
pub(crate) fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

/// When `claimed` was claimed, by the server's clock: its lease expiry less the lease's TTL.
pub(crate) fn claimed_at(claimed: &ClaimedJob, ttl: Duration) -> Timestamp {
    claimed.lease.expires_at - ttl
}

/// The server's clock now (`TIME`).
pub(crate) async fn server_time(url: &str) -> Timestamp {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.expect("TIME");
    Timestamp::from_unix_micros(secs * 1_000_000 + micros)
}
