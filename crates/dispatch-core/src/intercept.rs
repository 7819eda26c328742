//! A store that forwards every call to another store, with an [`Interceptor`] on each side of
//! the call.
//!
//! Tests and tools that need a store which counts, delays or fails calls write an
//! [`Interceptor`] (a few lines) and wrap the real store in [`Intercepted`]; the forwarding of
//! every trait method lives here once, so a new store method is added in one place. An
//! interceptor sees which call is made ([`Call`]), may fail it before it reaches the store, and
//! sees the store's reply ([`Reply`]) before the caller does, which it may replace with an error
//! (an ambiguous failure: applied, then reported as failed).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{
    Leader, LeaderWrite, SweepReport, WorkerHeartbeat, WorkerRecord, WorkerRegistration,
};
use crate::cron::{CronEntry, CronFilter, CronFire, CronFireOutcome, CronRecord, DueCron};
use crate::dlq::{DlqCount, DlqEntry, DlqFilter, Replay, ReplayOptions};
use crate::error::{Error, Result};
use crate::flow::{ProgressUpdate, QueueConfig, QueueFlow};
use crate::id::WorkerId;
use crate::id::{CronId, DlqId, JobId, RunId};
use crate::job::{
    ClaimRequest, ClaimedJob, Enqueued, Finish, FinishResult, HeartbeatReport, Job, JobCancel,
    JobFilter, LeaseRef, LeaseToken, NewJob, QueueCount, RescueReport,
};
use crate::page::{Page, PageRequest};
use crate::retention::{PruneReport, RetentionPolicy};
use crate::scope::Scope;
use crate::store::{
    CronStore, DlqStore, FlowStore, JobStore, LeadershipStore, MembershipStore, RetentionStore,
    WorkflowStore,
};
use crate::time::Timestamp;
use crate::wake::{ListenerState, WakeupStream};
use crate::workflow::{
    Checkpoint, NewCheckpoint, NewEvent, NewRun, Published, Run, RunCancel, RunEnd, RunFilter,
    RunSnapshot, Started, Suspend, SuspendOutcome, WaitResolution,
};

/// Which store method a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallKind {
    /// [`JobStore::enqueue`].
    Enqueue,
    /// [`JobStore::claim`].
    Claim,
    /// [`JobStore::finish`] (and [`JobStore::release`], which is a finish).
    Finish,
    /// [`JobStore::heartbeat`].
    Heartbeat,
    /// [`JobStore::release_claim`].
    ReleaseClaim,
    /// [`JobStore::request_job_cancel`].
    RequestCancel,
    /// [`JobStore::rescue_expired`].
    Rescue,
    /// [`JobStore::next_due`].
    NextDue,
    /// A lookup: `get_job`, `list_jobs`, `count_jobs`, `list_dlq`, `get_dlq`, `get_run`,
    /// `list_runs`, `checkpoints`.
    Read,
    /// A DLQ change: [`DlqStore::replay_dlq`], [`DlqStore::replay_dlq_matching`] or
    /// [`DlqStore::purge_dlq`].
    Dlq,
    /// A cron entry change: `save_cron`, `set_cron_enabled`, `delete_cron` (a fire is leader
    /// work: [`CallKind::Leadership`]).
    Cron,
    /// A flow control change: `set_queue_config`, `delete_queue_config`, `set_paused`,
    /// `record_progress`.
    Flow,
    /// A run started, an event published, or a run cancelled, replayed or migrated.
    Run,
    /// A fenced call of a drive: `load_snapshot`, `save_checkpoints`, `suspend_run`, `resolve_wait`,
    /// `end_run`.
    Drive,
    /// A worker registry call: `register_worker`, `heartbeat_worker`, `drain_worker`,
    /// `deregister_worker`, `list_workers`.
    Membership,
    /// A leadership call, or leader work fenced by a term (`sweep_workers`, `prune`,
    /// `fire_cron`).
    Leadership,
}

/// One call about to reach the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Which method.
    pub kind: CallKind,
    /// How many items it carries: jobs to enqueue, the claim's limit, finishes, leases to renew,
    /// checkpoints; 1 for a call about one thing.
    pub items: usize,
}

impl Call {
    fn new(kind: CallKind, items: usize) -> Self {
        Self { kind, items }
    }

    fn one(kind: CallKind) -> Self {
        Self { kind, items: 1 }
    }
}

/// The store's answer to a call, as an interceptor sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// The call failed.
    Failed(&'a Error),
    /// A claim's jobs.
    Claimed(&'a [ClaimedJob]),
    /// A finish's results, one per item.
    Finished(&'a [FinishResult]),
    /// A heartbeat's report.
    Heartbeat(&'a HeartbeatReport),
    /// Any other successful call.
    Done,
}

/// What an [`Intercepted`] store does around each call. Both methods default to doing nothing.
#[async_trait]
pub trait Interceptor: Send + Sync + 'static {
    /// Before the call reaches the store. An error fails the call without reaching the store.
    async fn before(&self, call: Call) -> Result<()> {
        let _ = call;
        Ok(())
    }

    /// After the store answered, before the caller sees it. An error replaces the answer: the
    /// store applied the call (when it succeeded) but the caller is told it failed.
    async fn after(&self, call: Call, reply: Reply<'_>) -> Result<()> {
        let _ = (call, reply);
        Ok(())
    }
}

/// A store forwarding every call to `inner`, through an [`Interceptor`]. It implements each
/// store trait that `S` implements: wrap an `Arc<dyn JobStore>` and it is a job store, wrap an
/// `Arc<dyn WorkflowStore>` and it is a workflow store too.
pub struct Intercepted<S: ?Sized, I> {
    inner: Arc<S>,
    interceptor: I,
}

impl<S: ?Sized, I: Interceptor> Intercepted<S, I> {
    /// Wrap `inner`.
    pub fn new(inner: Arc<S>, interceptor: I) -> Self {
        Self { inner, interceptor }
    }

    /// The interceptor (to read what it counted, or change what it does).
    pub fn interceptor(&self) -> &I {
        &self.interceptor
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Run `call` on the inner store between the interceptor's two sides.
    async fn around<T, F>(&self, call: Call, on: F, reply: fn(&T) -> Reply<'_>) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send,
        T: Send,
    {
        self.interceptor.before(call).await?;
        let result = on.await;
        let seen = match &result {
            Ok(value) => reply(value),
            Err(error) => Reply::Failed(error),
        };
        self.interceptor.after(call, seen).await?;
        result
    }
}

fn done<T>(_: &T) -> Reply<'_> {
    Reply::Done
}

impl<S: ?Sized, I> std::fmt::Debug for Intercepted<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted").finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: JobStore + ?Sized, I: Interceptor> JobStore for Intercepted<S, I> {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let call = Call::new(CallKind::Enqueue, jobs.len());
        self.around(call, self.inner.enqueue(jobs), done).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let call = Call::new(CallKind::Claim, request.limit);
        self.around(call, self.inner.claim(request), |jobs| Reply::Claimed(jobs)).await
    }
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        let call = Call::new(CallKind::Finish, finishes.len());
        self.around(call, self.inner.finish(finishes), |results| Reply::Finished(results)).await
    }
    async fn release(&self, leases: &[LeaseRef]) -> Result<Vec<FinishResult>> {
        let call = Call::new(CallKind::Finish, leases.len());
        self.around(call, self.inner.release(leases), |results| Reply::Finished(results)).await
    }
    async fn release_claim(&self, token: LeaseToken) -> Result<usize> {
        let call = Call::one(CallKind::ReleaseClaim);
        self.around(call, self.inner.release_claim(token), done).await
    }
    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let call = Call::new(CallKind::Heartbeat, leases.len());
        self.around(call, self.inner.heartbeat(leases, ttl), |report| Reply::Heartbeat(report))
            .await
    }
    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        self.around(Call::one(CallKind::RequestCancel), self.inner.request_job_cancel(id), done)
            .await
    }
    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let call = Call::new(CallKind::Rescue, limit);
        self.around(call, self.inner.rescue_expired(limit), done).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.around(Call::one(CallKind::Read), self.inner.get_job(id), done).await
    }
    async fn list_jobs(&self, f: &JobFilter, p: &PageRequest<JobId>) -> Result<Page<Job, JobId>> {
        self.around(Call::one(CallKind::Read), self.inner.list_jobs(f, p), done).await
    }
    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.around(Call::one(CallKind::Read), self.inner.count_jobs(), done).await
    }
    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        self.around(Call::one(CallKind::NextDue), self.inner.next_due(queues, names), done).await
    }
    fn wakeups(&self) -> Option<WakeupStream> {
        self.inner.wakeups()
    }
    fn listener_state(&self) -> Option<ListenerState> {
        self.inner.listener_state()
    }
}

#[async_trait]
impl<S: DlqStore + ?Sized, I: Interceptor> DlqStore for Intercepted<S, I> {
    async fn list_dlq(
        &self,
        f: &DlqFilter,
        p: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        self.around(Call::one(CallKind::Read), self.inner.list_dlq(f, p), done).await
    }
    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.around(Call::one(CallKind::Read), self.inner.get_dlq(id), done).await
    }
    async fn count_dlq(&self, f: &DlqFilter) -> Result<Vec<DlqCount>> {
        self.around(Call::one(CallKind::Read), self.inner.count_dlq(f), done).await
    }
    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        self.around(Call::one(CallKind::Dlq), self.inner.replay_dlq(id, options), done).await
    }
    async fn replay_dlq_matching(
        &self,
        f: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        let on = self.inner.replay_dlq_matching(f, options, limit);
        self.around(Call::new(CallKind::Dlq, limit), on, done).await
    }
    async fn purge_dlq(&self, f: &DlqFilter, limit: usize) -> Result<u64> {
        self.around(Call::new(CallKind::Dlq, limit), self.inner.purge_dlq(f, limit), done).await
    }
}

#[async_trait]
impl<S: WorkflowStore + ?Sized, I: Interceptor> WorkflowStore for Intercepted<S, I> {
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started> {
        self.around(Call::one(CallKind::Run), self.inner.start_run(run, drive), done).await
    }
    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.around(Call::one(CallKind::Read), self.inner.get_run(id), done).await
    }
    async fn list_runs(&self, f: &RunFilter, p: &PageRequest<RunId>) -> Result<Page<Run, RunId>> {
        self.around(Call::one(CallKind::Read), self.inner.list_runs(f, p), done).await
    }
    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        self.around(Call::one(CallKind::Read), self.inner.get_checkpoints(run), done).await
    }
    async fn load_snapshot(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        self.around(Call::one(CallKind::Drive), self.inner.load_snapshot(lease, run), done).await
    }
    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        let call = Call::new(CallKind::Drive, checkpoints.len());
        self.around(call, self.inner.save_checkpoints(lease, run, checkpoints), done).await
    }
    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        self.around(Call::one(CallKind::Drive), self.inner.suspend_run(lease, suspend), done).await
    }
    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        let call = Call::one(CallKind::Drive);
        self.around(call, self.inner.resolve_wait(lease, run, key), done).await
    }
    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        self.around(Call::one(CallKind::Drive), self.inner.end_run(lease, run, end), done).await
    }
    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        self.around(Call::one(CallKind::Run), self.inner.publish_event(event), done).await
    }
    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        self.around(Call::one(CallKind::Run), self.inner.request_run_cancel(id, reason), done).await
    }
    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()> {
        self.around(Call::one(CallKind::Run), self.inner.rewind_run(id, key), done).await
    }
    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        let call = Call::one(CallKind::Run);
        self.around(call, self.inner.migrate_run(id, version, drive_job_name), done).await
    }
}

#[async_trait]
impl<S: MembershipStore + ?Sized, I: Interceptor> MembershipStore for Intercepted<S, I> {
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord> {
        self.around(Call::one(CallKind::Membership), self.inner.register_worker(worker), done).await
    }
    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat> {
        let call = Call::new(CallKind::Heartbeat, leases.len());
        let on = self.inner.heartbeat_worker(worker, leases, lease_ttl);
        self.around(call, on, |beat| Reply::Heartbeat(&beat.leases)).await
    }
    async fn drain_worker(&self, worker: WorkerId) -> Result<()> {
        self.around(Call::one(CallKind::Membership), self.inner.drain_worker(worker), done).await
    }
    async fn deregister_worker(&self, worker: WorkerId) -> Result<()> {
        let call = Call::one(CallKind::Membership);
        self.around(call, self.inner.deregister_worker(worker), done).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.around(Call::one(CallKind::Membership), self.inner.list_workers(), done).await
    }
    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport> {
        let call = Call::new(CallKind::Leadership, limit);
        self.around(call, self.inner.sweep_workers(term, timeout, limit), done).await
    }
}

#[async_trait]
impl<S: LeadershipStore + ?Sized, I: Interceptor> LeadershipStore for Intercepted<S, I> {
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let on = self.inner.acquire_leadership(name, holder, ttl);
        self.around(Call::one(CallKind::Leadership), on, done).await
    }
    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        let on = self.inner.renew_leadership(term, ttl);
        self.around(Call::one(CallKind::Leadership), on, done).await
    }
    async fn resign_leadership(&self, term: &Leader) -> Result<()> {
        let on = self.inner.resign_leadership(term);
        self.around(Call::one(CallKind::Leadership), on, done).await
    }
    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader> {
        let on = self.inner.take_leadership(name, holder, ttl);
        self.around(Call::one(CallKind::Leadership), on, done).await
    }
    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        self.around(Call::one(CallKind::Read), self.inner.leader(name), done).await
    }
    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>> {
        self.around(Call::one(CallKind::Read), self.inner.leader_writes(name, limit), done).await
    }
}

#[async_trait]
impl<S: RetentionStore + ?Sized, I: Interceptor> RetentionStore for Intercepted<S, I> {
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport> {
        let call = Call::new(CallKind::Leadership, limit);
        self.around(call, self.inner.prune(term, policy, limit), done).await
    }
}

#[async_trait]
impl<S: CronStore + ?Sized, I: Interceptor> CronStore for Intercepted<S, I> {
    async fn save_cron(
        &self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        self.around(Call::one(CallKind::Cron), self.inner.save_cron(entry, next_fire), done).await
    }
    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>> {
        self.around(Call::one(CallKind::Read), self.inner.get_cron(id), done).await
    }
    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        self.around(Call::one(CallKind::Read), self.inner.find_cron(scope, name), done).await
    }
    async fn list_cron(
        &self,
        f: &CronFilter,
        p: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        self.around(Call::one(CallKind::Read), self.inner.list_cron(f, p), done).await
    }
    async fn set_cron_enabled(
        &self,
        id: CronId,
        enabled: bool,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let on = self.inner.set_cron_enabled(id, enabled, next_fire);
        self.around(Call::one(CallKind::Cron), on, done).await
    }
    async fn delete_cron(&self, id: CronId) -> Result<bool> {
        self.around(Call::one(CallKind::Cron), self.inner.delete_cron(id), done).await
    }
    async fn due_cron(&self, limit: usize) -> Result<DueCron> {
        self.around(Call::new(CallKind::Read, limit), self.inner.due_cron(limit), done).await
    }
    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>> {
        let call = Call::new(CallKind::Leadership, fires.len());
        self.around(call, self.inner.fire_cron(term, fires), done).await
    }
}

#[async_trait]
impl<S: FlowStore + ?Sized, I: Interceptor> FlowStore for Intercepted<S, I> {
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow> {
        self.around(Call::one(CallKind::Flow), self.inner.set_queue_config(config), done).await
    }
    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>> {
        self.around(Call::one(CallKind::Read), self.inner.queue_flow(queue), done).await
    }
    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>> {
        self.around(Call::one(CallKind::Read), self.inner.list_queue_flows(), done).await
    }
    async fn delete_queue_config(&self, queue: &str) -> Result<bool> {
        self.around(Call::one(CallKind::Flow), self.inner.delete_queue_config(queue), done).await
    }
    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        let on = self.inner.set_paused(queue, name, paused);
        self.around(Call::one(CallKind::Flow), on, done).await
    }
    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>> {
        let call = Call::new(CallKind::Flow, updates.len());
        self.around(call, self.inner.record_progress(updates), done).await
    }
}
