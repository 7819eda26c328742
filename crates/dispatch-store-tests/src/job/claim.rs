//! Claim: order, run-at, filters, the lease it writes, limits, exclusivity under concurrency.

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::{ClaimRequest, JobId, JobState, LeaseToken, RunAt, WorkerId};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{ids, job, job_in, millis, request, request_in, secs, share};

/// Higher priority is claimed first; within a priority, enqueue order, whether the jobs came in
/// separate calls or in one batch.
pub async fn claim_order_priority_then_fifo(ctx: TestContext) {
    let prio = |p: i32| {
        let mut j = job("ordered");
        j.priority = p;
        j
    };
    let low1 = ctx.enqueue_one(prio(0)).await;
    let high1 = ctx.enqueue_one(prio(10)).await;
    let low2 = ctx.enqueue_one(prio(0)).await;
    let neg = ctx.enqueue_one(prio(-5)).await;
    let batch = ctx.enqueue(vec![prio(0), prio(10), prio(0), prio(0), prio(5)]).await;
    let (low3, high2, low4, low5, mid) = (batch[0], batch[1], batch[2], batch[3], batch[4]);
    let low6 = ctx.enqueue_one(prio(0)).await;

    let expected = [high1, high2, mid, low1, low2, low3, low4, low5, low6, neg];
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(ctx.claim_one("ordered").await.job.id);
    }
    assert_eq!(got, expected, "claimed one at a time: priority, then enqueue order");
    ctx.claim_none("ordered").await;

    // A claim of several takes the best ones.
    let again = ctx.enqueue(vec![prio(0), prio(3), prio(1), prio(3), prio(0)]).await;
    let claimed = ctx.claim(&["ordered"], 3).await;
    assert_eq!(ids(&claimed), HashSet::from([again[1], again[3], again[2]]), "the top three");
}

/// Within a priority the earlier run-at goes first, whatever the enqueue order; a higher
/// priority still beats an earlier run-at.
pub async fn claim_order_run_at_breaks_priority_ties(ctx: TestContext) {
    let t0 = ctx.clock.now();
    let at = |offset: Duration, p: i32| {
        let mut j = job("timed");
        j.run_at = RunAt::At(t0 + offset);
        j.priority = p;
        j
    };
    let late = ctx.enqueue_one(at(secs(30), 0)).await;
    let early = ctx.enqueue_one(at(secs(10), 0)).await;
    let middle = ctx.enqueue_one(at(secs(20), 0)).await;
    let urgent_latest = ctx.enqueue_one(at(secs(40), 1)).await;
    let past = ctx.enqueue_one(at(Duration::ZERO, 0)).await;
    ctx.clock.advance(secs(40));

    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(ctx.claim_one("timed").await.job.id);
    }
    assert_eq!(got, [urgent_latest, past, early, middle, late]);
}

/// Claim order holds across every name and queue a claim lists, over the whole `i32` priority
/// range.
pub async fn claim_order_spans_names_and_queues(ctx: TestContext) {
    let make = |name: &str, queue: &str, priority: i32| {
        let mut j = job_in(name, queue);
        j.priority = priority;
        j
    };
    let jobs = vec![
        make("a", "q1", 0),
        make("b", "q2", i32::MIN),
        make("b", "q1", 0),
        make("a", "q2", i32::MAX),
        make("a", "q1", -1),
        make("b", "q2", 1),
        make("a", "q2", 0),
        make("b", "q1", i32::MAX),
    ];
    let ids = ctx.enqueue(jobs).await;
    let expected = [ids[3], ids[7], ids[5], ids[0], ids[2], ids[6], ids[4], ids[1]];
    let request = request_in(&["q1", "q2"], &["a", "b"], 1);
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let claimed = ctx.claim_with(&request).await;
        assert_eq!(claimed.len(), 1, "claimed so far: {got:?}");
        got.push(claimed[0].job.id);
    }
    assert_eq!(got, expected, "priority, then enqueue order, across names and queues");
    assert!(ctx.claim_with(&request).await.is_empty());
}

/// A job with `RunAt::At(T)` is not claimed at T − 1 ms and is claimed at T; a job not yet due
/// does not hold back due jobs of lower priority.
pub async fn claim_waits_for_run_at(ctx: TestContext) {
    let t = ctx.clock.now() + secs(3600);
    let mut scheduled = job("later");
    scheduled.run_at = RunAt::At(t);
    scheduled.priority = 100;
    let id = ctx.enqueue_one(scheduled).await;
    assert_eq!(ctx.job(id).await.run_at, t, "run_at is the given time");
    assert_eq!(ctx.job(id).await.state, JobState::Available, "a scheduled job is available");

    let due = ctx.enqueue_one(job("later")).await;
    assert_eq!(ctx.claim_one("later").await.job.id, due, "the due job, not the scheduled one");
    ctx.claim_none("later").await;

    ctx.clock.set(t - millis(1));
    ctx.claim_none("later").await;
    ctx.clock.set(t);
    let claimed = ctx.claim_one("later").await;
    assert_eq!(claimed.job.id, id);
    assert_eq!(claimed.job.run_at, t, "claiming keeps run_at");
}

/// A job whose name is not in the claim's `names`, or whose queue is not in its `queues`, is
/// never returned and stays available.
pub async fn claim_filters_names_and_queues(ctx: TestContext) {
    let wanted = ctx.enqueue_one(job("a")).await;
    let other_name = ctx.enqueue_one(job("b")).await;
    let other_queue = ctx.enqueue_one(job_in("a", "elsewhere")).await;

    let claimed = ctx.claim(&["a"], 10).await;
    assert_eq!(ids(&claimed), HashSet::from([wanted]), "only the listed name and queue");
    ctx.claim_none("a").await;

    for id in [other_name, other_queue] {
        let left = ctx.job(id).await;
        assert_eq!(left.state, JobState::Available, "{id} left alone");
        assert_eq!(left.attempt, 0, "{id} spent no attempt");
        assert_eq!(left.lease, None, "{id} has no lease");
    }

    // Several names and queues at once.
    let third = ctx.enqueue_one(job_in("c", "third")).await;
    let claimed = ctx.claim_with(&request_in(&["elsewhere", "default"], &["a", "b"], 10)).await;
    assert_eq!(ids(&claimed), HashSet::from([other_name, other_queue]));
    assert_eq!(ctx.job(third).await.state, JobState::Available, "unlisted queue and name");

    // A name or queue listed twice does not claim a job twice.
    let more = ctx.enqueue(vec![job("d"), job("d"), job("d")]).await;
    let claimed = ctx.claim_with(&request_in(&["default", "default"], &["d", "d"], 10)).await;
    assert_eq!(claimed.len(), 3, "each job once");
    assert_eq!(ids(&claimed), more.into_iter().collect());
}

/// A claim with no names, or no queues, claims nothing.
pub async fn claim_with_empty_names_or_queues_claims_nothing(ctx: TestContext) {
    let id = ctx.enqueue_one(job("a")).await;
    let claimed = ctx.claim(&[], 10).await;
    assert!(claimed.is_empty(), "empty names claimed {:?}", ids(&claimed));
    let claimed = ctx.claim_with(&request_in(&[], &["a"], 10)).await;
    assert!(claimed.is_empty(), "empty queues claimed {:?}", ids(&claimed));
    assert_eq!(ctx.job(id).await.state, JobState::Available);
    assert_eq!(ctx.claim_one("a").await.job.id, id, "still claimable");
}

/// Claiming makes the job running under a lease with the claim's token: attempt 1, owner the worker, expiry
/// now + ttl, the lease in the job; the stored job is what the claim returned.
pub async fn claim_writes_lease(ctx: TestContext) {
    let ids_in = ctx.enqueue(vec![job("leased"), job("leased")]).await;
    ctx.clock.advance(secs(7));
    let now = ctx.clock.now();
    let worker = WorkerId::new();
    let ttl = secs(45);
    let token = LeaseToken::new();
    let claimed = ctx
        .claim_with(&ClaimRequest {
            worker,
            queues: vec!["default".into()],
            names: vec!["leased".into()],
            limit: 10,
            lease_ttl: ttl,
            token,
        })
        .await;
    assert_eq!(ids(&claimed), ids_in.iter().copied().collect());
    for c in &claimed {
        assert_eq!(c.job.state, JobState::Running);
        assert_eq!(c.job.attempt, 1);
        assert_eq!(c.lease.owner, worker);
        assert_eq!(c.lease.expires_at, now + ttl);
        assert_eq!(c.job.lease, Some(c.lease));
        assert!(!c.job.cancel_requested);
        assert_eq!(ctx.job(c.job.id).await, c.job, "the stored job is the claimed job");
    }
    assert!(claimed.iter().all(|c| c.lease.token == token), "every lease under the claim's token");
}

/// A claim returns at most `limit` jobs (none for 0), and the rest stay available.
pub async fn claim_respects_limit(ctx: TestContext) {
    let all: Vec<JobId> = ctx.enqueue((0..10).map(|_| job("many")).collect()).await;
    assert!(ctx.claim(&["many"], 0).await.is_empty(), "limit 0 claims nothing");
    let first = ctx.claim(&["many"], 3).await;
    assert_eq!(ids(&first), all[..3].iter().copied().collect(), "the first three, FIFO");
    let rest = ctx.claim(&["many"], 100).await;
    assert_eq!(rest.len(), 7);
    assert!(ids(&first).is_disjoint(&ids(&rest)));
    ctx.claim_none("many").await;
}

/// Eight concurrent claimers over 1,000 jobs: every job is claimed exactly once.
pub async fn claim_is_exclusive(ctx: TestContext) {
    let mut all = HashSet::new();
    for _ in 0..10 {
        let batch = ctx.enqueue((0..100).map(|_| job("contended")).collect()).await;
        all.extend(batch);
    }
    assert_eq!(all.len(), 1000);

    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let store = share(&ctx.store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    // A fresh token per claim call, as a worker makes one.
                    let request = request(&["contended"], 7);
                    let claimed = store.claim(&request).await.expect("claim");
                    assert!(claimed.iter().all(|c| c.lease.token == request.token));
                    if claimed.is_empty() {
                        return mine;
                    }
                    assert!(
                        claimed.len() <= 7,
                        "a claim returned {} jobs over limit 7",
                        claimed.len()
                    );
                    mine.extend(claimed.into_iter().map(|c| (c.job.id, c.lease.token)));
                }
            })
        })
        .collect();

    let mut seen = HashSet::new();
    for claimer in claimers {
        for (id, _token) in claimer.await.expect("claimer task") {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen, all, "every job claimed");
    ctx.claim_none("contended").await;
    for id in all.iter().take(50) {
        let job = ctx.job(*id).await;
        assert_eq!((job.state, job.attempt), (JobState::Running, 1), "job {id}");
    }
}

/// `next_due` reports how long until the next available job of the given queues and names is
/// due, by the store's clock. A store that does not support it answers `None` throughout (the
/// runtime then polls); one that answers must answer exactly.
pub async fn next_due_reports_time_until_the_next_job(ctx: TestContext) {
    let queues = vec![dispatch_core::job::DEFAULT_QUEUE.to_owned()];
    let names = vec!["later".to_owned()];
    let due = |ctx: &TestContext| {
        let (store, queues, names) = (ctx.store.clone(), queues.clone(), names.clone());
        async move { store.next_due(&queues, &names).await.expect("next_due") }
    };
    assert_eq!(due(&ctx).await, None, "nothing waiting");
    let mut later = job("later");
    later.run_at = RunAt::After(secs(10));
    ctx.enqueue_one(later).await;
    let Some(first) = due(&ctx).await else {
        return; // not supported by this store: the runtime polls instead
    };
    assert_eq!(first, secs(10));
    let mut other = job("elsewhere");
    other.run_at = RunAt::Now;
    ctx.enqueue_one(other).await;
    ctx.clock.advance(secs(4));
    assert_eq!(due(&ctx).await, Some(secs(6)), "other names do not count");
    let mut urgent = job("later");
    urgent.priority = -5;
    ctx.enqueue_one(urgent).await;
    assert_eq!(due(&ctx).await, Some(Duration::ZERO), "a lower priority job due now counts");
    assert_eq!(ctx.claim(&["later"], 10).await.len(), 1, "only the due one is claimed");
    assert_eq!(due(&ctx).await, Some(secs(6)), "claimed jobs are not waiting");
}

/// `release_claim` gives back exactly the leases one claim wrote (by its token): those jobs are
/// available at once with their attempts returned; another claim's lease is untouched; a second
/// release finds nothing.
pub async fn release_claim_gives_back_that_claims_leases(ctx: TestContext) {
    ctx.enqueue(vec![job("lost"), job("lost"), job("lost")]).await;
    let lost = request(&["lost"], 2);
    let kept = request(&["lost"], 1);
    let released = ctx.claim_with(&lost).await;
    let held = ctx.claim_with(&kept).await;
    assert_eq!((released.len(), held.len()), (2, 1));
    assert_eq!(ctx.store.release_claim(lost.token).await.expect("release_claim"), 2);
    for c in &released {
        let job = ctx.job(c.job.id).await;
        assert_eq!((job.state, job.attempt, job.lease), (JobState::Available, 0, None));
    }
    assert_eq!(ctx.job(held[0].job.id).await.state, JobState::Running, "another claim's lease");
    assert_eq!(ctx.store.release_claim(lost.token).await.expect("release_claim"), 0);
}
