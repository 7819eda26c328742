//! Finish: every outcome, attempts, the DLQ on death, idempotent repeats, per-item batches.

use std::time::Duration;

use dispatch_core::{
    AttemptError, DlqFilter, Failure, FailureKind, Finish, FinishResult, JobState, LeaseRef,
    LeaseToken, Outcome, RunAt, Scope,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{failure, job, lease, millis, retry, secs, share};

const fn applied(state: JobState) -> FinishResult {
    FinishResult::Applied { state, dlq_id: None }
}

/// `Complete` ends the job completed at the store's now, lease gone, and it is never claimed
/// again.
pub async fn finish_complete(ctx: TestContext) {
    let id = ctx.enqueue_one(job("done")).await;
    let claimed = ctx.claim_one("done").await;
    ctx.clock.advance(secs(2));
    let now = ctx.clock.now();
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Complete).await, applied(JobState::Completed));
    let done = ctx.job(id).await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.finished_at, Some(now));
    assert_eq!(done.lease, None);
    assert_eq!(done.attempt, 1);
    assert!(done.errors.is_empty());
    assert_eq!(done.dlq_id, None);
    ctx.clock.advance(secs(3600));
    ctx.claim_none("done").await;
}

/// `Retry` with `RunAt::After(10 s)`: available again, claimable only 10 s later, the error kept
/// with its attempt number, kind, message and time.
pub async fn finish_retry_schedules_next_attempt(ctx: TestContext) {
    let mut new = job("flaky");
    new.max_attempts = 3;
    let id = ctx.enqueue_one(new).await;
    let claimed = ctx.claim_one("flaky").await;
    ctx.clock.advance(secs(1));
    let failed_at = ctx.clock.now();
    let outcome = Outcome::Retry {
        failure: Failure::new(FailureKind::Timeout, "took too long"),
        run_at: RunAt::After(secs(10)),
    };
    assert_eq!(ctx.finish(lease(&claimed), outcome).await, applied(JobState::Available));

    let waiting = ctx.job(id).await;
    assert_eq!(waiting.state, JobState::Available);
    assert_eq!(waiting.run_at, failed_at + secs(10));
    assert_eq!(waiting.attempt, 1, "the attempt stays spent");
    assert_eq!(waiting.lease, None);
    assert_eq!(waiting.finished_at, None);
    let expected = AttemptError {
        attempt: 1,
        kind: FailureKind::Timeout,
        message: "took too long".into(),
        at: failed_at,
    };
    assert_eq!(waiting.errors, vec![expected.clone()]);

    ctx.claim_none("flaky").await;
    ctx.clock.advance(secs(10) - millis(1));
    ctx.claim_none("flaky").await;
    ctx.clock.advance(millis(1));
    let again = ctx.claim_one("flaky").await;
    assert_eq!(again.job.id, id);
    assert_eq!(again.job.attempt, 2);
    assert_eq!(again.job.errors, vec![expected], "errors survive the next claim");
}

/// `Fail` with attempts left: dead at once with a DLQ entry that copies the job and every
/// attempt's error.
pub async fn finish_fail_promotes_to_dlq(ctx: TestContext) {
    let mut new = job("doomed");
    new.queue = "mail".into();
    new.payload = vec![0, 159, 146, 150, 255];
    new.priority = 7;
    new.max_attempts = 5;
    new.timeout = Some(secs(30));
    new.scope = Scope::new("shop", "tenant-1");
    let id = ctx.enqueue_one(new.clone()).await;

    let request = crate::support::request_in(&["mail"], &["doomed"], 1);
    let first = ctx.claim_with(&request).await.remove(0);
    let result = ctx.finish(lease(&first), retry("first try", Duration::ZERO)).await;
    assert_eq!(result, applied(JobState::Available));
    let second = ctx.claim_with(&request).await.remove(0);
    ctx.clock.advance(secs(4));
    let now = ctx.clock.now();
    let outcome = Outcome::Fail { failure: Failure::new(FailureKind::Panic, "kaboom") };
    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
        ctx.finish(lease(&second), outcome).await
    else {
        panic!("a permanent failure makes the job dead with a DLQ entry");
    };

    let dead = ctx.job(id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.dlq_id, Some(dlq_id));
    assert_eq!(dead.finished_at, Some(now));
    assert_eq!(dead.lease, None);
    assert_eq!(dead.attempt, 2);
    let kinds: Vec<_> =
        dead.errors.iter().map(|e| (e.attempt, e.kind, e.message.as_str())).collect();
    assert_eq!(kinds, [(1, FailureKind::Error, "first try"), (2, FailureKind::Panic, "kaboom")]);

    let entry = ctx.dlq(dlq_id).await;
    assert_eq!(entry.id, dlq_id);
    assert_eq!(entry.job_id, id);
    assert_eq!(entry.name, new.name);
    assert_eq!(entry.queue, new.queue);
    assert_eq!(entry.payload, new.payload);
    assert_eq!(entry.priority, new.priority);
    assert_eq!(entry.scope, new.scope);
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.max_attempts, 5);
    assert_eq!(entry.timeout, Some(secs(30)));
    assert_eq!(entry.errors, dead.errors);
    assert_eq!(entry.failed_at, now);
    assert_eq!(entry.replayed_as, None);
    assert_eq!(entry.replayed_at, None);
    ctx.clock.advance(secs(3600));
    assert!(ctx.claim_with(&request).await.is_empty(), "a dead job is never claimed");
}

/// `Retry` on the last attempt: dead with a DLQ entry holding every attempt's error.
pub async fn finish_retry_exhausted_promotes_to_dlq(ctx: TestContext) {
    let mut new = job("tired");
    new.max_attempts = 2;
    new.priority = -3;
    new.scope = Scope { app: Some("app".into()), tenant: None };
    let id = ctx.enqueue_one(new.clone()).await;
    let first = ctx.claim_one("tired").await;
    let result = ctx.finish(lease(&first), retry("one", secs(1))).await;
    assert_eq!(result, applied(JobState::Available));
    ctx.clock.advance(secs(1));
    let second = ctx.claim_one("tired").await;
    assert_eq!(second.job.attempt, 2);
    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
        ctx.finish(lease(&second), retry("two", secs(1))).await
    else {
        panic!("a retry with no attempts left makes the job dead with a DLQ entry");
    };
    let dead = ctx.job(id).await;
    assert_eq!((dead.state, dead.dlq_id), (JobState::Dead, Some(dlq_id)));
    let entry = ctx.dlq(dlq_id).await;
    assert_eq!(entry.job_id, id);
    assert_eq!((entry.name.as_str(), entry.queue.as_str()), ("tired", "default"));
    assert_eq!(entry.payload, new.payload);
    assert_eq!(entry.priority, -3);
    assert_eq!(entry.scope, new.scope);
    assert_eq!((entry.attempts, entry.max_attempts), (2, 2));
    assert_eq!(entry.timeout, None);
    let attempts: Vec<_> = entry.errors.iter().map(|e| (e.attempt, e.message.as_str())).collect();
    assert_eq!(attempts, [(1, "one"), (2, "two")]);
    assert_eq!(entry.errors, dead.errors);
    ctx.clock.advance(secs(60));
    ctx.claim_none("tired").await;
}

/// `Snooze` gives the attempt back and waits for its run-at; snoozing forever never kills a
/// one-attempt job.
pub async fn finish_snooze_gives_attempt_back(ctx: TestContext) {
    let mut new = job("sleepy");
    new.max_attempts = 1;
    let id = ctx.enqueue_one(new).await;
    for round in 0..3 {
        let claimed = ctx.claim_one("sleepy").await;
        assert_eq!(claimed.job.attempt, 1, "round {round}: claim spends the one attempt");
        let now = ctx.clock.now();
        let outcome = Outcome::Snooze { run_at: RunAt::After(secs(5)) };
        assert_eq!(ctx.finish(lease(&claimed), outcome).await, applied(JobState::Available));
        let snoozed = ctx.job(id).await;
        assert_eq!(snoozed.state, JobState::Available);
        assert_eq!(snoozed.attempt, 0, "round {round}: the attempt is given back");
        assert_eq!(snoozed.run_at, now + secs(5));
        assert_eq!(snoozed.lease, None);
        assert!(snoozed.errors.is_empty(), "a snooze is not a failure");
        ctx.clock.advance(secs(5) - millis(1));
        ctx.claim_none("sleepy").await;
        ctx.clock.advance(millis(1));
    }
    let claimed = ctx.claim_one("sleepy").await;
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Complete).await, applied(JobState::Completed));
}

/// `release()` (and `Outcome::Release`) gives the attempt back and makes the job claimable at
/// once.
pub async fn finish_release_gives_attempt_back(ctx: TestContext) {
    let ids = ctx.enqueue(vec![job("shutdown"), job("shutdown"), job("shutdown")]).await;
    let claimed = ctx.claim(&["shutdown"], 3).await;
    assert_eq!(claimed.len(), 3);
    ctx.clock.advance(secs(3));
    let now = ctx.clock.now();
    let leases: Vec<LeaseRef> = claimed[..2].iter().map(lease).collect();
    let results = ctx.store.release(&leases).await.expect("release");
    assert_eq!(results, vec![applied(JobState::Available); 2]);
    assert_eq!(
        ctx.finish(lease(&claimed[2]), Outcome::Release).await,
        applied(JobState::Available)
    );
    for id in &ids {
        let released = ctx.job(*id).await;
        assert_eq!(released.state, JobState::Available);
        assert_eq!(released.attempt, 0);
        assert_eq!(released.lease, None);
        assert!(released.run_at <= now, "claimable at once");
        assert!(released.errors.is_empty());
    }
    let again = ctx.claim(&["shutdown"], 3).await;
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.job.attempt == 1));
}

/// `Cancel` by the handler's own choice (no request) ends the job cancelled.
pub async fn finish_cancel_by_handler(ctx: TestContext) {
    let id = ctx.enqueue_one(job("quitter")).await;
    let claimed = ctx.claim_one("quitter").await;
    let now = ctx.clock.now();
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Cancel).await, applied(JobState::Cancelled));
    let job = ctx.job(id).await;
    assert_eq!((job.state, job.finished_at, job.lease), (JobState::Cancelled, Some(now), None));
    assert_eq!(job.dlq_id, None);
    ctx.claim_none("quitter").await;
}

/// Repeating a finish that was applied answers `AlreadyApplied` and changes nothing, whatever
/// the repeat's outcome.
pub async fn finish_repeat_is_already_applied(ctx: TestContext) {
    let done = ctx.enqueue_one(job("repeat")).await;
    let claimed = ctx.claim_one("repeat").await;
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Complete).await, applied(JobState::Completed));
    let after = ctx.job(done).await;
    ctx.clock.advance(secs(1));
    assert_eq!(ctx.finish(lease(&claimed), Outcome::Complete).await, FinishResult::AlreadyApplied);
    let fail = Outcome::Fail { failure: failure("late") };
    assert_eq!(ctx.finish(lease(&claimed), fail).await, FinishResult::AlreadyApplied);
    assert_eq!(ctx.job(done).await, after, "nothing changed");

    // A retried Retry does not record the error twice or move run-at.
    let mut new = job("repeat-retry");
    new.max_attempts = 5;
    let id = ctx.enqueue_one(new).await;
    let claimed = ctx.claim_one("repeat-retry").await;
    let result = ctx.finish(lease(&claimed), retry("once", secs(10))).await;
    assert_eq!(result, applied(JobState::Available));
    let after = ctx.job(id).await;
    ctx.clock.advance(secs(2));
    let again = ctx.finish(lease(&claimed), retry("once", secs(10))).await;
    assert_eq!(again, FinishResult::AlreadyApplied);
    assert_eq!(ctx.job(id).await, after, "nothing changed");
    assert_eq!(after.errors.len(), 1);
}

/// A finish batch answers each item on its own, in order: applied, lease lost (a wrong token, an
/// unknown job) and applied again; the lost items change nothing.
pub async fn finish_batch_answers_per_item(ctx: TestContext) {
    ctx.enqueue(vec![job("batch"), job("batch"), job("batch")]).await;
    let claimed = ctx.claim(&["batch"], 3).await;
    assert_eq!(claimed.len(), 3);
    let wrong_token = LeaseRef { job_id: claimed[1].job.id, token: LeaseToken::new() };
    let unknown_job = LeaseRef { job_id: dispatch_core::JobId::new(), token: LeaseToken::new() };
    let finishes = [
        Finish { lease: lease(&claimed[0]), outcome: Outcome::Complete },
        Finish { lease: wrong_token, outcome: Outcome::Complete },
        Finish { lease: unknown_job, outcome: Outcome::Complete },
        Finish { lease: lease(&claimed[2]), outcome: retry("again", secs(5)) },
    ];
    let results = ctx.store.finish(&finishes).await.expect("finish");
    assert_eq!(
        results,
        vec![
            applied(JobState::Completed),
            FinishResult::LeaseLost,
            FinishResult::LeaseLost,
            applied(JobState::Available),
        ]
    );
    let untouched = ctx.job(claimed[1].job.id).await;
    assert_eq!(untouched.state, JobState::Running);
    assert_eq!(untouched.lease, Some(claimed[1].lease), "still under its own lease");
    assert_eq!(ctx.store.get_job(unknown_job.job_id).await.expect("get_job"), None);
    assert_eq!(ctx.job(claimed[0].job.id).await.state, JobState::Completed);
    assert_eq!(ctx.job(claimed[2].job.id).await.state, JobState::Available);
    assert!(ctx.store.finish(&[]).await.expect("empty finish").is_empty());
}

/// A finish repeated after the job moved on: while the next attempt runs it is `AlreadyApplied`
/// (the last finish applied carried its token); once the next attempt has finished it is
/// `LeaseLost` (stores remember only the last applied token). Nothing changes either way.
pub async fn finish_repeat_after_reclaim(ctx: TestContext) {
    let mut new = job("moved-on");
    new.max_attempts = 5;
    let id = ctx.enqueue_one(new).await;
    let first = ctx.claim_one("moved-on").await;
    let result = ctx.finish(lease(&first), retry("transient", Duration::ZERO)).await;
    assert_eq!(result, applied(JobState::Available));
    let second = ctx.claim_one("moved-on").await;
    let repeat = ctx.finish(lease(&first), retry("transient", Duration::ZERO)).await;
    assert_eq!(repeat, FinishResult::AlreadyApplied, "while the next attempt runs");
    assert_eq!(ctx.finish(lease(&second), Outcome::Complete).await, applied(JobState::Completed));
    let after = ctx.job(id).await;
    let repeat = ctx.finish(lease(&first), retry("transient", Duration::ZERO)).await;
    assert_eq!(repeat, FinishResult::LeaseLost, "after the next attempt finished");
    assert_eq!(ctx.job(id).await, after, "nothing changed");
}

/// Attempts given back do not count against `max_attempts`: a two-attempt job snoozed once and
/// released once still gets two real attempts, and its errors are numbered by spent attempts
/// (1, 2) with no gaps.
pub async fn finish_given_back_attempts_do_not_count(ctx: TestContext) {
    let mut new = job("patient");
    new.max_attempts = 2;
    let id = ctx.enqueue_one(new).await;

    let claimed = ctx.claim_one("patient").await;
    assert_eq!(claimed.job.attempt, 1);
    let snooze = Outcome::Snooze { run_at: RunAt::Now };
    assert_eq!(ctx.finish(lease(&claimed), snooze).await, applied(JobState::Available));
    let claimed = ctx.claim_one("patient").await;
    assert_eq!(claimed.job.attempt, 1, "the snoozed attempt was given back");
    let result = ctx.finish(lease(&claimed), retry("first", Duration::ZERO)).await;
    assert_eq!(result, applied(JobState::Available), "one attempt left");

    let claimed = ctx.claim_one("patient").await;
    assert_eq!(claimed.job.attempt, 2);
    let results = ctx.store.release(&[lease(&claimed)]).await.expect("release");
    assert_eq!(results, vec![applied(JobState::Available)]);
    assert_eq!(ctx.job(id).await.attempt, 1, "the released attempt was given back");

    let claimed = ctx.claim_one("patient").await;
    assert_eq!(claimed.job.attempt, 2);
    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
        ctx.finish(lease(&claimed), retry("second", Duration::ZERO)).await
    else {
        panic!("the second real attempt is the last");
    };
    let dead = ctx.job(id).await;
    let errors: Vec<_> = dead.errors.iter().map(|e| (e.attempt, e.message.as_str())).collect();
    assert_eq!(errors, [(1, "first"), (2, "second")]);
    let entry = ctx.dlq(dlq_id).await;
    assert_eq!((entry.attempts, entry.max_attempts), (2, 2));
    assert_eq!(entry.errors, dead.errors);
}

/// The same finish sent by eight tasks at once (a worker retrying a call that timed out while
/// the first is still in flight) applies once: one `Applied`, seven `AlreadyApplied`, never
/// `LeaseLost`; the failure is recorded once and a dead job gets exactly one DLQ entry.
pub async fn finish_concurrent_repeats_apply_once(ctx: TestContext) {
    let jobs = ["complete", "retry", "fail"].map(|name| {
        let mut new = job(name);
        new.max_attempts = 3;
        new
    });
    let ids = ctx.enqueue(jobs.to_vec()).await;
    let cases = [
        (ids[0], "complete", Outcome::Complete, JobState::Completed),
        (ids[1], "retry", retry("flaky", secs(10)), JobState::Available),
        (ids[2], "fail", Outcome::Fail { failure: failure("broken") }, JobState::Dead),
    ];
    for (id, name, outcome, state) in cases {
        let claimed = ctx.claim_one(name).await;
        assert_eq!(claimed.job.id, id);
        let finish = Finish { lease: lease(&claimed), outcome };
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = share(&ctx.store);
                let finish = finish.clone();
                tokio::spawn(async move {
                    store.finish(std::slice::from_ref(&finish)).await.expect("finish")
                })
            })
            .collect();
        let mut applied_dlq = Vec::new();
        let mut repeats = 0;
        for task in tasks {
            let results = task.await.expect("finish task");
            assert_eq!(results.len(), 1, "{name}: one result per item");
            match results[0] {
                FinishResult::Applied { state: got, dlq_id } => {
                    assert_eq!(got, state, "{name}");
                    applied_dlq.push(dlq_id);
                }
                FinishResult::AlreadyApplied => repeats += 1,
                FinishResult::LeaseLost => panic!("{name}: a repeat of the applied finish is lost"),
            }
        }
        assert_eq!((applied_dlq.len(), repeats), (1, 7), "{name}: applied once");
        let stored = ctx.job(id).await;
        assert_eq!(stored.state, state, "{name}");
        let failures = usize::from(state != JobState::Completed);
        assert_eq!(stored.errors.len(), failures, "{name}: {:?}", stored.errors);
        assert_eq!(stored.dlq_id, applied_dlq[0], "{name}: the job names the reported entry");
    }
    let entries = ctx.list_dlq_all(&DlqFilter::default()).await;
    assert_eq!(entries.len(), 1, "one entry for the one dead job: {entries:?}");
    assert_eq!((entries[0].job_id, entries[0].errors.len()), (ids[2], 1));
}
