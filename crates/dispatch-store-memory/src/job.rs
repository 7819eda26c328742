//! [`JobStore`] for [`MemoryStore`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    AttemptError, CancelResult, ClaimRequest, ClaimedJob, Enqueued, Error, Failure, FailureKind,
    Finish, FinishResult, HeartbeatReport, Job, JobFilter, JobId, JobState, JobStore, Lease,
    LeaseRef, LeaseToken, NewJob, Outcome, Page, PageRequest, QueueCount, RescueReport, Result,
    Timestamp,
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
        Ok(jobs.into_iter().map(|job| state.enqueue_one(job, now)).collect())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let keys = state.available.best_due(&request.queues, &request.names, now, request.limit);
        let expires_at = now + request.lease_ttl;
        Ok(keys.into_iter().filter_map(|key| state.claim_one(key.3, request, expires_at)).collect())
    }

    async fn finish(&self, finishes: Vec<Finish>) -> Result<Vec<FinishResult>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        Ok(finishes.into_iter().map(|f| state.finish_one(f, now)).collect())
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
    fn enqueue_one(&mut self, new: NewJob, now: Timestamp) -> Enqueued {
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
        let lease = Lease { owner: request.worker, token: LeaseToken::new(), expires_at };
        row.job.state = JobState::Running;
        row.job.attempt += 1;
        row.job.lease = Some(lease);
        row.job.cancel_requested = false;
        self.expiries.insert((expires_at, id));
        Some(ClaimedJob { job: row.job.clone(), lease })
    }

    fn finish_one(&mut self, finish: Finish, now: Timestamp) -> FinishResult {
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
        self.clear_lease(id);
        let mut dlq_id = None;
        let state = match finish.outcome {
            Outcome::Complete => self.end(id, JobState::Completed, now),
            Outcome::Cancel => self.end(id, JobState::Cancelled, now),
            Outcome::Snooze { run_at } => self.give_back(id, run_at.resolve(now)),
            Outcome::Release => self.give_back(id, now),
            Outcome::Fail { failure } => {
                self.record(id, failure, now);
                dlq_id = self.promote(id, now);
                JobState::Dead
            }
            Outcome::Retry { failure, run_at } => {
                self.record(id, failure, now);
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
        if cancel_requested {
            self.finalize(id, JobState::Cancelled, now);
            report.cancelled.push(id);
            return;
        }
        let message = match owner {
            Some(owner) => format!("lease held by {owner} expired"),
            None => "lease expired".to_owned(),
        };
        self.record(id, Failure::new(FailureKind::LeaseExpired, message), now);
        if self.attempts_left(id) {
            self.make_available(id, now);
            report.rescued.push(id);
        } else if let Some(dlq_id) = self.promote(id, now) {
            report.promoted.push((id, dlq_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dispatch_core::{ManualClock, RunAt, WorkerId};

    use super::*;

    fn claim_request(limit: usize) -> ClaimRequest {
        ClaimRequest {
            worker: WorkerId::new(),
            queues: vec!["default".into()],
            names: vec!["a".into()],
            limit,
            lease_ttl: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn retry_then_exhaust_promotes_with_history() {
        let clock = Arc::new(ManualClock::fixed());
        let store = MemoryStore::with_clock(clock.clone());
        let mut job = NewJob::new("a", b"{}".to_vec());
        job.max_attempts = 2;
        let id = store.enqueue(vec![job]).await.unwrap()[0].id();
        for attempt in 1..=2 {
            let claimed = store.claim(&claim_request(5)).await.unwrap();
            assert_eq!(claimed.len(), 1, "attempt {attempt}");
            let failure = Failure::new(FailureKind::Error, format!("fail {attempt}"));
            let outcome = Outcome::Retry { failure, run_at: RunAt::Now };
            let lease = LeaseRef { job_id: id, token: claimed[0].lease.token };
            let result = store.finish(vec![Finish { lease, outcome }]).await.unwrap()[0];
            if attempt == 2 {
                let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(_) } = result
                else {
                    panic!("expected promotion, got {result:?}")
                };
            }
        }
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2]);
        assert!(store.claim(&claim_request(5)).await.unwrap().is_empty());
    }
}
