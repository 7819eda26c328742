//! Helpers the suite tests share: job builders, claim requests and calls that expect success.

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, DlqEntry, DlqFilter, DlqId, ErrorKind, Failure, FailureKind, Finish,
    FinishResult, Job, JobFilter, JobId, JobStore, LeaseRef, LeaseToken, NewJob, Outcome,
    PageRequest, RunAt, WorkerId,
};

use dispatch_core::Clock as _;

use crate::TestContext;

/// The lease every claim in the suite takes unless a test says otherwise.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// Just past [`TTL`]: advancing this far makes a fresh lease rescuable.
pub(crate) const PAST_TTL: Duration = Duration::from_millis(30_001);

/// Shorthand for a duration in seconds.
pub(crate) const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Shorthand for a duration in milliseconds.
pub(crate) const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A job of `name` in the default queue with a small JSON payload and default options.
pub(crate) fn job(name: &str) -> NewJob {
    NewJob::new(name, b"{}".to_vec())
}

/// A job of `name` in `queue`.
pub(crate) fn job_in(name: &str, queue: &str) -> NewJob {
    let mut job = job(name);
    job.queue = queue.to_owned();
    job
}

/// A claim by a fresh worker of up to `limit` jobs of `names` from `queues`, leased for [`TTL`].
pub(crate) fn request_in(queues: &[&str], names: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: queues.iter().map(|&q| q.to_owned()).collect(),
        names: names.iter().map(|&n| n.to_owned()).collect(),
        limit,
        lease_ttl: TTL,
        token: LeaseToken::new(),
    }
}

/// A claim of up to `limit` jobs of `names` from the default queue.
pub(crate) fn request(names: &[&str], limit: usize) -> ClaimRequest {
    request_in(&[dispatch_core::job::DEFAULT_QUEUE], names, limit)
}

/// A failure of kind [`FailureKind::Error`] with `message`.
pub(crate) fn failure(message: &str) -> Failure {
    Failure::new(FailureKind::Error, message)
}

/// A retry after `delay` with an error `message`.
pub(crate) fn retry(message: &str, delay: Duration) -> Outcome {
    Outcome::Retry { failure: failure(message), run_at: RunAt::After(delay) }
}

/// The lease reference of a claimed job.
pub(crate) fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

/// The set of job IDs in `claimed`.
pub(crate) fn ids(claimed: &[ClaimedJob]) -> HashSet<JobId> {
    claimed.iter().map(|c| c.job.id).collect()
}

impl<S: JobStore + ?Sized> TestContext<S> {
    /// Enqueue `jobs`, every one expected to be created; their IDs, in order.
    pub(crate) async fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<JobId> {
        let expected: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let results = self.store.enqueue(jobs).await.expect("enqueue");
        let got: Vec<JobId> = results
            .iter()
            .map(|r| {
                assert!(!r.is_duplicate(), "enqueue: expected every job created, got {results:?}");
                r.id()
            })
            .collect();
        assert_eq!(got, expected, "enqueue: one result per job, in order, with the job's own ID");
        got
    }

    /// Enqueue one job, expected to be created; its ID.
    pub(crate) async fn enqueue_one(&self, job: NewJob) -> JobId {
        self.enqueue(vec![job]).await[0]
    }

    /// Run a claim, expected to succeed.
    pub(crate) async fn claim_with(&self, request: &ClaimRequest) -> Vec<ClaimedJob> {
        self.store.claim(request).await.expect("claim")
    }

    /// Claim up to `limit` jobs of `names` from the default queue.
    pub(crate) async fn claim(&self, names: &[&str], limit: usize) -> Vec<ClaimedJob> {
        self.claim_with(&request(names, limit)).await
    }

    /// Claim exactly one job of `name` from the default queue.
    pub(crate) async fn claim_one(&self, name: &str) -> ClaimedJob {
        let mut claimed = self.claim(&[name], 1).await;
        assert_eq!(claimed.len(), 1, "expected one claimable {name:?} job at {}", self.clock.now());
        claimed.remove(0)
    }

    /// Assert that no job of `name` in the default queue is claimable now.
    pub(crate) async fn claim_none(&self, name: &str) {
        let claimed = self.claim(&[name], 100).await;
        assert!(
            claimed.is_empty(),
            "expected no claimable {name:?} job at {}, claimed {:?}",
            self.clock.now(),
            claimed.iter().map(|c| c.job.id).collect::<Vec<_>>()
        );
    }

    /// Finish one lease with `outcome`.
    pub(crate) async fn finish(&self, lease: LeaseRef, outcome: Outcome) -> FinishResult {
        let results = self.store.finish(&[Finish { lease, outcome }]).await.expect("finish");
        assert_eq!(results.len(), 1, "finish: one result per item");
        results[0]
    }

    /// The stored job, expected to exist.
    pub(crate) async fn job(&self, id: JobId) -> Job {
        self.store.get_job(id).await.expect("get_job").unwrap_or_else(|| panic!("job {id} is gone"))
    }

    /// The stored DLQ entry, expected to exist.
    pub(crate) async fn dlq(&self, id: DlqId) -> DlqEntry {
        self.store
            .get_dlq(id)
            .await
            .expect("get_dlq")
            .unwrap_or_else(|| panic!("entry {id} is gone"))
    }

    /// Enqueue a one-attempt job of `name` in `queue`, claim it and fail it: its job ID and DLQ
    /// entry ID.
    pub(crate) async fn kill(&self, name: &str, queue: &str) -> (JobId, DlqId) {
        let mut new = job_in(name, queue);
        new.max_attempts = 1;
        let id = self.enqueue_one(new).await;
        let claimed = self.claim_with(&request_in(&[queue], &[name], 1)).await;
        assert_eq!(ids(&claimed), HashSet::from([id]), "claim the job to kill");
        let result =
            self.finish(lease(&claimed[0]), Outcome::Fail { failure: failure("dead") }).await;
        let FinishResult::Applied { state: dispatch_core::JobState::Dead, dlq_id: Some(dlq_id) } =
            result
        else {
            panic!("a failed job is dead with a DLQ entry, got {result:?}");
        };
        (id, dlq_id)
    }

    /// Every job matching `filter`, read page by page.
    pub(crate) async fn list_all(&self, filter: &JobFilter) -> Vec<Job> {
        let mut out = Vec::new();
        let mut page = PageRequest::first(1000);
        loop {
            let got = self.store.list_jobs(filter, &page).await.expect("list_jobs");
            out.extend(got.items.iter().cloned());
            match PageRequest::next_of(&got, 1000) {
                Some(next) => page = next,
                None => return out,
            }
        }
    }

    /// Every DLQ entry matching `filter`, read page by page.
    pub(crate) async fn list_dlq_all(&self, filter: &DlqFilter) -> Vec<DlqEntry> {
        let mut out = Vec::new();
        let mut page = PageRequest::first(1000);
        loop {
            let got = self.store.list_dlq(filter, &page).await.expect("list_dlq");
            out.extend(got.items.iter().cloned());
            match PageRequest::next_of(&got, 1000) {
                Some(next) => page = next,
                None => return out,
            }
        }
    }
}

/// Assert that `result` is an error of `kind`.
pub(crate) fn assert_kind<T: std::fmt::Debug>(
    result: dispatch_core::Result<T>,
    kind: ErrorKind,
    what: &str,
) {
    match result {
        Ok(value) => panic!("{what}: expected a {kind} error, got Ok({value:?})"),
        Err(err) => assert_eq!(err.kind(), kind, "{what}: wrong error kind: {err}"),
    }
}

/// A store handle that can be moved into a spawned task.
pub(crate) fn share<S: ?Sized>(store: &std::sync::Arc<S>) -> std::sync::Arc<S> {
    std::sync::Arc::clone(store)
}

/// How long a wake-up may take to arrive (a remote store's notification round trip included).
const WAKE_WITHIN: Duration = Duration::from_secs(10);

/// The next wake-up on `stream` that concerns `queue`, failing the test past [`WAKE_WITHIN`].
pub(crate) async fn next_for(
    stream: &mut dispatch_core::WakeupStream,
    queue: &str,
) -> dispatch_core::Wakeup {
    use futures::StreamExt as _;
    let queues = [queue.to_owned()];
    let wait = async {
        loop {
            match stream.next().await {
                Some(wakeup) if wakeup.concerns(&queues) => return wakeup,
                Some(_) => {}
                None => panic!("the wake-up stream ended while the store is alive"),
            }
        }
    };
    tokio::time::timeout(WAKE_WITHIN, wait)
        .await
        .unwrap_or_else(|_| panic!("no wake-up for queue {queue:?} within {WAKE_WITHIN:?}"))
}
