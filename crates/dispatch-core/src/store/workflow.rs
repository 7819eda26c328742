//! [`WorkflowStore`]: the contract of a store that keeps workflow runs.

use async_trait::async_trait;

use crate::error::Result;
use crate::id::RunId;
use crate::job::{LeaseRef, NewJob};
use crate::page::{Page, PageRequest};
use crate::store::job::JobStore;
use crate::workflow::{
    Checkpoint, NewCheckpoint, NewEvent, NewRun, Published, Run, RunCancel, RunEnd, RunFilter,
    RunSnapshot, Started, Suspend, SuspendOutcome, WaitResolution,
};

/// Where workflow runs live. A workflow store is also a [`JobStore`]: runs are advanced by drive
/// jobs of the same store, and a start, a suspend or a drive job's death changes a run and a job
/// in one operation. A finish or rescue that kills a drive job (out of attempts) fails its run
/// in that operation, with the job's last error, and removes the run's waits; a run that has
/// already ended stays as it ended. A store that pushes wake-ups ([`JobStore::wakeups`]) wakes
/// the drive job's queue after a start and after a delivery, as after an enqueue. The
/// conformance suite's `workflow` and `runs` tests pin it.
#[async_trait]
pub trait WorkflowStore: JobStore {
    /// Create `run` and its drive job `drive` in one operation (the run's `drive_job` is
    /// `drive.id`). With an idempotency key already used for this workflow name, nothing is
    /// created and the existing run is returned. `drive` is validated like an enqueue, the
    /// input against the payload limit ([`NewRun::validate`]).
    ///
    /// Retries are safe: when run `run.id` is stored with the same workflow name and input and
    /// with `drive.id` as its drive job, the call is a retried start (an earlier call committed,
    /// its answer was lost): it answers [`Started::Created`], as the first did, and changes
    /// nothing. A stored run ID that differs in any of these, or a drive job ID already stored
    /// for another run, fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) and
    /// creates nothing; so does a drive job whose unique key another job holds (a start is never
    /// a duplicate).
    async fn start_run(&self, run: NewRun, drive: NewJob) -> Result<Started>;

    /// One run by ID.
    async fn get_run(&self, id: RunId) -> Result<Option<Run>>;

    /// Runs matching `filter`, in ID order (creation order), after the page's cursor.
    async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>>;

    /// The run's checkpoints in write order , without the fence of a drive.
    /// `NotFound` for an unknown run.
    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>>;

    /// Begin a drive: the run and all its checkpoints in one read; a suspended run becomes
    /// running. Fenced by the drive job's lease: `LeaseLost` when `lease` does not hold the
    /// run's drive job; `NotFound` for an unknown run.
    async fn load_snapshot(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot>;

    /// Write checkpoints (inserting or replacing by key, in the order given: a key listed twice
    /// keeps its first place and its later data), in one operation. Fenced like
    /// [`load_snapshot`](Self::load_snapshot); nothing is written when the lease does not hold, or when
    /// one checkpoint is over the payload limit ([`NewCheckpoint::validate`]).
    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()>;

    /// Suspend the run (see the [module docs](self)). In one operation: `CancelRequested` when
    /// the run has a cancel request; else `Delivered` when one of the waits already has its
    /// checkpoint (delivered while the run was being driven) or a stored event is delivered to
    /// one of them now; else the listed waits become the run's only waits, the run is marked
    /// suspended and the drive job finished as a snooze until [`Suspend::wake_at`]. Waits are
    /// keyed by their checkpoint key: of a key listed twice, the last wait is registered.
    /// `InvalidInput` when there is nothing to wake for. Fenced.
    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome>;

    /// Settle the wait whose checkpoint key is `key`: `Delivered` with the payload when an event
    /// reached it, else remove it (no event can reach it any more) and answer `TimedOut`.
    /// Fenced.
    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution>;

    /// End the run: its state, output or error, its finish time; its remaining waits are
    /// removed. Fenced. The drive job is finished by the runtime as usual.
    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()>;

    /// Publish an event (see the [module docs](self)). Its payload is checked against the payload
    /// limit first ([`NewEvent::validate`]). `keep_for` saturates: a huge duration keeps the
    /// event until the end of time, never fails. Each run appears once in
    /// [`Published::delivered_to`], even when a broadcast reached several of its waits.
    /// Scopes match part by part: an unset app or tenant matches only an unset one. A delivery
    /// to a run whose drive job is running writes the wait's checkpoint and leaves the job and
    /// its lease alone (the drive finds it at its suspend or `resolve_wait`). A kept event
    /// expires when the store's clock reaches its publish time plus `keep_for`: a `keep_for` of
    /// zero keeps nothing (`kept` is false).
    async fn publish_event(&self, event: NewEvent) -> Result<Published>;

    /// Ask run `id` to stop, for `reason`: recorded on the run (`cancel_requested`; a second
    /// request keeps the first reason), and when its drive job waits (the run is suspended) the
    /// job is made due at once. A drive learns of it from `load_snapshot`, `suspend_run`
    /// ([`SuspendOutcome::CancelRequested`]) and by reading the run. `NotFound` for an unknown
    /// run. The job-level cancel of the drive job is not used: a cancelled drive job would leave
    /// its run without a driver. [`JobStore::request_job_cancel`]
    /// of the drive job of a run that has not ended comes here (with reason
    /// [`DRIVE_JOB_CANCEL_REASON`](crate::DRIVE_JOB_CANCEL_REASON)) instead of cancelling the job.
    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel>;

    /// Debugging: rewind run `id` to its checkpoint `key`. Checkpoints written after `key` are
    /// dropped (`key` itself is kept), the run becomes running again (output, error, finish time
    /// and cancel request cleared; same version) and its drive job is re-armed: available at
    /// once, attempts reset, lease cleared. `NotFound` for an unknown run or key; `Conflict`
    /// while a drive holds the run (its drive job is running).
    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()>;

    /// Move run `id` to `version`, whose drive jobs are named `drive_job_name`. Its checkpoints
    /// are kept; the run becomes running again when it had failed or been cancelled (error and
    /// finish time cleared) and its drive job is renamed and re-armed as for
    /// [`rewind_run`](Self::rewind_run); a suspended run keeps its wake time. `NotFound` for an
    /// unknown run; `Conflict` while a drive holds the run, or when it completed.
    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()>;
}
