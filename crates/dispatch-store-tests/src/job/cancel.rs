//! Cancel: at once when available, through the holder when running, by rescue when the holder
//! is gone.

use std::collections::HashSet;

use dispatch_core::{
    ErrorKind, FailureKind, FinishResult, HeartbeatReport, JobCancel, JobId, JobState, Outcome,
    RescueReport, RunAt,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{PAST_TTL, assert_kind, failure, job, lease, secs, share};

/// Cancelling an available job cancels it at once: final, stamped, never claimed; a second
/// request finds it already final.
pub async fn cancel_available_job(ctx: TestContext) {
    let id = ctx.enqueue_one(job("unwanted")).await;
    let keep = ctx.enqueue_one(job("unwanted")).await;
    let now = ctx.clock.now();
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Cancelled);
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.finished_at, Some(now));
    assert_eq!(ctx.claim_one("unwanted").await.job.id, keep, "only the other job is claimed");
    ctx.clock.advance(secs(3600));
    ctx.claim_none("unwanted").await;
    let again = ctx.store.request_job_cancel(id).await.expect("cancel");
    assert_eq!(again, JobCancel::AlreadyFinal(JobState::Cancelled));
}

/// A scheduled (future run-at) job is available, so a cancel ends it at once; it never runs.
pub async fn cancel_scheduled_job(ctx: TestContext) {
    let mut later = job("scheduled");
    later.run_at = RunAt::After(secs(60));
    let id = ctx.enqueue_one(later).await;
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Cancelled);
    ctx.clock.advance(secs(61));
    ctx.claim_none("scheduled").await;
    assert_eq!(ctx.job(id).await.state, JobState::Cancelled);
}

/// Cancelling a running job records the request; the holder's next heartbeat renews the lease
/// and reports the request; the holder's `Cancel` ends it cancelled.
pub async fn cancel_running_job_through_holder(ctx: TestContext) {
    let id = ctx.enqueue_one(job("busy")).await;
    let other = ctx.enqueue_one(job("busy")).await;
    let claimed = ctx.claim(&["busy"], 2).await;
    assert_eq!(claimed.len(), 2);
    let (mine, bystander) = if claimed[0].job.id == id {
        (&claimed[0], &claimed[1])
    } else {
        (&claimed[1], &claimed[0])
    };
    assert_eq!(bystander.job.id, other);

    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Running, "a running job runs on until its holder stops");
    assert!(job.cancel_requested);
    assert_eq!(job.lease, Some(mine.lease));
    assert!(!ctx.job(other).await.cancel_requested, "only the named job");
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);

    ctx.clock.advance(secs(10));
    let beat =
        ctx.store.heartbeat(&[lease(mine), lease(bystander)], secs(30)).await.expect("heartbeat");
    let mut renewed = beat.renewed.clone();
    renewed.sort();
    let mut both = vec![id, other];
    both.sort();
    assert_eq!(renewed, both, "a cancel request still renews");
    assert_eq!(beat.cancel_requested, vec![id]);
    assert!(beat.lost.is_empty());
    assert_eq!(ctx.job(id).await.lease.expect("leased").expires_at, ctx.clock.now() + secs(30));

    let now = ctx.clock.now();
    let done = ctx.finish(lease(mine), Outcome::Cancel).await;
    assert_eq!(done, FinishResult::Applied { state: JobState::Cancelled, dlq_id: None });
    let job = ctx.job(id).await;
    assert_eq!((job.state, job.finished_at, job.lease), (JobState::Cancelled, Some(now), None));
    let again = ctx.store.request_job_cancel(id).await.expect("cancel");
    assert_eq!(again, JobCancel::AlreadyFinal(JobState::Cancelled));
    let late = ctx.store.heartbeat(&[lease(mine)], secs(30)).await.expect("heartbeat");
    assert_eq!(late, HeartbeatReport { lost: vec![id], ..HeartbeatReport::default() });
}

/// A cancel request wins over running again: a holder that answers it with retry, snooze or
/// release ends the job cancelled (a retry's failure still recorded); complete still completes.
pub async fn cancel_request_wins_over_running_again(ctx: TestContext) {
    let outcomes = [
        ("retried", Outcome::Retry { failure: failure("gave up"), run_at: RunAt::Now }),
        ("snoozed", Outcome::Snooze { run_at: RunAt::After(secs(5)) }),
        ("released", Outcome::Release),
        ("completed", Outcome::Complete),
    ];
    for (name, outcome) in outcomes {
        let mut new = job(name);
        new.max_attempts = 5;
        let id = ctx.enqueue_one(new).await;
        let claimed = ctx.claim_one(name).await;
        assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);
        let result = ctx.finish(lease(&claimed), outcome.clone()).await;
        let expected = if name == "completed" { JobState::Completed } else { JobState::Cancelled };
        assert_eq!(result, FinishResult::Applied { state: expected, dlq_id: None }, "{name}");
        let job = ctx.job(id).await;
        assert_eq!((job.state, job.lease, job.cancel_requested), (expected, None, false), "{name}");
        assert_eq!(job.errors.len(), usize::from(name == "retried"), "{name}: {:?}", job.errors);
        ctx.clock.advance(secs(10));
        ctx.claim_none(name).await;
    }
}

/// Cancelling a completed or dead job changes nothing and names its final state.
pub async fn cancel_final_job_is_already_final(ctx: TestContext) {
    let done = ctx.enqueue_one(job("fin")).await;
    let claimed = ctx.claim_one("fin").await;
    ctx.finish(lease(&claimed), Outcome::Complete).await;
    let before = ctx.job(done).await;
    let result = ctx.store.request_job_cancel(done).await.expect("cancel");
    assert_eq!(result, JobCancel::AlreadyFinal(JobState::Completed));
    assert_eq!(ctx.job(done).await, before, "nothing changed");

    let dead = ctx.enqueue_one(job("fin")).await;
    let claimed = ctx.claim_one("fin").await;
    ctx.finish(lease(&claimed), Outcome::Fail { failure: failure("no") }).await;
    let before = ctx.job(dead).await;
    let result = ctx.store.request_job_cancel(dead).await.expect("cancel");
    assert_eq!(result, JobCancel::AlreadyFinal(JobState::Dead));
    assert_eq!(ctx.job(dead).await, before, "nothing changed");
}

/// Cancelling an unknown job fails with `NotFound`.
pub async fn cancel_unknown_job_is_not_found(ctx: TestContext) {
    ctx.enqueue_one(job("known")).await;
    assert_kind(
        ctx.store.request_job_cancel(JobId::new()).await,
        ErrorKind::NotFound,
        "unknown job",
    );
}

/// A running job with a cancel request whose lease expires is cancelled by rescue, not made
/// available again, with the `LeaseExpired` error every rescue records.
pub async fn cancel_requested_expired_lease_is_cancelled_by_rescue(ctx: TestContext) {
    let id = ctx.enqueue_one(job("abandoned")).await;
    let claimed = ctx.claim_one("abandoned").await;
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);
    ctx.clock.advance(PAST_TTL);
    let now = ctx.clock.now();
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report, RescueReport { cancelled: vec![id], ..RescueReport::default() });
    let job = ctx.job(id).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.finished_at, Some(now));
    assert_eq!(job.lease, None);
    assert_eq!(job.dlq_id, None);
    assert_eq!(job.attempt, 1, "the attempt stays spent");
    ctx.clock.advance(secs(3600));
    ctx.claim_none("abandoned").await;
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Complete).await, FinishResult::LeaseLost);
}

/// `rescue_expired` records a `LeaseExpired` error for every job it reclaims, the cancelled
/// ones included.
pub async fn cancel_by_rescue_records_lease_expired(ctx: TestContext) {
    let id = ctx.enqueue_one(job("abandoned")).await;
    ctx.claim_one("abandoned").await;
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);
    ctx.clock.advance(PAST_TTL);
    let now = ctx.clock.now();
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report.cancelled, vec![id]);
    let errors: Vec<_> =
        ctx.job(id).await.errors.iter().map(|e| (e.attempt, e.kind, e.at)).collect();
    assert_eq!(errors, [(1, FailureKind::LeaseExpired, now)]);
}

/// A cancel request wins over promotion: a job on its last attempt with a cancel request whose
/// lease expires is cancelled, not dead, and gets no DLQ entry.
pub async fn cancel_requested_on_last_attempt_is_cancelled_not_dead(ctx: TestContext) {
    let mut new = job("last");
    new.max_attempts = 1;
    let id = ctx.enqueue_one(new).await;
    ctx.claim_one("last").await;
    assert_eq!(ctx.store.request_job_cancel(id).await.expect("cancel"), JobCancel::Requested);
    ctx.clock.advance(PAST_TTL);
    let report = ctx.store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report, RescueReport { cancelled: vec![id], ..RescueReport::default() });
    let job = ctx.job(id).await;
    assert_eq!((job.state, job.dlq_id), (JobState::Cancelled, None));
    let entries = ctx.list_dlq_all(&dispatch_core::DlqFilter::default()).await;
    assert!(entries.is_empty(), "no DLQ entry: {entries:?}");
}

/// Cancels racing claims over the same jobs: a job is either cancelled (and never claimed) or
/// claimed (and its cancel is a request), never both.
pub async fn cancel_races_claim(ctx: TestContext) {
    let all = ctx.enqueue((0..200).map(|_| job("contested")).collect()).await;
    let canceller = {
        let store = share(&ctx.store);
        let all = all.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for id in all {
                results.push((id, store.request_job_cancel(id).await.expect("cancel")));
            }
            results
        })
    };
    let claimer = {
        let store = share(&ctx.store);
        tokio::spawn(async move {
            let request = crate::support::request(&["contested"], 5);
            let mut claimed = HashSet::new();
            loop {
                let got = store.claim(&request).await.expect("claim");
                if got.is_empty() {
                    return claimed;
                }
                for c in got {
                    assert!(claimed.insert(c.job.id), "job {} claimed twice", c.job.id);
                }
            }
        })
    };
    let results = canceller.await.expect("canceller task");
    let claimed = claimer.await.expect("claimer task");
    for (id, result) in results {
        let job = ctx.job(id).await;
        match result {
            JobCancel::Cancelled => {
                assert!(!claimed.contains(&id), "job {id} cancelled and claimed");
                assert_eq!(job.state, JobState::Cancelled);
            }
            JobCancel::Requested => {
                assert!(claimed.contains(&id), "job {id} requested but not claimed");
                assert_eq!(job.state, JobState::Running);
                assert!(job.cancel_requested, "job {id} lost its request");
            }
            other => panic!("job {id}: unexpected cancel result {other:?}"),
        }
    }
    ctx.claim_none("contested").await;
}
