//! Helpers shared by the unit tests.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, Finish, FinishResult, JobId, JobStore, LeaseRef, LeaseToken,
    ManualClock, NewJob, Outcome, WorkerId,
};

use crate::MemoryStore;

/// The lease every test claim takes.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// A store on a manual clock, and the clock.
pub(crate) fn store() -> (MemoryStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::fixed());
    (MemoryStore::with_clock(clock.clone()), clock)
}

/// A job of `name` in the default queue with `priority`.
pub(crate) fn job(name: &str, priority: i32) -> NewJob {
    let mut job = NewJob::new(name, b"{}".to_vec());
    job.priority = priority;
    job
}

/// A claim of up to `limit` jobs of `names` from the default queue.
pub(crate) fn request(names: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: names.iter().map(|&n| n.to_owned()).collect(),
        limit,
        lease_ttl: TTL,
        token: LeaseToken::new(),
    }
}

/// Enqueue `jobs`, all expected to be created; their IDs.
pub(crate) async fn enqueue(store: &MemoryStore, jobs: Vec<NewJob>) -> Vec<JobId> {
    let results = store.enqueue(jobs).await.unwrap();
    assert!(results.iter().all(|r| !r.is_duplicate()), "{results:?}");
    results.into_iter().map(|r| r.id()).collect()
}

/// Claim up to `limit` jobs of `names`.
pub(crate) async fn claim(store: &MemoryStore, names: &[&str], limit: usize) -> Vec<ClaimedJob> {
    store.claim(&request(names, limit)).await.unwrap()
}

/// Claim exactly one job of `names`.
pub(crate) async fn claim_one(store: &MemoryStore, names: &[&str]) -> ClaimedJob {
    let mut claimed = claim(store, names, 1).await;
    assert_eq!(claimed.len(), 1, "expected one claimable job");
    claimed.remove(0)
}

/// The lease of a claimed job.
pub(crate) fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

/// Finish one lease with `outcome`.
pub(crate) async fn finish(store: &MemoryStore, lease: LeaseRef, outcome: Outcome) -> FinishResult {
    store.finish(&[Finish { lease, outcome }]).await.unwrap()[0]
}
