//! [`JobStore`]: the contract of a job store.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::JobId;
use crate::job::{
    ClaimRequest, ClaimedJob, Enqueued, Finish, FinishResult, HeartbeatReport, Job, JobCancel,
    JobFilter, JobState, LeaseRef, LeaseToken, NewJob, Outcome, QueueCount, RescueReport,
};
use crate::page::{Page, PageRequest};
use crate::store::dlq::DlqStore;

/// Where jobs live. Batch-first: every hot-path call takes many items and is one round trip.
///
/// A job store is also its jobs' dead letter queue ([`DlqStore`]): a job dies and gets its DLQ
/// entry in one store operation, so the two can not be apart. This pair is all the job runtime
/// (`dispatch-job`) needs; workflows ask for [`WorkflowStore`](crate::WorkflowStore) on top.
/// Optional powers are provided methods a store may override: [`next_due`](Self::next_due)
/// (timely scheduled jobs), [`wakeups`](Self::wakeups) (push wake-ups) and
/// [`release_claim`](Self::release_claim) (one statement instead of a listing).
///
/// Implementations must uphold the guarantees in the [module docs](self) and pass the
/// `dispatch-store-tests` conformance suite. Every method has a timeout in the store: a hung
/// connection becomes [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), never a stall.
#[async_trait]
pub trait JobStore: DlqStore {
    /// Store new jobs. All items are validated first ([`NewJob::validate`] against the store's
    /// payload limit, [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::codec::DEFAULT_MAX_PAYLOAD_BYTES)
    /// unless the store lets its user set another); if any is invalid
    /// the call fails and nothing is stored. Returns one result per item, in order. A job whose
    /// unique key is held (by a stored job or an earlier item of the same batch) is not stored:
    /// its result is [`Enqueued::Duplicate`] with the holder's ID.
    ///
    /// Retries are safe: an item whose ID is already stored with the same name and payload is a
    /// retried enqueue (an earlier call committed, its answer was lost). It answers
    /// [`Enqueued::Created`] with its ID, as the first call did, and changes nothing (the stored
    /// job keeps its state and options; other options of the item are not compared, a relative
    /// run-at could not be). An item that was a duplicate the first time stored nothing, so its
    /// retry is decided again: a duplicate of the key's holder while the key is held. An ID
    /// stored with another name or payload (a reused ID), or an ID twice in the batch, fails the
    /// call with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) and stores nothing.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Claim up to `limit` available jobs whose run-at has come, from `queues`, of `names`:
    /// highest priority first, then earliest run-at, then enqueue order. Each claimed job becomes
    /// running under a lease with the request's token and spends one attempt. No job is
    /// returned to two claims while its lease is live.
    ///
    /// A store that keeps flow control ([`FlowStore`](crate::FlowStore)) claims a gated queue's
    /// jobs only as far as its gates admit them ([`flow::Admission`](crate::flow::Admission)),
    /// in the same operation, and never claims a paused queue's or name's jobs; a gated claim
    /// may then come back short while jobs are due.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>>;

    /// End attempts. Each item applies only while its token holds the job's lease; one result
    /// per item, in order. A job that becomes dead gets its DLQ entry in the same operation.
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>>;

    /// Extend leases by `ttl` from now. Reports which were renewed, which are lost, and which
    /// have a cancel request. A lease that has expired but has not been rescued still holds, so
    /// it is renewed.
    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport>;

    /// Ask for a job to be cancelled: at once when available, through its holder when running.
    /// Fails with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown ID.
    ///
    /// The drive job of a workflow run that has not ended is cancelled through its run: the call
    /// records the run's cancel request exactly as
    /// [`WorkflowStore::request_run_cancel`](crate::WorkflowStore::request_run_cancel) does (reason
    /// [`DRIVE_JOB_CANCEL_REASON`](crate::DRIVE_JOB_CANCEL_REASON); a reason already recorded
    /// is kept), making a waiting drive job due at once, and answers
    /// [`JobCancel::Requested`]. The drive job itself is neither cancelled nor flagged, so the
    /// run winds down (compensations, children) instead of losing its driver. A drive job whose
    /// run has ended is cancelled as any job, and a store that keeps no runs cancels every job as
    /// itself.
    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel>;

    /// Reclaim up to `limit` running jobs whose lease has expired, in one operation. Each records
    /// a [`FailureKind::LeaseExpired`](crate::FailureKind::LeaseExpired) error and keeps its attempt spent; it becomes cancelled when
    /// a cancel was requested, else dead with a DLQ entry when no attempts are left, else
    /// available at once. A lease that has expired but not been rescued still holds.
    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport>;

    /// One job by ID.
    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;

    /// Jobs matching `filter`, in ID order (creation order), after the page's cursor.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>>;

    /// The number of jobs per queue and state; pairs with no jobs are left out. Sorted by queue,
    /// then state in [`JobState`]'s order (the order of a job's life, not of the names).
    async fn count_jobs(&self) -> Result<Vec<QueueCount>>;

    /// Give leases back at shutdown: each job becomes available at once with its attempt
    /// returned. Shorthand for [`finish`](Self::finish) with [`Outcome::Release`].
    async fn release(&self, leases: &[LeaseRef]) -> Result<Vec<FinishResult>> {
        let finishes: Vec<Finish> =
            leases.iter().map(|&lease| Finish { lease, outcome: Outcome::Release }).collect();
        self.finish(&finishes).await
    }

    /// Give back every lease a claim with `token` wrote, as [`release`](Self::release) does
    /// (available at once, attempt returned): for a claim whose answer the worker never
    /// received. Answers how many were released; 0 when the claim wrote nothing or its leases
    /// have ended since. The default finds the leases by listing running jobs (one page of
    /// [`list_jobs`](Self::list_jobs) per 1,000); a store may answer it in one statement.
    async fn release_claim(&self, token: LeaseToken) -> Result<usize> {
        let filter = JobFilter { state: Some(JobState::Running), ..JobFilter::default() };
        let mut page = PageRequest::first(1000);
        let mut leases = Vec::new();
        loop {
            let found = self.list_jobs(&filter, &page).await?;
            leases.extend(found.items.iter().filter_map(|job| {
                job.lease
                    .filter(|lease| lease.token == token)
                    .map(|_| LeaseRef { job_id: job.id, token })
            }));
            match PageRequest::next_of(&found, 1000) {
                Some(next) => page = next,
                None => break,
            }
        }
        if leases.is_empty() {
            return Ok(0);
        }
        let results = self.release(&leases).await?;
        Ok(results.iter().filter(|r| matches!(r, FinishResult::Applied { .. })).count())
    }

    /// This store as a [`ClusterStore`](crate::ClusterStore) (worker registry and leader
    /// election), when it keeps one: every built-in store answers `Some(self)`, so a runtime
    /// holding an `Arc<dyn JobStore>` can join a cluster without the store's type. Default
    /// `None`.
    fn as_cluster_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::ClusterStore>> {
        None
    }

    /// This store as a [`RetentionStore`](crate::RetentionStore), when it prunes: every built-in
    /// store answers `Some(self)`. Default `None`.
    fn as_retention_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::RetentionStore>> {
        None
    }

    /// This store as a [`CronStore`](crate::CronStore), when it keeps cron entries: every
    /// built-in store answers `Some(self)`. Default `None`.
    fn as_cron_store(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn crate::CronStore>> {
        None
    }

    /// This store as a [`FlowStore`](crate::FlowStore), when it keeps flow control: every
    /// built-in store answers `Some(self)`. Default `None`.
    fn as_flow_store(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn crate::FlowStore>> {
        None
    }

    /// How long until the next available job of `queues` and `names` is due, by the store's
    /// clock: `Some(ZERO)` when one is due now, `None` when none is waiting. A worker whose claim
    /// came back short sleeps this long (at most its poll interval) instead of a whole poll
    /// interval, so scheduled jobs start on time. The default answers `None`, and workers fall
    /// back to polling.
    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        let _ = (queues, names);
        Ok(None)
    }

    /// A stream of push wake-ups for one worker, or `None` when the store can not push (workers
    /// then poll). `Some` is the store's promise that every call making jobs available (enqueue,
    /// retry, snooze, release, rescue, DLQ replay) is followed by a wake-up on each stream.
    fn wakeups(&self) -> Option<crate::WakeupStream> {
        None
    }

    /// The state of the connection that carries this store's [`wakeups`](Self::wakeups), or
    /// `None` when the store has no listener that can be lost (it pushes in-process, or does not
    /// push at all). A store whose wake-ups travel over a connection (PostgreSQL's `LISTEN`)
    /// answers `Some` from the first call on, connected or not, and sends [`Wakeup::any`] on each
    /// stream every time its listener (re)connects. Must be cheap: a snapshot of state the
    /// store keeps, no I/O. Workers read it for their readiness and health view.
    ///
    /// [`Wakeup::any`]: crate::Wakeup::any
    fn listener_state(&self) -> Option<crate::ListenerState> {
        None
    }
}
