//! The workflow records [`MemoryStore`](crate::MemoryStore) keeps (runs, checkpoints, event
//! waits, kept events) and the operations on them that every workflow concern shares: the lease
//! fence of drive calls, ending and reopening a run, failing the run of a dead drive job, and a
//! run's cancel request. The modules above it (`workflow`, `events`, `rewind`, `finish`) use it;
//! it uses none of them.

use std::collections::{BTreeMap, HashMap};

use dispatch_core::{
    Checkpoint, Error, ErrorKind, EventWait, JobId, JobState, LeaseRef, NewCheckpoint, Run,
    RunCancel, RunEnd, RunId, RunState, Scope, Timestamp,
};

use crate::State;

/// Everything workflow-shaped the memory store keeps.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    pub(crate) runs: BTreeMap<RunId, RunRow>,
    /// (workflow name, idempotency key) → run.
    pub(crate) by_key: HashMap<(String, String), RunId>,
    /// Drive job → run, so a dying drive job fails its run.
    pub(crate) by_drive: HashMap<JobId, RunId>,
    /// Registered waits, in registration order (the key orders them).
    pub(crate) waits: BTreeMap<u64, Wait>,
    /// Events nobody waited for, in publish order.
    pub(crate) kept: BTreeMap<u64, KeptEvent>,
    next_seq: u64,
}

/// A run and its checkpoints, in write order.
#[derive(Debug)]
pub(crate) struct RunRow {
    pub(crate) run: Run,
    pub(crate) checkpoints: Vec<Checkpoint>,
}

/// A registered event wait of a run.
#[derive(Debug)]
pub(crate) struct Wait {
    pub(crate) run: RunId,
    pub(crate) scope: Scope,
    pub(crate) wait: EventWait,
}

/// An event kept for a later wait.
#[derive(Debug)]
pub(crate) struct KeptEvent {
    pub(crate) name: String,
    pub(crate) correlation: String,
    pub(crate) scope: Scope,
    pub(crate) payload: Vec<u8>,
    pub(crate) keep_until: Timestamp,
}

impl Runs {
    /// The next wait or kept-event sequence number.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The run driven by job `id` failed with the job: called when that job dies.
    pub(crate) fn fail_driven_by(&mut self, id: JobId, error: String, now: Timestamp) {
        let Some(run_id) = self.by_drive.get(&id).copied() else { return };
        if let Some(row) = self.runs.get_mut(&run_id)
            && !row.run.state.is_final()
        {
            end(&mut row.run, RunEnd::Failed(error), now);
        }
        self.waits.retain(|_, w| w.run != run_id);
    }

    /// Write one checkpoint of `run`.
    pub(crate) fn write(&mut self, run: RunId, checkpoint: NewCheckpoint, now: Timestamp) {
        if let Some(row) = self.runs.get_mut(&run) {
            row.write(checkpoint, now);
        }
    }

    /// Run `id`, or `NotFound`.
    pub(crate) fn get_mut(&mut self, id: RunId) -> dispatch_core::Result<&mut RunRow> {
        self.runs.get_mut(&id).ok_or_else(|| no_run(id))
    }
}

impl RunRow {
    /// Insert or replace a checkpoint (a replaced key keeps its place in write order).
    pub(crate) fn write(&mut self, checkpoint: NewCheckpoint, now: Timestamp) {
        let stored = Checkpoint { key: checkpoint.key, data: checkpoint.data, at: now };
        match self.checkpoints.iter_mut().find(|c| c.key == stored.key) {
            Some(existing) => *existing = stored,
            None => self.checkpoints.push(stored),
        }
    }
}

/// End `run` as `how`.
pub(crate) fn end(run: &mut Run, how: RunEnd, now: Timestamp) {
    run.state = how.state();
    run.waiting.clear();
    match how {
        RunEnd::Completed(output) => run.output = Some(output),
        RunEnd::Failed(error) | RunEnd::Cancelled(error) => run.error = Some(error),
    }
    run.updated_at = now;
    run.finished_at = Some(now);
}

/// Make an ended (or rewound) run running again.
pub(crate) fn reopen(run: &mut Run, now: Timestamp) {
    run.state = RunState::Running;
    run.waiting.clear();
    run.output = None;
    run.error = None;
    run.finished_at = None;
    run.cancel_requested = None;
    run.updated_at = now;
}

/// The error of a drive call whose lease no longer holds the run's drive job.
pub(crate) fn lease_lost(run: RunId) -> Error {
    Error::new(ErrorKind::LeaseLost, format!("the drive of run {run} no longer holds its lease"))
}

/// The error of a call on an unknown run.
pub(crate) fn no_run(id: RunId) -> Error {
    Error::not_found(format!("no run {id}"))
}

impl State {
    /// The run, when `lease` holds its drive job.
    pub(crate) fn fenced(
        &mut self,
        lease: LeaseRef,
        run: RunId,
    ) -> dispatch_core::Result<&mut RunRow> {
        let jobs = &self.jobs;
        let row = self.runs.get_mut(run)?;
        let holds = row.run.drive_job == lease.job_id
            && jobs.get(&lease.job_id).is_some_and(|job| {
                job.job.state == JobState::Running
                    && job.job.lease.is_some_and(|l| l.token == lease.token)
            });
        if holds { Ok(row) } else { Err(lease_lost(run)) }
    }

    /// Make drive job `drive` due now when it is waiting (available); its queue then, to wake.
    pub(crate) fn wake_drive(&mut self, drive: JobId, now: Timestamp) -> Option<String> {
        let queue = self
            .jobs
            .get(&drive)
            .filter(|job| job.job.state == JobState::Available)
            .map(|job| job.job.queue.clone())?;
        self.unindex(drive);
        self.make_available(drive, now);
        Some(queue)
    }

    /// The run job `id` drives, when that run has not ended.
    pub(crate) fn live_run_driven_by(&self, id: JobId) -> Option<RunId> {
        let run = self.runs.by_drive.get(&id)?;
        self.runs.runs.get(run).filter(|row| !row.run.state.is_final()).map(|row| row.run.id)
    }

    /// Ask run `id` to stop (see [`WorkflowStore::request_run_cancel`]): the answer, and the queue of
    /// its drive job when that was waiting and is now due, to wake once the lock is released.
    ///
    /// [`WorkflowStore::request_run_cancel`]: dispatch_core::WorkflowStore::request_run_cancel
    pub(crate) fn request_run_cancel(
        &mut self,
        id: RunId,
        reason: &str,
        now: Timestamp,
    ) -> dispatch_core::Result<(RunCancel, Option<String>)> {
        let row = self.runs.get_mut(id)?;
        if row.run.state.is_final() {
            return Ok((RunCancel::AlreadyFinal(row.run.state), None));
        }
        if row.run.cancel_requested.is_none() {
            row.run.cancel_requested = Some(reason.to_owned());
            row.run.updated_at = now;
        }
        let drive = row.run.drive_job;
        Ok((RunCancel::Requested, self.wake_drive(drive, now)))
    }
}
