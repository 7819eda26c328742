//! The job state machine as plain functions over records: what an enqueue, a claim, a finish,
//! a rescue, a cancel request and a DLQ replay do to a job (see "The job state machine" in
//! ARCHITECTURE.md).
//!
//! A store loads the record, calls the function and writes what it changed, and, when the
//! function hands back a [`DlqEntry`], writes that entry in the same operation (a job is never
//! dead without its entry). The decisions live here once, so every store decides alike. A SQL
//! store may still say the same rule in its own dialect where one statement writes a whole
//! batch; the conformance suite holds both to the same behaviour.
//!
//! Nothing here does I/O or reads a clock: time comes in as `now`, already read from the store's
//! clock. Who may make a transition is the store's part, except for the lease token, which
//! [`finish`] checks: rescue expects a job whose lease has expired, and claim an available job.

use crate::dlq::{DlqEntry, ReplayOptions};
use crate::id::JobId;
use crate::job::{
    AttemptError, Failure, FailureKind, Finish, FinishResult, Job, JobCancel, JobState, Lease,
    LeaseToken, NewJob, Outcome, RescueReport,
};
use crate::time::Timestamp;

/// What [`finish`] did: the answer for the caller, and the DLQ entry to write when the job died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The answer to the finish.
    pub result: FinishResult,
    /// The entry of a job that died; write it in the same operation as the job.
    pub dlq: Option<DlqEntry>,
}

impl Finished {
    /// Whether the job changed (and must be written back).
    pub fn applied(&self) -> bool {
        matches!(self.result, FinishResult::Applied { .. })
    }

    fn refused(result: FinishResult) -> Self {
        Self { result, dlq: None }
    }
}

/// The stored record of a new job: available at its run-at, no attempt spent.
pub fn enqueue(new: NewJob, now: Timestamp) -> Job {
    Job {
        id: new.id,
        name: new.name,
        queue: new.queue,
        payload: new.payload,
        priority: new.priority,
        state: JobState::Available,
        attempt: 0,
        max_attempts: new.max_attempts,
        timeout: new.timeout,
        run_at: new.run_at.resolve(now),
        created_at: now,
        finished_at: None,
        unique_key: new.unique.map(|u| u.key),
        scope: new.scope,
        lease: None,
        cancel_requested: false,
        errors: Vec::new(),
        dlq_id: None,
        concurrency: new.concurrency,
        progress: None,
    }
}

/// Lease an available job: running under `lease`, one more attempt spent (a claim spends the
/// attempt up front, so a job that kills its worker every time still runs out of attempts).
pub fn claim(job: &mut Job, lease: Lease) {
    job.state = JobState::Running;
    job.attempt = job.attempt.saturating_add(1);
    job.lease = Some(lease);
    job.cancel_requested = false;
}

/// End the attempt `finish` names. Only the holder of the current lease moves the job on: a
/// repeat of the last finish applied (`last_finish`) answers `AlreadyApplied`, any other token
/// `LeaseLost`, and neither changes anything. Otherwise `last_finish` becomes this token and the
/// outcome applies; a cancel request wins over running again (retry, snooze and release end the
/// job cancelled, a retry's failure still recorded), complete, cancel and fail apply as they are.
pub fn finish(
    job: &mut Job,
    last_finish: &mut Option<LeaseToken>,
    finish: &Finish,
    now: Timestamp,
) -> Finished {
    let token = finish.lease.token;
    if !holds(job, token) {
        let repeat = *last_finish == Some(token);
        return Finished::refused(if repeat {
            FinishResult::AlreadyApplied
        } else {
            FinishResult::LeaseLost
        });
    }
    *last_finish = Some(token);
    let dlq = apply(job, &finish.outcome, now);
    let result = FinishResult::Applied { state: job.state, dlq_id: dlq.as_ref().map(|e| e.id) };
    Finished { result, dlq }
}

/// Whether `token` holds `job`'s lease: the job is running under it. Expiry does not end a
/// lease (only a rescue does), so an expired lease still holds until the job is rescued.
pub fn holds(job: &Job, token: LeaseToken) -> bool {
    job.state == JobState::Running && job.lease.is_some_and(|l| l.token == token)
}

/// A heartbeat of the lease `token`: when it holds the job, its expiry moves to `expires_at`
/// and the answer is `Some(cancel_requested)` (the holder learns of a cancel request this way);
/// `None` when the lease is lost, and nothing changes.
pub fn renew(job: &mut Job, token: LeaseToken, expires_at: Timestamp) -> Option<bool> {
    if !holds(job, token) {
        return None;
    }
    let lease = job.lease.as_mut()?;
    lease.expires_at = expires_at;
    Some(job.cancel_requested)
}

/// Apply `outcome` to a running job whose lease the finish holds; the DLQ entry when it died.
fn apply(job: &mut Job, outcome: &Outcome, now: Timestamp) -> Option<DlqEntry> {
    let cancel_requested = job.cancel_requested;
    job.lease = None;
    job.cancel_requested = false;
    match outcome {
        Outcome::Complete => end(job, JobState::Completed, now),
        Outcome::Cancel => end(job, JobState::Cancelled, now),
        Outcome::Retry { failure, .. } if cancel_requested => {
            record(job, failure.clone(), now);
            end(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { .. } | Outcome::Release if cancel_requested => {
            end(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { run_at } => give_back(job, run_at.resolve(now)),
        Outcome::Release => give_back(job, now),
        Outcome::Fail { failure } => {
            record(job, failure.clone(), now);
            return Some(promote(job, now));
        }
        Outcome::Retry { failure, run_at } => {
            record(job, failure.clone(), now);
            if job.attempt >= job.max_attempts {
                return Some(promote(job, now));
            }
            make_available(job, run_at.resolve(now));
        }
    }
    None
}

/// Reclaim a running job whose lease has expired, noting it in `report`: the lapse is recorded
/// as the attempt's failure and the attempt stays spent; the job is cancelled when a cancel was
/// requested (even on its last attempt: no DLQ entry), available now (keeping its run-at, so
/// its place in the queue) while attempts are left, and dead otherwise, with the DLQ entry
/// returned.
pub fn rescue(job: &mut Job, now: Timestamp, report: &mut RescueReport) -> Option<DlqEntry> {
    let message = match job.lease {
        Some(lease) => format!("lease held by {} expired", lease.owner),
        None => "lease expired".to_owned(),
    };
    reclaim(job, Failure::new(FailureKind::LeaseExpired, message), now, report)
}

/// Reclaim a running job whose worker was marked gone (its heartbeat stopped), whatever its
/// lease's expiry: as [`rescue`], with a [`FailureKind::WorkerLost`] error naming the worker.
pub fn rescue_from_lost_worker(
    job: &mut Job,
    now: Timestamp,
    report: &mut RescueReport,
) -> Option<DlqEntry> {
    let message = match job.lease {
        Some(lease) => lost_worker_message(lease.owner),
        None => "worker lost".to_owned(),
    };
    reclaim(job, Failure::new(FailureKind::WorkerLost, message), now, report)
}

/// The error message a job rescued from a lost worker records (stores that say the rules in
/// their own language write the same text).
pub fn lost_worker_message(worker: crate::id::WorkerId) -> String {
    format!("worker {worker} stopped heartbeating and was marked gone")
}

/// The rescue rules shared by an expired lease and a lost worker.
fn reclaim(
    job: &mut Job,
    failure: Failure,
    now: Timestamp,
    report: &mut RescueReport,
) -> Option<DlqEntry> {
    let cancel_requested = job.cancel_requested;
    job.lease = None;
    job.cancel_requested = false;
    record(job, failure, now);
    if cancel_requested {
        end(job, JobState::Cancelled, now);
        report.cancelled.push(job.id);
        None
    } else if job.attempt < job.max_attempts {
        // Due now, in its old place: it was due when claimed and lost its run through no fault
        // of its own, so it goes before the jobs enqueued after it.
        make_available(job, job.run_at.min(now));
        report.rescued.push(job.id);
        None
    } else {
        let entry = promote(job, now);
        report.promoted.push((job.id, entry.id));
        Some(entry)
    }
}

/// A cancel request for one job: an available job is cancelled at once, a running one gets the
/// flag its holder reads from its heartbeat, a final one is left as it is (write nothing back
/// then). The drive job of a live workflow run is cancelled through its run instead, which the
/// store checks first.
pub fn request_job_cancel(job: &mut Job, now: Timestamp) -> JobCancel {
    match job.state {
        JobState::Available => {
            end(job, JobState::Cancelled, now);
            JobCancel::Cancelled
        }
        JobState::Running => {
            job.cancel_requested = true;
            JobCancel::Requested
        }
        state => JobCancel::AlreadyFinal(state),
    }
}

/// The new job a replay of `entry` enqueues: the dead job's name, queue, payload, priority,
/// timeout, max attempts and scope, under a new ID, with fresh attempts, due `now`; `options`
/// may change its queue and delay it. It takes no unique key: the dead job's key was let go
/// when it died.
pub fn replay(entry: &DlqEntry, options: &ReplayOptions, now: Timestamp) -> Job {
    let run_at = options.delay.map_or(now, |delay| now.saturating_add(delay));
    Job {
        id: JobId::new(),
        name: entry.name.clone(),
        queue: options.queue.clone().unwrap_or_else(|| entry.queue.clone()),
        payload: entry.payload.clone(),
        priority: entry.priority,
        state: JobState::Available,
        attempt: 0,
        max_attempts: entry.max_attempts,
        timeout: entry.timeout,
        run_at,
        created_at: now,
        finished_at: None,
        unique_key: None,
        scope: entry.scope.clone(),
        lease: None,
        cancel_requested: false,
        errors: Vec::new(),
        dlq_id: None,
        concurrency: None,
        progress: None,
    }
}

/// The error a workflow run gets when its drive job dies with `entry`: the job's last error.
pub fn driven_run_error(entry: &DlqEntry) -> String {
    entry.errors.last().map_or_else(|| "the drive job died".to_owned(), |e| e.message.clone())
}

/// End a job in a final state.
fn end(job: &mut Job, state: JobState, now: Timestamp) {
    job.state = state;
    job.finished_at = Some(now);
}

fn make_available(job: &mut Job, run_at: Timestamp) {
    job.state = JobState::Available;
    job.run_at = run_at;
}

/// Available again with the attempt returned (snooze, release): waiting is not failing.
fn give_back(job: &mut Job, run_at: Timestamp) {
    job.attempt = job.attempt.saturating_sub(1);
    make_available(job, run_at);
}

/// Append the failure of the current attempt to the job's error history.
fn record(job: &mut Job, failure: Failure, now: Timestamp) {
    job.errors.push(AttemptError {
        attempt: job.attempt,
        kind: failure.kind,
        message: failure.message,
        at: now,
    });
}

/// Make a job dead; its DLQ entry, for the caller to write in the same operation.
fn promote(job: &mut Job, now: Timestamp) -> DlqEntry {
    end(job, JobState::Dead, now);
    let entry = DlqEntry::for_job(job, now);
    job.dlq_id = Some(entry.id);
    entry
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::id::WorkerId;
    use crate::job::{LeaseRef, RunAt, UniqueKey};
    use crate::scope::Scope;

    const T0: Timestamp = Timestamp::from_unix_micros(1_000_000);
    const LATER: Duration = Duration::from_secs(5);

    fn now() -> Timestamp {
        T0 + Duration::from_secs(60)
    }

    fn boom() -> Failure {
        Failure::new(FailureKind::Error, "boom")
    }

    /// A job of 3 attempts, claimed `attempt` times (running under `token`), optionally with a
    /// cancel request.
    fn running(attempt: u32, cancel_requested: bool, token: LeaseToken) -> Job {
        let mut new = NewJob::new("a", b"{}".to_vec());
        new.max_attempts = 3;
        let mut job = enqueue(new, T0);
        for _ in 0..attempt {
            let lease = Lease { owner: WorkerId::new(), token, expires_at: T0 };
            claim(&mut job, lease);
        }
        job.cancel_requested = cancel_requested;
        job
    }

    fn finish_with(job: &mut Job, token: LeaseToken, outcome: Outcome) -> Finished {
        let mut last = None;
        let lease = LeaseRef { job_id: job.id, token };
        let done = finish(job, &mut last, &Finish { lease, outcome }, now());
        if done.applied() {
            assert_eq!(last, Some(token), "an applied finish is remembered");
        }
        done
    }

    /// One row of the finish table: the job's attempt and cancel request, the outcome, and the
    /// expected state, attempt after, errors recorded, run-at when available, and whether it
    /// died.
    struct Row {
        what: &'static str,
        attempt: u32,
        cancel_requested: bool,
        outcome: Outcome,
        state: JobState,
        attempt_after: u32,
        errors: usize,
        run_at: Option<Timestamp>,
        dead: bool,
    }

    fn retry() -> Outcome {
        Outcome::Retry { failure: boom(), run_at: RunAt::After(LATER) }
    }

    fn snooze() -> Outcome {
        Outcome::Snooze { run_at: RunAt::After(LATER) }
    }

    fn fail() -> Outcome {
        Outcome::Fail { failure: boom() }
    }

    #[rustfmt::skip]
    fn finish_table() -> Vec<Row> {
        use JobState::*;
        use Outcome::{Cancel, Complete, Release};
        let later = Some(now() + LATER);
        let row = |what, attempt, cancel_requested, outcome, state, attempt_after, errors, run_at,
                   dead| Row {
            what, attempt, cancel_requested, outcome, state, attempt_after, errors, run_at, dead,
        };
        vec![
            row("complete", 1, false, Complete, Completed, 1, 0, None, false),
            row("retry, attempts left", 1, false, retry(), Available, 1, 1, later, false),
            row("retry, second of three", 2, false, retry(), Available, 2, 1, later, false),
            row("retry, no attempts left", 3, false, retry(), Dead, 3, 1, None, true),
            row("fail with attempts left", 1, false, fail(), Dead, 1, 1, None, true),
            row("snooze gives the attempt back", 1, false, snooze(), Available, 0, 0, later, false),
            row("release gives the attempt back", 2, false, Release, Available, 1, 0, Some(now()),
                false),
            row("cancel by the holder", 1, false, Cancel, Cancelled, 1, 0, None, false),
            row("cancel request wins over retry", 1, true, retry(), Cancelled, 1, 1, None, false),
            row("cancel request wins over snooze", 1, true, snooze(), Cancelled, 1, 0, None,
                false),
            row("cancel request wins over release", 1, true, Release, Cancelled, 1, 0, None,
                false),
            row("cancel request on the last attempt: cancelled, not dead", 3, true, retry(),
                Cancelled, 3, 1, None, false),
            row("complete applies despite a cancel request", 1, true, Complete, Completed, 1, 0,
                None, false),
            row("fail applies despite a cancel request", 1, true, fail(), Dead, 1, 1, None, true),
        ]
    }

    #[test]
    fn finish_follows_the_state_machine() {
        for row in finish_table() {
            let token = LeaseToken::new();
            let mut job = running(row.attempt, row.cancel_requested, token);
            let done = finish_with(&mut job, token, row.outcome);
            let what = row.what;
            assert_eq!(
                done.result,
                FinishResult::Applied { state: row.state, dlq_id: done.dlq.as_ref().map(|e| e.id) },
                "{what}"
            );
            assert_eq!((job.state, job.attempt), (row.state, row.attempt_after), "{what}");
            assert_eq!((job.lease, job.cancel_requested), (None, false), "{what}");
            assert_eq!(job.errors.len(), row.errors, "{what}");
            if let Some(error) = job.errors.last() {
                assert_eq!(
                    (error.attempt, error.kind, error.at),
                    (row.attempt, FailureKind::Error, now()),
                    "{what}: the failure is the attempt's"
                );
            }
            assert_eq!(job.finished_at, row.state.is_final().then_some(now()), "{what}");
            if let Some(run_at) = row.run_at {
                assert_eq!(job.run_at, run_at, "{what}");
            }
            assert_eq!(done.dlq.is_some(), row.dead, "{what}");
            assert_dead_entry(&job, done.dlq.as_ref(), what);
        }
    }

    /// A dead job points at its entry, and the entry copies the job as it died.
    fn assert_dead_entry(job: &Job, entry: Option<&DlqEntry>, what: &str) {
        let Some(entry) = entry else {
            assert_eq!(job.dlq_id, None, "{what}");
            return;
        };
        assert_eq!(job.dlq_id, Some(entry.id), "{what}");
        assert_eq!(*entry, DlqEntry { id: entry.id, ..DlqEntry::for_job(job, now()) }, "{what}");
        assert_eq!((entry.attempts, &entry.errors), (job.attempt, &job.errors), "{what}");
    }

    #[test]
    fn only_the_current_lease_finishes() {
        let token = LeaseToken::new();
        let mut job = running(1, false, token);
        let before = job.clone();
        let stale = finish_with(&mut job, LeaseToken::new(), Outcome::Complete);
        assert_eq!((stale.result, stale.dlq, &job), (FinishResult::LeaseLost, None, &before));

        let mut last = None;
        let done = Finish { lease: LeaseRef { job_id: job.id, token }, outcome: fail() };
        assert!(finish(&mut job, &mut last, &done, now()).applied());
        let dead = job.clone();
        let again = finish(&mut job, &mut last, &done, now());
        assert_eq!((again.result, &job), (FinishResult::AlreadyApplied, &dead), "a repeat");
        let other = Finish { lease: LeaseRef { job_id: job.id, token: LeaseToken::new() }, ..done };
        let lost = finish(&mut job, &mut last, &other, now());
        assert_eq!((lost.result, &job), (FinishResult::LeaseLost, &dead));
    }

    #[test]
    fn rescue_of_an_expired_lease() {
        // (what, attempt, cancel requested, state, in which report list)
        let rows = [
            ("attempts left: available, attempt stays spent", 1, false, JobState::Available),
            ("last attempt: dead", 3, false, JobState::Dead),
            ("cancel requested: cancelled", 1, true, JobState::Cancelled),
            (
                "cancel requested on the last attempt: cancelled, not dead",
                3,
                true,
                JobState::Cancelled,
            ),
        ];
        for (what, attempt, cancel_requested, state) in rows {
            let mut job = running(attempt, cancel_requested, LeaseToken::new());
            let owner = job.lease.map(|l| l.owner).unwrap();
            let mut report = RescueReport::default();
            let entry = rescue(&mut job, now(), &mut report);
            assert_eq!((job.state, job.attempt), (state, attempt), "{what}");
            assert_eq!((job.lease, job.cancel_requested), (None, false), "{what}");
            let [error] = &job.errors[..] else { panic!("{what}: one error") };
            assert_eq!((error.attempt, error.kind), (attempt, FailureKind::LeaseExpired), "{what}");
            assert!(error.message.contains(&owner.to_string()), "{what}");
            let expected = match state {
                JobState::Available => RescueReport { rescued: vec![job.id], ..Default::default() },
                JobState::Cancelled => {
                    RescueReport { cancelled: vec![job.id], ..Default::default() }
                }
                _ => RescueReport {
                    promoted: vec![(job.id, entry.as_ref().unwrap().id)],
                    ..Default::default()
                },
            };
            assert_eq!(report, expected, "{what}");
            assert_eq!(job.run_at, T0, "{what}: a rescued job keeps its place (its run-at)");
            assert_eq!(job.finished_at, state.is_final().then_some(now()), "{what}");
            assert_dead_entry(&job, entry.as_ref(), what);
        }
    }

    #[test]
    fn cancel_requests() {
        let mut available = enqueue(NewJob::new("a", vec![]), T0);
        assert_eq!(request_job_cancel(&mut available, now()), JobCancel::Cancelled);
        assert_eq!((available.state, available.finished_at), (JobState::Cancelled, Some(now())));
        assert_eq!(
            request_job_cancel(&mut available, now()),
            JobCancel::AlreadyFinal(JobState::Cancelled)
        );
        let mut job = running(1, false, LeaseToken::new());
        assert_eq!(request_job_cancel(&mut job, now()), JobCancel::Requested);
        assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
    }

    #[test]
    fn enqueue_and_claim() {
        let mut new = NewJob::new("a", b"{}".to_vec());
        new.unique = Some(UniqueKey { key: "k".into(), window: None });
        new.run_at = RunAt::After(LATER);
        new.scope = Scope { app: Some("app".into()), tenant: None };
        let mut job = enqueue(new.clone(), T0);
        assert_eq!((job.id, job.state, job.attempt), (new.id, JobState::Available, 0));
        assert_eq!((job.run_at, job.created_at), (T0 + LATER, T0));
        assert_eq!((job.unique_key.as_deref(), &job.scope), (Some("k"), &new.scope));
        job.cancel_requested = true;
        let lease = Lease { owner: WorkerId::new(), token: LeaseToken::new(), expires_at: now() };
        claim(&mut job, lease);
        assert_eq!((job.state, job.attempt, job.lease), (JobState::Running, 1, Some(lease)));
        assert!(!job.cancel_requested, "a new attempt starts without a request");
    }

    #[test]
    fn dlq_replay_creates_a_new_job() {
        let token = LeaseToken::new();
        let mut job = running(1, false, token);
        job.unique_key = Some("k".into());
        job.timeout = Some(Duration::from_secs(7));
        let entry = finish_with(&mut job, token, fail()).dlq.unwrap();
        let replayed = replay(&entry, &ReplayOptions::default(), now());
        assert_ne!(replayed.id, job.id);
        let kept = (&replayed.name, &replayed.queue, &replayed.payload, replayed.priority);
        assert_eq!(kept, (&job.name, &job.queue, &job.payload, job.priority));
        let limits = (replayed.timeout, replayed.max_attempts, &replayed.scope);
        assert_eq!(limits, (job.timeout, job.max_attempts, &job.scope));
        assert_eq!((replayed.state, replayed.attempt), (JobState::Available, 0));
        assert_eq!(
            (replayed.run_at, replayed.created_at, replayed.finished_at),
            (now(), now(), None)
        );
        assert_eq!((replayed.unique_key, replayed.errors.len(), replayed.dlq_id), (None, 0, None));
        assert_eq!(driven_run_error(&entry), "boom");
        let empty = DlqEntry { errors: Vec::new(), ..entry };
        assert_eq!(driven_run_error(&empty), "the drive job died");
    }

    #[test]
    fn a_heartbeat_renews_only_the_lease_that_holds_even_when_expired() {
        let token = LeaseToken::new();
        let mut job = running(1, false, token);
        assert!(job.lease.is_some_and(|l| l.expires_at < now()), "the lease has expired");
        assert_eq!(renew(&mut job, token, now() + LATER), Some(false), "expired, not rescued");
        assert_eq!(job.lease.map(|l| l.expires_at), Some(now() + LATER));
        assert_eq!(renew(&mut job, LeaseToken::new(), T0), None, "another token");
        assert_eq!(job.lease.map(|l| l.expires_at), Some(now() + LATER), "left as it was");
        job.cancel_requested = true;
        assert_eq!(renew(&mut job, token, now()), Some(true), "the holder learns of a cancel");
        let done = finish_with(&mut job, token, Outcome::Complete);
        assert!(done.applied());
        assert_eq!(renew(&mut job, token, now()), None, "a finished job holds no lease");
    }
}
