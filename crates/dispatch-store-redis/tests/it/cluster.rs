//! The cluster scripts at their bounds: a sweep whose reclaimed jobs die in greater numbers than
//! the DLQ entry IDs it takes stops there with a correct report, and the next sweep goes on; the
//! record of leader writes keeps the newest 1,000.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    ClaimRequest, Clock as _, JobState, JobStore, LeadershipStore, LeaseToken, ManualClock,
    MembershipStore, QueueCount, WorkerId, WorkerRegistration,
};

use crate::common::{job_in, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_sweep_short_of_dlq_ids_goes_on_next_time", |url| {
            Box::pin(a_sweep_short_of_dlq_ids_goes_on_next_time(url))
        }),
        ("leader_writes_keep_the_newest", |url| Box::pin(leader_writes_keep_the_newest(url))),
    ]
}

const HOUR: Duration = Duration::from_secs(3600);

/// 20 jobs on their last attempt and 5 with attempts left, leased by a worker that goes silent:
/// the first sweep marks it gone and reclaims the first 16 (all dying: one DLQ entry ID each,
/// as many as a sweep takes), the second reclaims the other 9, the third finds nothing.
async fn a_sweep_short_of_dlq_ids_goes_on_next_time(url: String) {
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let worker = WorkerId::new();
    let registration = WorkerRegistration {
        id: worker,
        host: "h".into(),
        pid: 1,
        queues: Vec::new(),
        concurrency: 32,
        version: "v".into(),
    };
    let record = store.register_worker(&registration).await.expect("register");
    assert!(record.registration.queues.is_empty(), "no queues round-trip as an empty list");
    let mut jobs: Vec<_> = (0..20)
        .map(|_| {
            let mut job = job_in("last", "sweep");
            job.max_attempts = 1;
            job
        })
        .collect();
    jobs.extend((0..5).map(|_| job_in("more", "sweep")));
    store.enqueue(jobs).await.expect("enqueue");
    let claim = ClaimRequest {
        worker,
        queues: vec!["sweep".into()],
        names: vec!["last".into(), "more".into()],
        limit: 25,
        lease_ttl: HOUR,
        token: LeaseToken::new(),
    };
    assert_eq!(store.claim(&claim).await.expect("claim").len(), 25);

    clock.advance(Duration::from_secs(60));
    let term = store.acquire_leadership("l", WorkerId::new(), HOUR).await.expect("acquire");
    let term = term.expect("free");
    let first = store.sweep_workers(&term, Duration::from_secs(5), 100).await.expect("sweep");
    assert_eq!(first.gone, [worker]);
    assert_eq!((first.rescue.promoted.len(), first.rescue.rescued.len()), (16, 0));
    let second = store.sweep_workers(&term, Duration::from_secs(5), 100).await.expect("sweep");
    assert!(second.gone.is_empty(), "marked gone once");
    assert_eq!((second.rescue.promoted.len(), second.rescue.rescued.len()), (4, 5));
    let third = store.sweep_workers(&term, Duration::from_secs(5), 100).await.expect("sweep");
    assert!(third.gone.is_empty() && third.rescue.is_empty(), "{third:?}");

    let mut entries: Vec<_> =
        first.rescue.promoted.iter().chain(&second.rescue.promoted).map(|&(_, d)| d).collect();
    entries.sort();
    entries.dedup();
    assert_eq!(entries.len(), 20, "an entry per dead job");
    let count = |state, count| QueueCount { queue: "sweep".into(), state, count };
    assert_eq!(
        store.count_jobs().await.expect("counts"),
        [count(JobState::Available, 5), count(JobState::Dead, 20)]
    );
    assert_eq!(store.leader_writes("l", 10).await.expect("writes").len(), 3);
}

/// 1,005 accepted sweeps: the record keeps the newest 1,000, oldest first, and a larger limit
/// is clamped to them.
async fn leader_writes_keep_the_newest(url: String) {
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let term = store.acquire_leadership("l", WorkerId::new(), HOUR).await.expect("acquire");
    let term = term.expect("free");
    let start = clock.now();
    for _ in 0..LEADER_WRITES_KEPT + 5 {
        store.sweep_workers(&term, HOUR, 10).await.expect("sweep");
        clock.advance(Duration::from_millis(1));
    }
    let writes = store.leader_writes("l", 5000).await.expect("writes");
    assert_eq!(writes.len(), LEADER_WRITES_KEPT);
    assert_eq!(writes[0].at, start + Duration::from_millis(5), "the oldest five dropped");
    assert!(writes.windows(2).all(|w| w[0].at < w[1].at), "oldest first");
    assert!(store.leader_writes("l", 0).await.expect("writes").is_empty());
    assert!(store.leader_writes("other", 10).await.expect("writes").is_empty());
}
