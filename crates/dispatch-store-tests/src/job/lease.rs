//! Leases: fencing by token, heartbeats, and rescue of expired leases.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dispatch_core::{
    DlqFilter, DlqId, FailureKind, Finish, FinishResult, HeartbeatReport, JobId, JobState,
    LeaseRef, LeaseToken, Outcome, RescueReport,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{PAST_TTL, TTL, job, lease, millis, request, secs, share};

/// A lease that expired and was rescued is fenced off: the old holder's finish is `LeaseLost`
/// and changes nothing, its heartbeat is lost; the new holder's finish applies once.
pub async fn lease_fencing_refuses_old_token(ctx: TestContext) {
    let id = ctx.enqueue_one(job("fenced")).await;
    let old = ctx.claim_one("fenced").await;
    assert_eq!(old.lease.expires_at, ctx.clock.now() + TTL);
    ctx.clock.advance(PAST_TTL);
    let report = ctx.store.rescue_expired(100).await.expect("rescue");
    assert_eq!(report, RescueReport { rescued: vec![id], ..RescueReport::default() });

    let new = ctx.claim_one("fenced").await;
    assert_eq!(new.job.id, id);
    assert_ne!(new.lease.token, old.lease.token, "a new claim, a new token");
    assert_eq!(new.job.attempt, 2);

    let stale = ctx.finish(lease(&old), Outcome::Complete).await;
    assert_eq!(stale, FinishResult::LeaseLost);
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Running, "the old token changed nothing");
    assert_eq!(job.lease, Some(new.lease));
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors.len(), 1, "only the rescue's error");

    let beat = ctx.store.heartbeat(&[lease(&old)], TTL).await.expect("heartbeat");
    assert_eq!(beat, HeartbeatReport { lost: vec![id], ..HeartbeatReport::default() });
    assert_eq!(ctx.job(id).await.lease, Some(new.lease), "a lost heartbeat extends nothing");

    let done = ctx.finish(lease(&new), Outcome::Complete).await;
    assert_eq!(done, FinishResult::Applied { state: JobState::Completed, dlq_id: None });
    let repeat = ctx.finish(lease(&new), Outcome::Complete).await;
    assert_eq!(repeat, FinishResult::AlreadyApplied);
    let stale = ctx.finish(lease(&old), Outcome::Complete).await;
    assert_eq!(stale, FinishResult::LeaseLost, "the old token never applied anything");
    assert_eq!(ctx.job(id).await.state, JobState::Completed);
}

/// A heartbeat moves the expiry to now + ttl: past the old expiry the job is not rescuable, past
/// the new one it is.
pub async fn heartbeat_extends_lease(ctx: TestContext) {
    let id = ctx.enqueue_one(job("beating")).await;
    let claimed = ctx.claim_one("beating").await;
    let t0 = ctx.clock.now();
    ctx.clock.advance(secs(20));
    let beat = ctx.store.heartbeat(&[lease(&claimed)], secs(30)).await.expect("heartbeat");
    assert_eq!(beat, HeartbeatReport { renewed: vec![id], ..HeartbeatReport::default() });
    let job = ctx.job(id).await;
    let renewed = job.lease.expect("still leased");
    assert_eq!(renewed.expires_at, t0 + secs(50));
    assert_eq!(renewed.token, claimed.lease.token, "a heartbeat keeps the token");
    assert_eq!(renewed.owner, claimed.lease.owner);
    assert_eq!(job.attempt, 1);

    ctx.clock.set(t0 + TTL + millis(1));
    assert!(ctx.store.rescue_expired(100).await.expect("rescue").is_empty(), "renewed lease");
    ctx.clock.set(t0 + secs(50) - millis(1));
    assert!(ctx.store.rescue_expired(100).await.expect("rescue").is_empty(), "renewed lease");
    assert_eq!(ctx.job(id).await.state, JobState::Running);
    ctx.clock.set(t0 + secs(50) + millis(1));
    let report = ctx.store.rescue_expired(100).await.expect("rescue");
    assert_eq!(report.rescued, vec![id], "past the new expiry");
}

/// A heartbeat batch sorts leases into renewed and lost: a wrong token, an unknown job and a
/// finished job are lost; the live ones are renewed.
pub async fn heartbeat_reports_lost_leases(ctx: TestContext) {
    ctx.enqueue(vec![job("hb"), job("hb"), job("hb")]).await;
    let claimed = ctx.claim(&["hb"], 3).await;
    assert_eq!(claimed.len(), 3);
    let done = ctx.finish(lease(&claimed[2]), Outcome::Complete).await;
    assert!(matches!(done, FinishResult::Applied { .. }), "{done:?}");
    let wrong = LeaseRef { job_id: claimed[1].job.id, token: LeaseToken::new() };
    let unknown = LeaseRef { job_id: dispatch_core::JobId::new(), token: LeaseToken::new() };
    let leases = [lease(&claimed[0]), wrong, unknown, lease(&claimed[2])];
    let mut report = ctx.store.heartbeat(&leases, secs(60)).await.expect("heartbeat");
    report.lost.sort();
    let mut lost = vec![claimed[1].job.id, unknown.job_id, claimed[2].job.id];
    lost.sort();
    assert_eq!(report.renewed, vec![claimed[0].job.id]);
    assert_eq!(report.lost, lost);
    assert!(report.cancel_requested.is_empty());
    let now = ctx.clock.now();
    let renewed = ctx.job(claimed[0].job.id).await.lease.expect("leased");
    assert_eq!(renewed.expires_at, now + secs(60));
    let other = ctx.job(claimed[1].job.id).await;
    assert_eq!(other.lease, Some(claimed[1].lease), "a wrong token extends nothing");
    assert_eq!(ctx.job(claimed[2].job.id).await.state, JobState::Completed, "still completed");
    let empty = ctx.store.heartbeat(&[], TTL).await.expect("empty heartbeat");
    assert_eq!(empty, HeartbeatReport::default());
}

/// A rescued job keeps its place in the queue: it was due when it was claimed and lost its run
/// through no fault of its own, so it goes before jobs enqueued after it, not behind them.
pub async fn rescued_job_keeps_its_place_in_the_queue(ctx: TestContext) {
    let first = ctx.enqueue_one(job("placed")).await;
    ctx.clock.advance(secs(1));
    let later = ctx.enqueue_one(job("placed")).await;
    let claimed = ctx.claim_one("placed").await;
    assert_eq!(claimed.job.id, first);
    ctx.clock.advance(PAST_TTL);
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report.rescued, vec![first]);
    let next = ctx.claim_one("placed").await;
    assert_eq!(next.job.id, first, "the rescued job goes first, before {later}");
}

/// Rescue makes an expired job available at once, its attempt still spent and a
/// `LeaseExpired` error recorded; the next claim spends the next attempt.
pub async fn rescue_makes_expired_job_available(ctx: TestContext) {
    let id = ctx.enqueue_one(job("crashy")).await;
    let claimed = ctx.claim_one("crashy").await;
    ctx.clock.advance(PAST_TTL);
    let now = ctx.clock.now();
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report, RescueReport { rescued: vec![id], ..RescueReport::default() });
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.attempt, 1, "a rescue keeps the attempt spent");
    assert_eq!(job.lease, None);
    assert!(job.run_at <= now, "available at once");
    assert_eq!(job.errors.len(), 1);
    let error = &job.errors[0];
    assert_eq!((error.attempt, error.kind, error.at), (1, FailureKind::LeaseExpired, now));
    assert!(ctx.store.rescue_expired(10).await.expect("rescue").is_empty(), "rescued once");

    let again = ctx.claim_one("crashy").await;
    assert_eq!(again.job.attempt, 2);
    assert_ne!(again.lease.token, claimed.lease.token);
}

/// Rescue touches only running jobs whose lease has expired: not live leases, available,
/// scheduled or finished jobs.
pub async fn rescue_leaves_live_leases_alone(ctx: TestContext) {
    let mut scheduled = job("other");
    scheduled.run_at = dispatch_core::RunAt::After(secs(5));
    let waiting = ctx.enqueue_one(scheduled).await;
    let expiring = ctx.enqueue_one(job("old")).await;
    let old = ctx.claim_one("old").await;
    let finished = ctx.enqueue_one(job("fin")).await;
    let fin = ctx.claim_one("fin").await;
    ctx.finish(lease(&fin), Outcome::Complete).await;
    ctx.clock.advance(secs(20));
    let fresh = ctx.enqueue_one(job("young")).await;
    let young = ctx.claim_one("young").await;
    ctx.clock.advance(secs(10) + millis(1));

    let report = ctx.store.rescue_expired(100).await.expect("rescue");
    assert_eq!(report, RescueReport { rescued: vec![expiring], ..RescueReport::default() });
    assert_eq!(ctx.job(fresh).await.lease, Some(young.lease), "the live lease is kept");
    assert_eq!(ctx.job(waiting).await.state, JobState::Available);
    assert_eq!(ctx.job(finished).await.state, JobState::Completed);
    assert_eq!(ctx.finish(lease(&old), Outcome::Complete).await, FinishResult::LeaseLost);
    assert_eq!(
        ctx.finish(lease(&young), Outcome::Complete).await,
        FinishResult::Applied { state: JobState::Completed, dlq_id: None }
    );
}

/// Rescue reclaims at most `limit` jobs per call; later calls take the rest.
pub async fn rescue_respects_limit(ctx: TestContext) {
    let ids = ctx.enqueue((0..5).map(|_| job("bulk")).collect()).await;
    assert_eq!(ctx.claim(&["bulk"], 5).await.len(), 5);
    ctx.clock.advance(PAST_TTL);
    assert!(ctx.store.rescue_expired(0).await.expect("rescue").is_empty(), "limit 0");
    let first = ctx.store.rescue_expired(2).await.expect("rescue");
    assert_eq!(first.rescued.len(), 2, "{first:?}");
    let second = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(second.rescued.len(), 3, "{second:?}");
    let mut all: Vec<_> = first.rescued.iter().chain(&second.rescued).copied().collect();
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected, "each rescued once");
    assert!(ctx.store.rescue_expired(10).await.expect("rescue").is_empty());
}

/// A job with three attempts whose lease expires three times: each rescue keeps the attempt
/// spent; the third promotes it to the DLQ with three `LeaseExpired` errors, and it is never
/// claimed again.
pub async fn rescue_keeps_attempt_spent_and_promotes_after_last(ctx: TestContext) {
    let mut new = job("killer");
    new.max_attempts = 3;
    let id = ctx.enqueue_one(new).await;
    for attempt in 1..=2 {
        let claimed = ctx.claim_one("killer").await;
        assert_eq!(claimed.job.attempt, attempt);
        ctx.clock.advance(PAST_TTL);
        let report = ctx.store.rescue_expired(10).await.expect("rescue");
        assert_eq!(report, RescueReport { rescued: vec![id], ..RescueReport::default() });
        let job = ctx.job(id).await;
        assert_eq!((job.state, job.attempt), (JobState::Available, attempt));
    }
    let last = ctx.claim_one("killer").await;
    assert_eq!(last.job.attempt, 3);
    ctx.clock.advance(PAST_TTL);
    let now = ctx.clock.now();
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert!(report.rescued.is_empty() && report.cancelled.is_empty(), "{report:?}");
    assert_eq!(report.promoted.len(), 1, "{report:?}");
    let (promoted, dlq_id) = report.promoted[0];
    assert_eq!(promoted, id);

    let dead = ctx.job(id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.dlq_id, Some(dlq_id));
    assert_eq!(dead.finished_at, Some(now));
    assert_eq!(dead.lease, None);
    let errors: Vec<_> = dead.errors.iter().map(|e| (e.attempt, e.kind)).collect();
    let expected: Vec<_> = (1..=3).map(|a| (a, FailureKind::LeaseExpired)).collect();
    assert_eq!(errors, expected);
    let entry = ctx.dlq(dlq_id).await;
    assert_eq!(entry.job_id, id);
    assert_eq!((entry.attempts, entry.max_attempts), (3, 3));
    assert_eq!(entry.errors, dead.errors);
    assert_eq!(entry.failed_at, now);

    ctx.clock.advance(secs(3600));
    ctx.claim_none("killer").await;
    assert!(ctx.store.rescue_expired(10).await.expect("rescue").is_empty());
    assert_eq!(ctx.finish(lease(&last), Outcome::Complete).await, FinishResult::LeaseLost);
}

/// A lease past its expiry but not yet rescued still holds (`LeaseLost` means expired *and*
/// rescued): its heartbeat renews it, its finish applies, and rescue then finds nothing.
pub async fn expired_lease_finishes_until_rescued(ctx: TestContext) {
    let beating = ctx.enqueue_one(job("late-beat")).await;
    let late = ctx.claim_one("late-beat").await;
    let id = ctx.enqueue_one(job("slow")).await;
    let claimed = ctx.claim_one("slow").await;
    ctx.clock.advance(PAST_TTL);
    let beat = ctx.store.heartbeat(&[lease(&late)], TTL).await.expect("heartbeat");
    assert_eq!(beat, HeartbeatReport { renewed: vec![beating], ..HeartbeatReport::default() });
    let renewed = ctx.job(beating).await.lease.expect("leased");
    assert_eq!(renewed.expires_at, ctx.clock.now() + TTL);
    let result = ctx.finish(lease(&claimed), Outcome::Complete).await;
    assert_eq!(result, FinishResult::Applied { state: JobState::Completed, dlq_id: None });
    assert!(ctx.store.rescue_expired(10).await.expect("rescue").is_empty());
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Completed);
    assert!(job.errors.is_empty());
    assert_eq!(ctx.job(beating).await.state, JobState::Running, "the renewed lease is live");
}

/// A finish racing a rescue of the same expired leases: for each job exactly one wins. A job
/// whose finish applied is completed and absent from the rescue report; a rescued job's finish
/// is `LeaseLost` and the job is available.
pub async fn finish_races_rescue(ctx: TestContext) {
    let all = ctx.enqueue((0..200).map(|_| job("racy")).collect()).await;
    let mut claimed = Vec::new();
    while claimed.len() < all.len() {
        let got = ctx.claim(&["racy"], 50).await;
        assert!(!got.is_empty(), "every job is claimable");
        claimed.extend(got);
    }
    ctx.clock.advance(PAST_TTL);

    let finishes: Vec<Finish> =
        claimed.iter().map(|c| Finish { lease: lease(c), outcome: Outcome::Complete }).collect();
    let finisher = {
        let store = share(&ctx.store);
        tokio::spawn(async move {
            let mut results = Vec::new();
            for chunk in finishes.chunks(10) {
                let got = store.finish(chunk).await.expect("finish");
                results.extend(chunk.iter().map(|f| f.lease.job_id).zip(got));
            }
            results
        })
    };
    let rescuer = {
        let store = share(&ctx.store);
        tokio::spawn(async move {
            let mut rescued = HashSet::new();
            loop {
                let report = store.rescue_expired(7).await.expect("rescue");
                assert!(report.promoted.is_empty() && report.cancelled.is_empty(), "{report:?}");
                if report.rescued.is_empty() {
                    return rescued;
                }
                for id in report.rescued {
                    assert!(rescued.insert(id), "job {id} rescued twice");
                }
            }
        })
    };
    let results = finisher.await.expect("finisher task");
    let mut rescued = rescuer.await.expect("rescuer task");
    // The rescuer may have stopped early while the finisher held the jobs it wanted; finish
    // the sweep.
    rescued.extend(ctx.store.rescue_expired(1000).await.expect("rescue").rescued);

    for (id, result) in results {
        let job = ctx.job(id).await;
        match result {
            FinishResult::Applied { state: JobState::Completed, dlq_id: None } => {
                assert!(!rescued.contains(&id), "job {id} completed and rescued");
                assert_eq!(job.state, JobState::Completed);
            }
            FinishResult::LeaseLost => {
                assert!(rescued.contains(&id), "job {id} lost its lease but was not rescued");
                assert_eq!((job.state, job.attempt), (JobState::Available, 1));
            }
            other => panic!("job {id}: unexpected finish result {other:?}"),
        }
    }
}

/// Claim every available job of `names` from the default queue, `batch` at a time.
async fn claim_all(
    ctx: &TestContext,
    names: &[&str],
    batch: usize,
) -> Vec<dispatch_core::ClaimedJob> {
    let request = request(names, batch);
    let mut claimed = Vec::new();
    loop {
        let got = ctx.claim_with(&request).await;
        if got.is_empty() {
            return claimed;
        }
        claimed.extend(got);
    }
}

/// Sweep expired leases with `limit`-sized rescues until one finds nothing; every report.
async fn rescue_until_empty(
    store: Arc<dyn dispatch_core::JobStore>,
    limit: usize,
) -> Vec<RescueReport> {
    let mut reports = Vec::new();
    loop {
        let report = store.rescue_expired(limit).await.expect("rescue");
        if report.is_empty() {
            return reports;
        }
        reports.push(report);
    }
}

/// Heartbeats racing a rescue of the same expired (not yet rescued) leases: for each job exactly
/// one wins. A renewed lease is live (same token, new expiry, no error, not rescued); a lost one
/// was rescued (available, one `LeaseExpired` error). Never both: a heartbeat must not revive a
/// rescued job.
pub async fn heartbeat_races_rescue(ctx: TestContext) {
    ctx.enqueue((0..200).map(|_| job("pulse")).collect()).await;
    let claimed = claim_all(&ctx, &["pulse"], 50).await;
    assert_eq!(claimed.len(), 200);
    ctx.clock.advance(PAST_TTL);
    let now = ctx.clock.now();

    let heartbeater = {
        let store = share(&ctx.store);
        let leases: Vec<LeaseRef> = claimed.iter().map(lease).collect();
        tokio::spawn(async move {
            let (mut renewed, mut lost) = (HashSet::new(), HashSet::new());
            for chunk in leases.chunks(10) {
                let report = store.heartbeat(chunk, TTL).await.expect("heartbeat");
                let answered = report.renewed.len() + report.lost.len();
                assert_eq!(answered, chunk.len(), "one answer per lease: {report:?}");
                renewed.extend(report.renewed);
                lost.extend(report.lost);
            }
            (renewed, lost)
        })
    };
    let rescuer = tokio::spawn(rescue_until_empty(share(&ctx.store), 7));
    let (renewed, lost) = heartbeater.await.expect("heartbeat task");
    let mut reports = rescuer.await.expect("rescue task");
    // The rescuer may have stopped early while the heartbeats held the jobs it wanted.
    reports.push(ctx.store.rescue_expired(1000).await.expect("rescue"));
    let mut rescued = HashSet::new();
    for report in reports {
        assert!(report.promoted.is_empty() && report.cancelled.is_empty(), "{report:?}");
        for id in report.rescued {
            assert!(rescued.insert(id), "job {id} rescued twice");
        }
    }

    for c in &claimed {
        let id = c.job.id;
        let job = ctx.job(id).await;
        if renewed.contains(&id) {
            assert!(!lost.contains(&id), "job {id} renewed and lost");
            assert!(!rescued.contains(&id), "job {id} renewed and rescued");
            assert_eq!(job.state, JobState::Running, "job {id}");
            let held = job.lease.map(|l| (l.token, l.expires_at));
            assert_eq!(held, Some((c.lease.token, now + TTL)), "job {id}: renewed lease");
            assert!(job.errors.is_empty(), "job {id}: {:?}", job.errors);
        } else {
            assert!(lost.contains(&id), "job {id} neither renewed nor lost");
            assert!(rescued.contains(&id), "job {id} lost its lease but was not rescued");
            assert_eq!((job.state, job.attempt, job.lease), (JobState::Available, 1, None));
            assert_eq!(job.errors.len(), 1, "job {id}: {:?}", job.errors);
        }
    }
    assert!(ctx.store.rescue_expired(1000).await.expect("rescue").is_empty(), "renewed are live");
}

/// Four rescuers sweeping the same 300 expired leases at once: each job is reclaimed by exactly
/// one of them (one report names it, one `LeaseExpired` error), and each job with no attempts
/// left gets exactly one DLQ entry, the one its report and its record name.
pub async fn rescue_is_exclusive(ctx: TestContext) {
    let jobs = (0..300)
        .map(|i| {
            let mut new = job(if i % 2 == 0 { "again" } else { "once" });
            new.max_attempts = if i % 2 == 0 { 5 } else { 1 };
            new
        })
        .collect();
    let ids = ctx.enqueue(jobs).await;
    assert_eq!(claim_all(&ctx, &["again", "once"], 50).await.len(), 300);
    ctx.clock.advance(PAST_TTL);

    let rescuers: Vec<_> =
        (0..4).map(|_| tokio::spawn(rescue_until_empty(share(&ctx.store), 9))).collect();
    let mut reports = Vec::new();
    for rescuer in rescuers {
        reports.extend(rescuer.await.expect("rescue task"));
    }
    reports.push(ctx.store.rescue_expired(1000).await.expect("rescue"));
    let mut rescued: HashSet<JobId> = HashSet::new();
    let mut promoted: HashMap<JobId, DlqId> = HashMap::new();
    for report in reports {
        assert!(report.cancelled.is_empty(), "{report:?}");
        for id in report.rescued {
            assert!(rescued.insert(id), "job {id} rescued twice");
        }
        for (id, dlq_id) in report.promoted {
            assert!(promoted.insert(id, dlq_id).is_none(), "job {id} promoted twice");
        }
    }
    assert!(rescued.iter().all(|id| !promoted.contains_key(id)), "rescued and promoted");

    for (i, id) in ids.iter().enumerate() {
        let job = ctx.job(*id).await;
        let kinds: Vec<_> = job.errors.iter().map(|e| (e.attempt, e.kind)).collect();
        assert_eq!(kinds, [(1, FailureKind::LeaseExpired)], "job {id}: one rescue, one error");
        if i % 2 == 0 {
            assert!(rescued.contains(id), "job {id} was not rescued");
            assert_eq!(job.state, JobState::Available);
        } else {
            assert_eq!(job.state, JobState::Dead, "job {id}");
            assert!(job.dlq_id.is_some(), "job {id} is dead without an entry");
            assert_eq!(promoted.get(id).copied(), job.dlq_id, "job {id}: reported entry");
        }
    }
    let entries = ctx.list_dlq_all(&DlqFilter::default()).await;
    assert_eq!(entries.len(), 150, "one entry per dead job");
    let entry_ids: HashSet<DlqId> = entries.iter().map(|e| e.id).collect();
    assert_eq!(entry_ids, promoted.values().copied().collect::<HashSet<_>>());
}
