//! Rescue in bulk: one `rescue_expired` call rescues as many expired leases as its limit allows,
//! however many of them die (a rescue script takes a few DLQ entry IDs at a time and is called
//! again when the dying jobs use them up).

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{JobState, JobStore, ManualClock, QueueCount};

use crate::common::{job_in, request, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![("many_dying_jobs_are_rescued_in_one_call", |url| {
        Box::pin(many_dying_jobs_are_rescued_in_one_call(url))
    })]
}

/// 50 jobs on their last attempt and 30 with attempts left, all leases expired: one call with a
/// limit of 100 rescues all 80, the 50 into the DLQ with an entry each.
async fn many_dying_jobs_are_rescued_in_one_call(url: String) {
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let mut jobs: Vec<_> = (0..50)
        .map(|_| {
            let mut job = job_in("last", "rescue");
            job.max_attempts = 1;
            job
        })
        .collect();
    jobs.extend((0..30).map(|_| job_in("more", "rescue")));
    store.enqueue(jobs).await.expect("enqueue");
    let ttl = Duration::from_secs(10);
    for name in ["last", "more"] {
        let claimed = store.claim(&request("rescue", name, 100, ttl)).await.expect("claim");
        assert!(!claimed.is_empty());
    }
    clock.advance(ttl);
    let report = store.rescue_expired(100).await.expect("rescue");
    assert_eq!((report.promoted.len(), report.rescued.len()), (50, 30));
    let mut entries: Vec<_> = report.promoted.iter().map(|&(_, dlq)| dlq).collect();
    entries.sort();
    entries.dedup();
    assert_eq!(entries.len(), 50, "an entry per dead job");
    let count = |state, count| QueueCount { queue: "rescue".into(), state, count };
    assert_eq!(
        store.count_jobs().await.expect("counts"),
        [count(JobState::Available, 30), count(JobState::Dead, 50)]
    );
    assert!(store.rescue_expired(100).await.expect("again").is_empty());
}
