//! Fixtures for tests that drive the runtime over a store: polling against a deadline, a hook
//! that records events, a hook that panics, and a store wrapper that counts (and can fail) calls.
//! Used by the runtime scenarios of this crate and by `dispatch-job`'s own tests.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    CancelResult, ClaimRequest, ClaimedJob, DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore,
    DynStore, Enqueued, Event, Finish, FinishResult, HeartbeatReport, Hook, Job, JobFilter, JobId,
    JobState, JobStore, LeaseRef, NewJob, Page, PageRequest, QueueCount, Replay, RescueReport,
    Result,
};
use dispatch_core::{
    Checkpoint, NewCheckpoint, NewEvent, NewRun, Published, Run, RunCancel, RunEnd, RunFilter,
    RunId, RunSnapshot, Started, Suspend, SuspendOutcome, WaitResolution, WorkflowStore,
};
use parking_lot::Mutex;

/// Poll `check` every 5 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until job `id` is in `state`; returns it.
pub async fn wait_for_state(store: &DynStore, id: JobId, state: JobState) -> Job {
    eventually(&format!("job {id} to be {state}"), Duration::from_secs(60), || async {
        store.get_job(id).await.expect("get_job").filter(|job| job.state == state)
    })
    .await
}

/// A hook that records every event.
#[derive(Clone, Default)]
pub struct Recorder {
    /// Every event, in delivery order.
    pub events: Arc<Mutex<Vec<Event>>>,
}

#[async_trait]
impl Hook for Recorder {
    async fn on_event(&self, event: &Event) {
        self.events.lock().push(event.clone());
    }
}

impl Recorder {
    /// The recorded events about job `id`.
    pub fn for_job(&self, id: JobId) -> Vec<Event> {
        self.events.lock().iter().filter(|e| e.job().is_some_and(|j| j.id == id)).cloned().collect()
    }
}

/// A hook that panics on every event.
pub struct PanickingHook;

#[async_trait]
impl Hook for PanickingHook {
    async fn on_event(&self, _event: &Event) {
        panic!("this hook always panics");
    }
}

/// A store that counts the calls made through it.
pub struct CountingStore {
    inner: DynStore,
    /// The limit of every claim, in order.
    pub claim_limits: Mutex<Vec<usize>>,
    /// The number of leases in every heartbeat, in order.
    pub heartbeats: Mutex<Vec<usize>>,
    /// Finish calls made.
    pub finishes: AtomicUsize,
    /// `next_due` calls answered: each is an idle fetch loop about to sleep.
    pub next_dues: AtomicUsize,
    /// Calls a workflow drive makes: load, save checkpoints, suspend, resolve a wait, end.
    pub drive_calls: AtomicUsize,
    /// When set, heartbeats fail as if the store were unreachable.
    pub fail_heartbeats: AtomicBool,
}

impl CountingStore {
    /// Wrap `inner`.
    pub fn new(inner: DynStore) -> Arc<Self> {
        Arc::new(Self {
            inner,
            claim_limits: Mutex::default(),
            heartbeats: Mutex::default(),
            finishes: AtomicUsize::new(0),
            next_dues: AtomicUsize::new(0),
            drive_calls: AtomicUsize::new(0),
            fail_heartbeats: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl JobStore for CountingStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.inner.enqueue(jobs).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_limits.lock().push(request.limit);
        self.inner.claim(request).await
    }
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        self.finishes.fetch_add(1, Ordering::SeqCst);
        self.inner.finish(finishes).await
    }
    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        self.heartbeats.lock().push(leases.len());
        if self.fail_heartbeats.load(Ordering::SeqCst) {
            return Err(dispatch_core::Error::unavailable("heartbeats are failing in this test"));
        }
        self.inner.heartbeat(leases, ttl).await
    }
    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        self.inner.request_cancel(id).await
    }
    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        self.inner.rescue_expired(limit).await
    }
    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        let due = self.inner.next_due(queues, names).await;
        self.next_dues.fetch_add(1, Ordering::SeqCst);
        due
    }
    fn wakeups(&self) -> Option<dispatch_core::WakeupStream> {
        self.inner.wakeups()
    }
    fn capabilities(&self) -> dispatch_core::Capabilities {
        self.inner.capabilities()
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.inner.get_job(id).await
    }
    async fn list_jobs(&self, f: &JobFilter, p: &PageRequest<JobId>) -> Result<Page<Job, JobId>> {
        self.inner.list_jobs(f, p).await
    }
    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.inner.count_jobs().await
    }
}

#[async_trait]
impl WorkflowStore for CountingStore {
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started> {
        self.inner.start_run(run, drive).await
    }
    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, f: &RunFilter, p: &PageRequest<RunId>) -> Result<Page<Run, RunId>> {
        self.inner.list_runs(f, p).await
    }
    async fn checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        self.inner.checkpoints(run).await
    }
    async fn load_run(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        self.drive_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load_run(lease, run).await
    }
    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        self.drive_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.save_checkpoints(lease, run, checkpoints).await
    }
    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        self.drive_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.suspend_run(lease, suspend).await
    }
    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.drive_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.resolve_wait(lease, run, key).await
    }
    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        self.drive_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.end_run(lease, run, end).await
    }
    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        self.inner.publish_event(event).await
    }
    async fn cancel_run(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        self.inner.cancel_run(id, reason).await
    }
    async fn replay_run(&self, id: RunId, key: &str) -> Result<()> {
        self.inner.replay_run(id, key).await
    }
    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        self.inner.migrate_run(id, version, drive_job_name).await
    }
}

#[async_trait]
impl DlqStore for CountingStore {
    async fn list_dlq(
        &self,
        f: &DlqFilter,
        p: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        self.inner.list_dlq(f, p).await
    }
    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.inner.get_dlq(id).await
    }
    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        self.inner.replay_dlq(id).await
    }
    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        self.inner.purge_dlq(filter).await
    }
}
