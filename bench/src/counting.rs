//! A store wrapper that tells when a number of jobs have been durably finished: the drain ends
//! when the store has applied the last finish, not when the last handler returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch::core::{
    CancelResult, ClaimRequest, ClaimedJob, DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore,
    DynStore, Enqueued, Finish, FinishResult, HeartbeatReport, Job, JobFilter, JobId, JobStore,
    LeaseRef, NewJob, Page, PageRequest, QueueCount, Replay, RescueReport, Result,
};
use dispatch::core::{
    Checkpoint, NewCheckpoint, NewEvent, NewRun, Published, Run, RunCancel, RunEnd, RunFilter,
    RunId, RunSnapshot, Started, Suspend, SuspendOutcome, WaitResolution, WorkflowStore,
};
use tokio::sync::Notify;

/// Counts applied finishes and wakes a waiter when `target` is reached.
pub struct FinishCounter {
    inner: DynStore,
    applied: AtomicUsize,
    target: usize,
    done: Notify,
    /// Claim calls made.
    pub claims: AtomicUsize,
    /// Jobs those calls returned.
    pub claimed: AtomicUsize,
    /// Finish calls made.
    pub finish_calls: AtomicUsize,
}

impl FinishCounter {
    /// Wrap `inner`, waiting for `target` applied finishes.
    pub fn new(inner: DynStore, target: usize) -> Arc<Self> {
        Arc::new(Self {
            inner,
            applied: AtomicUsize::new(0),
            target,
            done: Notify::new(),
            claims: AtomicUsize::new(0),
            claimed: AtomicUsize::new(0),
            finish_calls: AtomicUsize::new(0),
        })
    }

    /// Wait until `target` finishes have been applied.
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.applied.load(Ordering::SeqCst) >= self.target {
                return;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl JobStore for FinishCounter {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.inner.enqueue(jobs).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let jobs = self.inner.claim(request).await?;
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.claimed.fetch_add(jobs.len(), Ordering::Relaxed);
        Ok(jobs)
    }
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        self.finish_calls.fetch_add(1, Ordering::Relaxed);
        let results = self.inner.finish(finishes).await?;
        let applied = results.iter().filter(|r| matches!(r, FinishResult::Applied { .. })).count();
        if self.applied.fetch_add(applied, Ordering::SeqCst) + applied >= self.target {
            self.done.notify_waiters();
        }
        Ok(results)
    }
    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        self.inner.heartbeat(leases, ttl).await
    }
    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        self.inner.request_cancel(id).await
    }
    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        self.inner.rescue_expired(limit).await
    }
    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        self.inner.next_due(queues, names).await
    }
    fn wakeups(&self) -> Option<dispatch::core::WakeupStream> {
        self.inner.wakeups()
    }
    fn capabilities(&self) -> dispatch::core::Capabilities {
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
impl WorkflowStore for FinishCounter {
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
        self.inner.load_run(lease, run).await
    }
    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        self.inner.save_checkpoints(lease, run, checkpoints).await
    }
    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        self.inner.suspend_run(lease, suspend).await
    }
    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.inner.resolve_wait(lease, run, key).await
    }
    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
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
impl DlqStore for FinishCounter {
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
