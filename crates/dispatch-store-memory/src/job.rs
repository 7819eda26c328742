//! [`JobStore`] for [`MemoryStore`]: short methods over the concern modules (enqueue, claim,
//! finish), with heartbeats, cancel requests and lookups here.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Error, Finish, FinishResult,
    HeartbeatReport, Job, JobCancel, JobFilter, JobId, JobState, JobStore, LeaseRef, NewJob, Page,
    PageRequest, QueueCount, RescueReport, Result, Timestamp, transition,
};

use crate::enqueue::validate_batch;
use crate::{MemoryStore, State};

#[async_trait]
impl JobStore for MemoryStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.max_payload_bytes)?;
        let now = self.clock.now();
        let (results, woken) = self.state.lock().enqueue_batch(jobs, now)?;
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(results)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let now = self.clock.now();
        Ok(self.state.lock().claim(request, now))
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        Ok(finishes.iter().map(|f| state.finish_one(f, now)).collect())
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let now = self.clock.now();
        Ok(self.state.lock().heartbeat(leases, now + ttl))
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        let now = self.clock.now();
        let (result, woken) = self.state.lock().request_job_cancel(id, now)?;
        self.wakeups.notify(woken.as_deref());
        Ok(result)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        Ok(self.state.lock().rescue_expired(limit, now))
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        let now = self.clock.now();
        Ok(self.state.lock().next_due(queues, names, now))
    }

    fn as_cluster_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::ClusterStore>> {
        Some(self)
    }

    fn as_retention_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::RetentionStore>> {
        Some(self)
    }

    fn as_flow_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::FlowStore>> {
        Some(self)
    }

    fn as_cron_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::CronStore>> {
        Some(self)
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
    /// Extend every lease in `leases` that is still held until `expires_at`; report the rest
    /// as lost.
    pub(crate) fn heartbeat(
        &mut self,
        leases: &[LeaseRef],
        expires_at: Timestamp,
    ) -> HeartbeatReport {
        let mut report = HeartbeatReport::default();
        for lease in leases {
            match self.renew(*lease, expires_at) {
                Some(cancel_requested) => {
                    report.renewed.push(lease.job_id);
                    if cancel_requested {
                        report.cancel_requested.push(lease.job_id);
                    }
                }
                None => report.lost.push(lease.job_id),
            }
        }
        report
    }

    /// Extend a lease; `Some(cancel_requested)` when the token still holds it.
    fn renew(&mut self, lease: LeaseRef, expires_at: Timestamp) -> Option<bool> {
        let row = self.jobs.get_mut(&lease.job_id)?;
        let old = row.job.lease.map(|l| l.expires_at)?;
        let cancel_requested = transition::renew(&mut row.job, lease.token, expires_at)?;
        self.expiries.remove(&(old, lease.job_id));
        self.expiries.insert((expires_at, lease.job_id));
        Some(cancel_requested)
    }

    /// A cancel request for job `id`: the answer, and the queue of a drive job made due.
    fn request_job_cancel(
        &mut self,
        id: JobId,
        now: Timestamp,
    ) -> Result<(JobCancel, Option<String>)> {
        let Some(row) = self.jobs.get(&id) else {
            return Err(Error::not_found(format!("no job {id}")));
        };
        // The drive job of a run that has not ended is cancelled through its run: a cancelled
        // (or cancel-flagged) drive job would leave the run without a driver.
        if !row.job.state.is_final()
            && let Some(run) = self.live_run_driven_by(id)
        {
            let (_, woken) = self.request_run_cancel(run, DRIVE_JOB_CANCEL_REASON, now)?;
            return Ok((JobCancel::Requested, woken));
        }
        self.unindex(id);
        let row = self.jobs.get_mut(&id).ok_or_else(|| Error::not_found(format!("no job {id}")))?;
        Ok((transition::request_job_cancel(&mut row.job, now), None))
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::{
        AttemptError, Clock, ErrorKind, Failure, FailureKind, LeaseToken, Outcome, RunAt, UniqueKey,
    };

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
        assert_eq!(store.request_job_cancel(id).await.unwrap(), JobCancel::Requested);
        let beat = store.heartbeat(&[lease(&claimed)], TTL).await.unwrap();
        assert_eq!((beat.renewed, beat.cancel_requested), (vec![id], vec![id]));
        let result = finish(&store, lease(&claimed), Outcome::Cancel).await;
        assert_eq!(result, FinishResult::Applied { state: JobState::Cancelled, dlq_id: None });
        let final_state = JobCancel::AlreadyFinal(JobState::Cancelled);
        assert_eq!(store.request_job_cancel(id).await.unwrap(), final_state);
    }

    #[tokio::test]
    async fn cancel_of_available_and_rescue_of_cancel_requested() {
        let (store, clock) = store();
        let ids = enqueue(&store, vec![job("a", 0), job("b", 0)]).await;
        assert_eq!(store.request_job_cancel(ids[0]).await.unwrap(), JobCancel::Cancelled);
        assert!(claim(&store, &["a"], 1).await.is_empty());
        claim_one(&store, &["b"]).await;
        assert_eq!(store.request_job_cancel(ids[1]).await.unwrap(), JobCancel::Requested);
        clock.advance(TTL);
        assert_eq!(store.rescue_expired(10).await.unwrap().cancelled, [ids[1]]);
        let job = store.get_job(ids[1]).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.lease, job.cancel_requested),
            (JobState::Cancelled, None, false)
        );
        let err = store.request_job_cancel(JobId::new()).await.unwrap_err();
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
