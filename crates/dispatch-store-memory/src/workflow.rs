//! [`WorkflowStore`] for [`MemoryStore`]: short methods over the concern modules (`events`,
//! `rewind`, `run`), with starting, reading, loading, checkpointing and ending runs here. All of
//! it sits under the same mutex as the jobs, so a start (run + drive job) is one step.

use std::ops::Bound;

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Enqueued, Error, ErrorKind, JobId, LeaseRef, NewCheckpoint, NewEvent, NewJob,
    NewRun, Page, PageRequest, Published, Result, Run, RunCancel, RunEnd, RunFilter, RunId,
    RunSnapshot, RunState, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution,
    WorkflowStore,
};

use crate::run::{RunRow, end};
use crate::{MemoryStore, State};

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn start_run(&self, new: NewRun, drive: NewJob) -> Result<Started> {
        new.validate(self.max_payload_bytes)?;
        drive.validate(self.max_payload_bytes)?;
        let now = self.clock.now();
        let queue = drive.queue.clone();
        let started = self.state.lock().start_run(new, drive, now)?;
        if let Started::Created(_) = started {
            self.wakeups.notify([queue.as_str()]);
        }
        Ok(started)
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        Ok(self.state.lock().runs.runs.get(&id).map(|row| row.run.clone()))
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>> {
        let limit = page.effective_limit();
        let state = self.state.lock();
        let after = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let items = state
            .runs
            .runs
            .range((after, Bound::Unbounded))
            .map(|(_, row)| &row.run)
            .filter(|run| filter.state.is_none_or(|s| run.state == s))
            .filter(|run| filter.name.as_ref().is_none_or(|n| &run.name == n))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |run: &Run| run.id))
    }

    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        Ok(self.state.lock().runs.get_mut(run)?.checkpoints.clone())
    }

    async fn load_snapshot(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let row = state.fenced(lease, run)?;
        if row.run.state == RunState::Suspended {
            row.run.state = RunState::Running;
            row.run.waiting.clear();
            row.run.updated_at = now;
        }
        Ok(RunSnapshot { run: row.run.clone(), checkpoints: row.checkpoints.clone(), now })
    }

    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        NewCheckpoint::validate_all(&checkpoints, self.max_payload_bytes)?;
        let now = self.clock.now();
        let mut state = self.state.lock();
        // One lookup of the run: the fence answers its row.
        let row = state.fenced(lease, run)?;
        for checkpoint in checkpoints {
            row.write(checkpoint, now);
        }
        Ok(())
    }

    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        let now = self.clock.now();
        let wake_at = suspend.required_wake_at()?;
        self.state.lock().suspend(lease, suspend, wake_at, now)
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.state.lock().resolve_wait(lease, run, key)
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, how: RunEnd) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let row = state.fenced(lease, run)?;
        end(&mut row.run, how, now);
        state.runs.waits.retain(|_, w| w.run != run);
        Ok(())
    }

    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        let now = self.clock.now();
        let (cancel, woken) = self.state.lock().request_run_cancel(id, reason, now)?;
        self.wakeups.notify(woken.as_deref());
        Ok(cancel)
    }

    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()> {
        let now = self.clock.now();
        let queue = self.state.lock().rewind(id, key, now)?;
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        let now = self.clock.now();
        let queue = self.state.lock().migrate(id, version, drive_job_name, now)?;
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.max_payload_bytes)?;
        let now = self.clock.now();
        let published = self.state.lock().publish(event, now);
        if !published.delivered_to.is_empty() {
            self.wakeups.send(&dispatch_core::Wakeup::any());
        }
        Ok(published)
    }
}

impl State {
    /// Store run `new` and its drive job (see [`WorkflowStore::start_run`]).
    fn start_run(&mut self, new: NewRun, drive: NewJob, now: Timestamp) -> Result<Started> {
        if let Some(row) = self.runs.runs.get(&new.id) {
            // The same start again is a retried call: it answers as the first did and changes
            // nothing. Anything else under the run's ID is a reuse.
            if row.run.name == new.name
                && row.run.input == new.input
                && row.run.drive_job == drive.id
            {
                return Ok(Started::Created(new.id));
            }
            return Err(Error::new(ErrorKind::Conflict, format!("run {} already exists", new.id)));
        }
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = self.runs.by_key.get(&(new.name.clone(), key.clone()))
        {
            return Ok(Started::Existing(*existing));
        }
        let drive_job = self.enqueue_drive(drive, now)?;
        let run = new_run(new, drive_job, now);
        if let Some(key) = &run.idempotency_key {
            self.runs.by_key.insert((run.name.clone(), key.clone()), run.id);
        }
        self.runs.by_drive.insert(drive_job, run.id);
        let id = run.id;
        self.runs.runs.insert(id, RunRow { run, checkpoints: Vec::new() });
        Ok(Started::Created(id))
    }

    /// Store a new run's drive job; `Conflict` when its ID or unique key is taken.
    fn enqueue_drive(&mut self, drive: NewJob, now: Timestamp) -> Result<JobId> {
        if self.jobs.contains_key(&drive.id) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("the drive job's ID {} is already taken", drive.id),
            ));
        }
        match self.enqueue_one(drive, now) {
            Enqueued::Created(id) => Ok(id),
            Enqueued::Duplicate(holder) => Err(Error::new(
                ErrorKind::Conflict,
                format!("the drive job's unique key is held by job {holder}"),
            )),
        }
    }
}

/// The record of a run just started, driven by `drive_job`.
fn new_run(new: NewRun, drive_job: JobId, now: Timestamp) -> Run {
    Run {
        id: new.id,
        name: new.name,
        version: new.version,
        state: RunState::Running,
        input: new.input,
        output: None,
        error: None,
        scope: new.scope,
        idempotency_key: new.idempotency_key,
        parent: new.parent,
        drive_job,
        created_at: now,
        updated_at: now,
        finished_at: None,
        cancel_requested: None,
        waiting: Vec::new(),
    }
}
