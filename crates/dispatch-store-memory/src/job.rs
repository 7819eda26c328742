//! [`JobStore`] for [`MemoryStore`].

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    AttemptError, CancelResult, ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Error,
    ErrorKind, Failure, FailureKind, Finish, FinishResult, HeartbeatReport, Job, JobFilter, JobId,
    JobState, JobStore, Lease, LeaseRef, NewJob, Outcome, Page, PageRequest, QueueCount,
    RescueReport, Result, Timestamp,
};

use crate::{MemoryStore, Row, State};

#[async_trait]
impl JobStore for MemoryStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate(self.max_payload_bytes)?;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        // Caller-chosen IDs must be distinct, and new unless the item repeats the stored job
        // (a retried call); checked before anything is stored.
        let mut ids = HashSet::with_capacity(jobs.len());
        if let Some(job) = jobs.iter().find(|j| !ids.insert(j.id) || state.reuses_id(j)) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("job {:?}: a job with ID {} already exists", job.name, job.id),
            ));
        }
        let mut woken = Vec::with_capacity(jobs.len());
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            // A retried item answers as the first call did, and changes nothing.
            if state.jobs.contains_key(&job.id) {
                results.push(Enqueued::Created(job.id));
                continue;
            }
            let queue = job.queue.clone();
            let result = state.enqueue_one(job, now);
            if !result.is_duplicate() {
                woken.push(queue);
            }
            results.push(result);
        }
        drop(state);
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(results)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let keys = state.available.best_due(&request.queues, &request.names, now, request.limit);
        let expires_at = now + request.lease_ttl;
        Ok(keys.into_iter().filter_map(|key| state.claim_one(key.3, request, expires_at)).collect())
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        Ok(finishes.iter().map(|f| state.finish_one(f, now)).collect())
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let mut report = HeartbeatReport::default();
        for lease in leases {
            match state.renew(*lease, now + ttl) {
                Some(cancel_requested) => {
                    report.renewed.push(lease.job_id);
                    if cancel_requested {
                        report.cancel_requested.push(lease.job_id);
                    }
                }
                None => report.lost.push(lease.job_id),
            }
        }
        Ok(report)
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let job_state = match state.jobs.get(&id) {
            Some(row) => row.job.state,
            None => return Err(Error::not_found(format!("no job {id}"))),
        };
        // The drive job of a run that has not ended is cancelled through its run: a cancelled
        // (or cancel-flagged) drive job would leave the run without a driver.
        if !job_state.is_final()
            && let Some(run) = state.live_run_driven_by(id)
        {
            let (_, woken) = state.cancel_run(run, DRIVE_JOB_CANCEL_REASON, now)?;
            drop(state);
            self.wakeups.notify(woken.as_deref());
            return Ok(CancelResult::Requested);
        }
        Ok(match job_state {
            JobState::Available => {
                state.unindex(id);
                state.finalize(id, JobState::Cancelled, now);
                CancelResult::Cancelled
            }
            JobState::Running => {
                if let Some(row) = state.jobs.get_mut(&id) {
                    row.job.cancel_requested = true;
                }
                CancelResult::Requested
            }
            final_state => CancelResult::AlreadyFinal(final_state),
        })
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let expired: Vec<JobId> = state
            .expiries
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .take(limit)
            .map(|&(_, id)| id)
            .collect();
        let mut report = RescueReport::default();
        for id in expired {
            state.rescue_one(id, now, &mut report);
        }
        Ok(report)
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        let now = self.clock.now();
        let earliest = self.state.lock().available.earliest(queues, names);
        Ok(earliest.map(|run_at| run_at.duration_since(now)))
    }

    fn wakeups(&self) -> Option<dispatch_core::WakeupStream> {
        Some(self.wakeups.subscribe())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id).map(|row| row.job.clone()))
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        let limit = page.effective_limit();
        let start = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.state.lock();
        let items = state
            .jobs
            .range((start, Bound::Unbounded))
            .map(|(_, row)| &row.job)
            .filter(|job| matches(filter, job))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |job| job.id))
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        let state = self.state.lock();
        let mut counts: BTreeMap<(&str, JobState), u64> = BTreeMap::new();
        for row in state.jobs.values() {
            *counts.entry((row.job.queue.as_str(), row.job.state)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((queue, state), count)| QueueCount { queue: queue.to_owned(), state, count })
            .collect())
    }
}

fn matches(filter: &JobFilter, job: &Job) -> bool {
    filter.state.is_none_or(|s| s == job.state)
        && filter.queue.as_ref().is_none_or(|q| *q == job.queue)
        && filter.name.as_ref().is_none_or(|n| *n == job.name)
}

impl State {
    /// Whether `new` takes the ID of a stored job that it does not repeat: another name or
    /// payload. A repeat (same name and payload) is a retried enqueue, not a reuse.
    pub(crate) fn reuses_id(&self, new: &NewJob) -> bool {
        self.jobs
            .get(&new.id)
            .is_some_and(|row| row.job.name != new.name || row.job.payload != new.payload)
    }

    pub(crate) fn enqueue_one(&mut self, new: NewJob, now: Timestamp) -> Enqueued {
        let unique_key = new.unique.as_ref().map(|u| (new.name.clone(), u.key.clone()));
        let holder = unique_key.as_ref().and_then(|k| self.unique.get(k)).copied();
        if let Some(holder) =
            holder.filter(|h| self.jobs.get(h).is_some_and(|r| r.holds_unique_key(now)))
        {
            return Enqueued::Duplicate(holder);
        }
        let id = new.id;
        let run_at = new.run_at.resolve(now);
        let unique_until = new.unique.as_ref().and_then(|u| u.window).map(|w| now + w);
        let job = Job {
            id,
            name: new.name,
            queue: new.queue,
            payload: new.payload,
            priority: new.priority,
            state: JobState::Available,
            attempt: 0,
            max_attempts: new.max_attempts,
            timeout: new.timeout,
            run_at,
            created_at: now,
            finished_at: None,
            unique_key: new.unique.map(|u| u.key),
            scope: new.scope,
            lease: None,
            cancel_requested: false,
            errors: Vec::new(),
            dlq_id: None,
        };
        let seq = self.next_seq();
        self.jobs.insert(id, Row { job, seq, last_finish: None, unique_until });
        self.make_available(id, run_at);
        if let Some(key) = unique_key {
            self.unique.insert(key, id);
        }
        Enqueued::Created(id)
    }

    fn claim_one(
        &mut self,
        id: JobId,
        request: &ClaimRequest,
        expires_at: Timestamp,
    ) -> Option<ClaimedJob> {
        self.unindex(id);
        let row = self.jobs.get_mut(&id)?;
        let lease = Lease { owner: request.worker, token: request.token, expires_at };
        row.job.state = JobState::Running;
        row.job.attempt = row.job.attempt.saturating_add(1);
        row.job.lease = Some(lease);
        row.job.cancel_requested = false;
        self.expiries.insert((expires_at, id));
        Some(ClaimedJob { job: row.job.clone(), lease })
    }

    pub(crate) fn finish_one(&mut self, finish: &Finish, now: Timestamp) -> FinishResult {
        let id = finish.lease.job_id;
        let Some(row) = self.jobs.get_mut(&id) else { return FinishResult::LeaseLost };
        let holds = row.job.state == JobState::Running
            && row.job.lease.is_some_and(|l| l.token == finish.lease.token);
        if !holds {
            return if row.last_finish == Some(finish.lease.token) {
                FinishResult::AlreadyApplied
            } else {
                FinishResult::LeaseLost
            };
        }
        row.last_finish = Some(finish.lease.token);
        let cancel_requested = row.job.cancel_requested;
        self.clear_lease(id);
        let mut dlq_id = None;
        let state = match &finish.outcome {
            Outcome::Complete => self.end(id, JobState::Completed, now),
            Outcome::Cancel => self.end(id, JobState::Cancelled, now),
            // A cancel request wins over running again.
            Outcome::Retry { failure, .. } if cancel_requested => {
                self.record(id, failure.clone(), now);
                self.end(id, JobState::Cancelled, now)
            }
            Outcome::Snooze { .. } | Outcome::Release if cancel_requested => {
                self.end(id, JobState::Cancelled, now)
            }
            Outcome::Snooze { run_at } => self.give_back(id, run_at.resolve(now)),
            Outcome::Release => self.give_back(id, now),
            Outcome::Fail { failure } => {
                self.record(id, failure.clone(), now);
                dlq_id = self.promote(id, now);
                JobState::Dead
            }
            Outcome::Retry { failure, run_at } => {
                self.record(id, failure.clone(), now);
                if self.attempts_left(id) {
                    self.make_available(id, run_at.resolve(now));
                    JobState::Available
                } else {
                    dlq_id = self.promote(id, now);
                    JobState::Dead
                }
            }
        };
        FinishResult::Applied { state, dlq_id }
    }

    fn end(&mut self, id: JobId, state: JobState, now: Timestamp) -> JobState {
        self.finalize(id, state, now);
        state
    }

    /// Available again with the attempt returned (snooze, release).
    fn give_back(&mut self, id: JobId, run_at: Timestamp) -> JobState {
        if let Some(row) = self.jobs.get_mut(&id) {
            row.job.attempt = row.job.attempt.saturating_sub(1);
        }
        self.make_available(id, run_at);
        JobState::Available
    }

    fn attempts_left(&self, id: JobId) -> bool {
        self.jobs.get(&id).is_some_and(|row| row.job.attempt < row.job.max_attempts)
    }

    /// Append the failure of the current attempt to the job's error history.
    fn record(&mut self, id: JobId, failure: Failure, now: Timestamp) {
        if let Some(row) = self.jobs.get_mut(&id) {
            let attempt = row.job.attempt;
            row.job.errors.push(AttemptError {
                attempt,
                kind: failure.kind,
                message: failure.message,
                at: now,
            });
        }
    }

    /// Extend a lease; `Some(cancel_requested)` when the token still holds it.
    fn renew(&mut self, lease: LeaseRef, expires_at: Timestamp) -> Option<bool> {
        let row = self.jobs.get_mut(&lease.job_id)?;
        let held = row.job.lease.as_mut().filter(|l| l.token == lease.token)?;
        if row.job.state != JobState::Running {
            return None;
        }
        let old = std::mem::replace(&mut held.expires_at, expires_at);
        let cancel_requested = row.job.cancel_requested;
        self.expiries.remove(&(old, lease.job_id));
        self.expiries.insert((expires_at, lease.job_id));
        Some(cancel_requested)
    }

    fn rescue_one(&mut self, id: JobId, now: Timestamp, report: &mut RescueReport) {
        let Some(row) = self.jobs.get(&id) else { return };
        let (cancel_requested, owner) = (row.job.cancel_requested, row.job.lease.map(|l| l.owner));
        self.clear_lease(id);
        let message = match owner {
            Some(owner) => format!("lease held by {owner} expired"),
            None => "lease expired".to_owned(),
        };
        self.record(id, Failure::new(FailureKind::LeaseExpired, message), now);
        if cancel_requested {
            self.finalize(id, JobState::Cancelled, now);
            report.cancelled.push(id);
        } else if self.attempts_left(id) {
            self.make_available(id, now);
            report.rescued.push(id);
        } else if let Some(dlq_id) = self.promote(id, now) {
            report.promoted.push((id, dlq_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::{Clock, ErrorKind, LeaseToken, RunAt, UniqueKey};

    use super::*;
    use crate::testing::{TTL, claim, claim_one, enqueue, finish, job, lease, request, store};

    fn unique(name: &str, key: &str, window: Option<Duration>) -> NewJob {
        let mut job = job(name, 0);
        job.unique = Some(UniqueKey { key: key.into(), window });
        job
    }

    #[tokio::test]
    async fn claims_by_priority_then_run_at_then_fifo() {
        let (store, clock) = store();
        let mut early = job("a", 0);
        early.run_at = RunAt::At(clock.now() - Duration::from_secs(10));
        let ids =
            enqueue(&store, vec![job("a", 0), job("a", 5), job("a", 0), job("a", 5), early]).await;
        let claimed: Vec<JobId> =
            claim(&store, &["a"], 10).await.iter().map(|c| c.job.id).collect();
        assert_eq!(claimed, [ids[1], ids[3], ids[4], ids[0], ids[2]]);
        assert!(claim(&store, &["a"], 10).await.is_empty(), "a claimed job is not claimed again");
    }

    #[tokio::test]
    async fn run_at_gates_the_claim() {
        let (store, clock) = store();
        let mut later = job("a", 9);
        later.run_at = RunAt::After(Duration::from_secs(10));
        let [later_id] = enqueue(&store, vec![later]).await[..] else { unreachable!() };
        clock.advance(Duration::from_secs(10) - Duration::from_millis(1));
        assert!(claim(&store, &["a"], 5).await.is_empty());
        // A due job of lower priority is not hidden behind the future one.
        let due = enqueue(&store, vec![job("a", 1)]).await[0];
        assert_eq!(claim_one(&store, &["a"]).await.job.id, due);
        clock.advance(Duration::from_millis(1));
        let claimed = claim_one(&store, &["a"]).await;
        assert_eq!(claimed.job.id, later_id);
        assert_eq!(claimed.job.state, JobState::Running);
        assert_eq!(claimed.job.attempt, 1);
        assert_eq!(claimed.lease.expires_at, clock.now() + TTL);
        assert_eq!(claimed.job.lease, Some(claimed.lease));
    }

    #[tokio::test]
    async fn claim_filters_by_name_and_queue() {
        let (store, _) = store();
        let mut other_queue = job("a", 0);
        other_queue.queue = "other".into();
        let ids = enqueue(&store, vec![job("a", 0), job("b", 0), other_queue, job("c", 0)]).await;
        assert!(claim(&store, &[], 10).await.is_empty(), "no names claims nothing");
        let mut no_queues = request(&["a"], 10);
        no_queues.queues.clear();
        assert!(store.claim(&no_queues).await.unwrap().is_empty(), "no queues claims nothing");
        assert!(claim(&store, &["a"], 0).await.is_empty(), "limit 0 claims nothing");
        let claimed: Vec<JobId> =
            claim(&store, &["a", "b", "a"], 10).await.iter().map(|c| c.job.id).collect();
        assert_eq!(claimed, [ids[0], ids[1]]);
        let job_c = store.get_job(ids[3]).await.unwrap().unwrap();
        assert_eq!(job_c.state, JobState::Available, "a job no worker handles stays available");
    }

    #[tokio::test]
    async fn fencing_after_rescue() {
        let (store, clock) = store();
        let id = enqueue(&store, vec![job("a", 0)]).await[0];
        let first = claim_one(&store, &["a"]).await;
        clock.advance(TTL);
        let report = store.rescue_expired(10).await.unwrap();
        assert_eq!(report.rescued, [id]);
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempt, job.lease), (JobState::Available, 1, None));
        assert_eq!(job.errors[0].kind, FailureKind::LeaseExpired);
        assert!(job.errors[0].message.contains(&first.lease.owner.to_string()));

        let second = claim_one(&store, &["a"]).await;
        assert_eq!(second.job.attempt, 2);
        assert_ne!(second.lease.token, first.lease.token);
        assert_eq!(finish(&store, lease(&first), Outcome::Complete).await, FinishResult::LeaseLost);
        let beat = store.heartbeat(&[lease(&first)], TTL).await.unwrap();
        assert_eq!(beat.lost, [id]);
        let applied = FinishResult::Applied { state: JobState::Completed, dlq_id: None };
        assert_eq!(finish(&store, lease(&second), Outcome::Complete).await, applied);
        let again = finish(&store, lease(&second), Outcome::Complete).await;
        assert_eq!(again, FinishResult::AlreadyApplied);
        assert_eq!(finish(&store, lease(&first), Outcome::Cancel).await, FinishResult::LeaseLost);
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!((job.state, job.finished_at), (JobState::Completed, Some(clock.now())));
        let unknown = LeaseRef { job_id: JobId::new(), token: LeaseToken::new() };
        assert_eq!(finish(&store, unknown, Outcome::Complete).await, FinishResult::LeaseLost);
    }

    #[tokio::test]
    async fn snooze_and_release_give_the_attempt_back() {
        let (store, clock) = store();
        let id = enqueue(&store, vec![job("a", 0)]).await[0];
        let claimed = claim_one(&store, &["a"]).await;
        let snooze = Outcome::Snooze { run_at: RunAt::After(Duration::from_secs(5)) };
        let result = finish(&store, lease(&claimed), snooze).await;
        assert_eq!(result, FinishResult::Applied { state: JobState::Available, dlq_id: None });
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!((job.attempt, job.run_at), (0, clock.now() + Duration::from_secs(5)));
        assert!(claim(&store, &["a"], 1).await.is_empty());
        clock.advance(Duration::from_secs(5));
        let claimed = claim_one(&store, &["a"]).await;
        assert_eq!(claimed.job.attempt, 1);
        let results = store.release(&[lease(&claimed)]).await.unwrap();
        assert_eq!(results, [FinishResult::Applied { state: JobState::Available, dlq_id: None }]);
        let claimed = claim_one(&store, &["a"]).await;
        assert_eq!(claimed.job.attempt, 1);
        assert!(claimed.job.errors.is_empty());
    }

    #[tokio::test]
    async fn retry_waits_out_its_backoff_and_fail_is_final() {
        let (store, clock) = store();
        let ids = enqueue(&store, vec![job("a", 0), job("b", 0)]).await;
        let claimed = claim_one(&store, &["a"]).await;
        let failure = Failure::new(FailureKind::Panic, "boom");
        let outcome = Outcome::Retry { failure, run_at: RunAt::After(Duration::from_secs(2)) };
        let result = finish(&store, lease(&claimed), outcome).await;
        assert_eq!(result, FinishResult::Applied { state: JobState::Available, dlq_id: None });
        let job = store.get_job(ids[0]).await.unwrap().unwrap();
        let error = AttemptError {
            attempt: 1,
            kind: FailureKind::Panic,
            message: "boom".into(),
            at: clock.now(),
        };
        assert_eq!((job.attempt, &job.errors[..]), (1, &[error][..]));
        assert!(claim(&store, &["a"], 1).await.is_empty());
        clock.advance(Duration::from_secs(2));
        assert_eq!(claim_one(&store, &["a"]).await.job.attempt, 2);

        let claimed = claim_one(&store, &["b"]).await;
        let outcome = Outcome::Fail { failure: Failure::new(FailureKind::Decode, "bad input") };
        let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
            finish(&store, lease(&claimed), outcome).await
        else {
            panic!("a failed job is dead at once")
        };
        let job = store.get_job(ids[1]).await.unwrap().unwrap();
        assert_eq!((job.dlq_id, job.errors.len()), (Some(dlq_id), 1));
    }

    #[tokio::test]
    async fn heartbeat_extends_and_reports_cancel_requests() {
        let (store, clock) = store();
        let id = enqueue(&store, vec![job("a", 0)]).await[0];
        let claimed = claim_one(&store, &["a"]).await;
        clock.advance(TTL - Duration::from_secs(1));
        let beat = store.heartbeat(&[lease(&claimed)], TTL).await.unwrap();
        assert_eq!((beat.renewed, beat.lost, beat.cancel_requested), (vec![id], vec![], vec![]));
        clock.advance(TTL - Duration::from_secs(1));
        assert!(store.rescue_expired(10).await.unwrap().is_empty(), "the renewed lease holds");
        assert_eq!(store.request_cancel(id).await.unwrap(), CancelResult::Requested);
        let beat = store.heartbeat(&[lease(&claimed)], TTL).await.unwrap();
        assert_eq!((beat.renewed, beat.cancel_requested), (vec![id], vec![id]));
        let result = finish(&store, lease(&claimed), Outcome::Cancel).await;
        assert_eq!(result, FinishResult::Applied { state: JobState::Cancelled, dlq_id: None });
        let final_state = CancelResult::AlreadyFinal(JobState::Cancelled);
        assert_eq!(store.request_cancel(id).await.unwrap(), final_state);
    }

    #[tokio::test]
    async fn cancel_of_available_and_rescue_of_cancel_requested() {
        let (store, clock) = store();
        let ids = enqueue(&store, vec![job("a", 0), job("b", 0)]).await;
        assert_eq!(store.request_cancel(ids[0]).await.unwrap(), CancelResult::Cancelled);
        assert!(claim(&store, &["a"], 1).await.is_empty());
        claim_one(&store, &["b"]).await;
        assert_eq!(store.request_cancel(ids[1]).await.unwrap(), CancelResult::Requested);
        clock.advance(TTL);
        assert_eq!(store.rescue_expired(10).await.unwrap().cancelled, [ids[1]]);
        let job = store.get_job(ids[1]).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.lease, job.cancel_requested),
            (JobState::Cancelled, None, false)
        );
        let err = store.request_cancel(JobId::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn unique_keys() {
        let (store, clock) = store();
        let results = store
            .enqueue(vec![unique("a", "k", None), unique("a", "k", None), unique("b", "k", None)])
            .await
            .unwrap();
        let holder = results[0].id();
        assert_eq!(results[1], Enqueued::Duplicate(holder), "duplicate within one batch");
        assert!(!results[2].is_duplicate(), "keys are scoped by job name");
        let claimed = claim_one(&store, &["a"]).await;
        let again = store.enqueue(vec![unique("a", "k", None)]).await.unwrap();
        assert_eq!(again, [Enqueued::Duplicate(holder)], "a running job holds its key");
        finish(&store, lease(&claimed), Outcome::Complete).await;
        let after = store.enqueue(vec![unique("a", "k", None)]).await.unwrap();
        assert!(!after[0].is_duplicate(), "a finished job without a window lets go");

        let window = Some(Duration::from_secs(60));
        let windowed = store.enqueue(vec![unique("w", "k", window)]).await.unwrap()[0].id();
        let claimed = claim_one(&store, &["w"]).await;
        finish(&store, lease(&claimed), Outcome::Complete).await;
        clock.advance(Duration::from_secs(59));
        let held = store.enqueue(vec![unique("w", "k", window)]).await.unwrap();
        assert_eq!(held, [Enqueued::Duplicate(windowed)], "the window outlives the job");
        clock.advance(Duration::from_secs(1));
        let free = store.enqueue(vec![unique("w", "k", window)]).await.unwrap();
        assert!(!free[0].is_duplicate(), "the window has passed");
    }

    #[tokio::test]
    async fn invalid_batch_stores_nothing() {
        let (store, _) = store();
        let store = store.max_payload_bytes(4);
        let big = NewJob::new("a", vec![0; 5]);
        let err = store.enqueue(vec![job("a", 0), big]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        let mut no_attempts = job("a", 0);
        no_attempts.max_attempts = 0;
        let err = store.enqueue(vec![job("a", 0), no_attempts]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let existing = enqueue(&store, vec![job("a", 0)]).await[0];
        // Another payload under a stored ID is a reuse, not a retried enqueue.
        let mut reused = NewJob::new("a", b"[]".to_vec());
        reused.id = existing;
        let err = store.enqueue(vec![job("a", 0), reused]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let all = store.list_jobs(&JobFilter::default(), &PageRequest::first(10)).await.unwrap();
        assert_eq!(all.items.len(), 1);
    }

    #[tokio::test]
    async fn lists_page_by_id_and_counts_by_queue_and_state() {
        let (store, _) = store();
        let mut other = job("b", 0);
        other.queue = "other".into();
        let ids = enqueue(&store, vec![job("a", 0), job("a", 0), job("b", 0), other]).await;
        let claimed = claim_one(&store, &["b"]).await.job.id;
        // IDs made in one millisecond need not sort in creation order: sort them as the store does.
        let mut ids = ids[..3].to_vec();
        ids.sort();
        let filter = JobFilter { queue: Some("default".into()), ..JobFilter::default() };
        let page = store.list_jobs(&filter, &PageRequest::first(2)).await.unwrap();
        assert_eq!(page.items.iter().map(|j| j.id).collect::<Vec<_>>(), &ids[..2]);
        let next = PageRequest::next_of(&page, 2).unwrap();
        let page = store.list_jobs(&filter, &next).await.unwrap();
        assert_eq!((page.items[0].id, page.items.len(), page.next), (ids[2], 1, None));
        let running = JobFilter { state: Some(JobState::Running), ..JobFilter::default() };
        let page = store.list_jobs(&running, &PageRequest::first(10)).await.unwrap();
        assert_eq!(page.items.iter().map(|j| j.id).collect::<Vec<_>>(), [claimed]);
        let count = |queue: &str, state, count| QueueCount { queue: queue.into(), state, count };
        assert_eq!(
            store.count_jobs().await.unwrap(),
            [
                count("default", JobState::Available, 2),
                count("default", JobState::Running, 1),
                count("other", JobState::Available, 1),
            ]
        );
    }
}
