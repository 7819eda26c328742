//! [`WorkflowStore`] for [`MemoryStore`]: runs, checkpoints, event waits and kept events, under
//! the same mutex as the jobs, so a suspend (run + drive job) or a delivery (checkpoint + wake)
//! is one step.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, Enqueued, Error, ErrorKind, EventWait, Finish, FinishResult, JobId, JobState,
    LeaseRef, NewCheckpoint, NewEvent, NewJob, NewRun, Outcome, Page, PageRequest, Published,
    Result, Run, RunAt, RunCancel, RunEnd, RunFilter, RunId, RunSnapshot, RunState, Scope, Started,
    Suspend, SuspendOutcome, Timestamp, WaitResolution, WorkflowStore,
};

use crate::{MemoryStore, State};

/// Everything workflow-shaped the memory store keeps.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    runs: BTreeMap<RunId, RunRow>,
    /// (workflow name, idempotency key) → run.
    by_key: HashMap<(String, String), RunId>,
    /// Drive job → run, so a dying drive job fails its run.
    by_drive: HashMap<JobId, RunId>,
    /// Registered waits, in registration order (the key orders them).
    waits: BTreeMap<u64, Wait>,
    /// Events nobody waited for, in publish order.
    kept: BTreeMap<u64, KeptEvent>,
    next_seq: u64,
}

#[derive(Debug)]
struct RunRow {
    run: Run,
    checkpoints: Vec<Checkpoint>,
}

#[derive(Debug)]
struct Wait {
    run: RunId,
    scope: Scope,
    wait: EventWait,
}

#[derive(Debug)]
struct KeptEvent {
    name: String,
    correlation: String,
    scope: Scope,
    payload: Vec<u8>,
    keep_until: Timestamp,
}

impl Runs {
    fn next_seq(&mut self) -> u64 {
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

    fn write(&mut self, run: RunId, checkpoint: NewCheckpoint, now: Timestamp) {
        if let Some(row) = self.runs.get_mut(&run) {
            row.write(checkpoint, now);
        }
    }
}

impl RunRow {
    /// Insert or replace a checkpoint (a replaced key keeps its place in write order).
    fn write(&mut self, checkpoint: NewCheckpoint, now: Timestamp) {
        let stored = Checkpoint { key: checkpoint.key, data: checkpoint.data, at: now };
        match self.checkpoints.iter_mut().find(|c| c.key == stored.key) {
            Some(existing) => *existing = stored,
            None => self.checkpoints.push(stored),
        }
    }
}

fn end(run: &mut Run, how: RunEnd, now: Timestamp) {
    run.state = how.state();
    match how {
        RunEnd::Completed(output) => run.output = Some(output),
        RunEnd::Failed(error) | RunEnd::Cancelled(error) => run.error = Some(error),
    }
    run.updated_at = now;
    run.finished_at = Some(now);
}

/// Make an ended (or rewound) run running again.
fn reopen(run: &mut Run, now: Timestamp) {
    run.state = RunState::Running;
    run.output = None;
    run.error = None;
    run.finished_at = None;
    run.cancel_requested = None;
    run.updated_at = now;
}

fn lease_lost(run: RunId) -> Error {
    Error::new(ErrorKind::LeaseLost, format!("the drive of run {run} no longer holds its lease"))
}

impl State {
    /// The drive job of run `id`, when no drive holds it (and, for a migration, the run has not
    /// completed).
    fn rearmable(&self, id: RunId, migrating: bool) -> Result<JobId> {
        let row =
            self.runs.runs.get(&id).ok_or_else(|| Error::not_found(format!("no run {id}")))?;
        let drive = row.run.drive_job;
        if self.jobs.get(&drive).is_some_and(|job| job.job.state == JobState::Running) {
            return Err(Error::new(ErrorKind::Conflict, format!("a drive holds run {id}")));
        }
        if migrating && row.run.state == RunState::Completed {
            return Err(Error::new(ErrorKind::Conflict, format!("run {id} has completed")));
        }
        Ok(drive)
    }

    /// Re-arm drive job `id` (renamed to `name` when given): available at `run_at`, attempts
    /// reset, no lease. Its queue, for the wake-up.
    fn rearm(&mut self, id: JobId, name: Option<&str>, run_at: Timestamp) -> Option<String> {
        self.unindex(id);
        self.clear_lease(id);
        let row = self.jobs.get_mut(&id)?;
        row.job.attempt = 0;
        row.job.finished_at = None;
        if let Some(name) = name {
            row.job.name = name.to_owned();
        }
        let queue = row.job.queue.clone();
        self.make_available(id, run_at);
        Some(queue)
    }

    /// The run, when `lease` holds its drive job.
    fn fenced(&mut self, lease: LeaseRef, run: RunId) -> Result<&mut RunRow> {
        let jobs = &self.jobs;
        let row = self
            .runs
            .runs
            .get_mut(&run)
            .ok_or_else(|| Error::not_found(format!("no run {run}")))?;
        let holds = row.run.drive_job == lease.job_id
            && jobs.get(&lease.job_id).is_some_and(|job| {
                job.job.state == JobState::Running
                    && job.job.lease.is_some_and(|l| l.token == lease.token)
            });
        if holds { Ok(row) } else { Err(lease_lost(run)) }
    }

    /// Hand `payload` to the wait `seq`: its checkpoint, and the run's drive job due now.
    fn deliver(&mut self, seq: u64, payload: Vec<u8>, now: Timestamp) -> Option<RunId> {
        let wait = self.runs.waits.remove(&seq)?;
        self.runs.write(wait.run, NewCheckpoint::new(wait.wait.key, payload), now);
        let drive = self.runs.runs.get(&wait.run)?.run.drive_job;
        if self.jobs.get(&drive).is_some_and(|row| row.job.state == JobState::Available) {
            self.unindex(drive);
            self.make_available(drive, now);
        }
        Some(wait.run)
    }

    /// The oldest kept event for `wait` in `scope`, taken out of the store.
    fn take_kept(&mut self, wait: &EventWait, scope: &Scope, now: Timestamp) -> Option<Vec<u8>> {
        self.runs.kept.retain(|_, e| e.keep_until > now);
        let seq = self.runs.kept.iter().find_map(|(seq, e)| {
            (e.name == wait.name && e.correlation == wait.correlation && e.scope == *scope)
                .then_some(*seq)
        })?;
        self.runs.kept.remove(&seq).map(|e| e.payload)
    }
}

impl State {
    /// The run job `id` drives, when that run has not ended.
    pub(crate) fn live_run_driven_by(&self, id: JobId) -> Option<RunId> {
        let run = self.runs.by_drive.get(&id)?;
        self.runs.runs.get(run).filter(|row| !row.run.state.is_final()).map(|row| row.run.id)
    }

    /// Ask run `id` to stop (see [`WorkflowStore::cancel_run`]): the answer, and the queue of
    /// its drive job when that was waiting and is now due, to wake once the lock is released.
    pub(crate) fn cancel_run(
        &mut self,
        id: RunId,
        reason: &str,
        now: Timestamp,
    ) -> Result<(RunCancel, Option<String>)> {
        let row =
            self.runs.runs.get_mut(&id).ok_or_else(|| Error::not_found(format!("no run {id}")))?;
        if row.run.state.is_final() {
            return Ok((RunCancel::AlreadyFinal(row.run.state), None));
        }
        if row.run.cancel_requested.is_none() {
            row.run.cancel_requested = Some(reason.to_owned());
            row.run.updated_at = now;
        }
        let drive = row.run.drive_job;
        let waiting = self
            .jobs
            .get(&drive)
            .filter(|job| job.job.state == JobState::Available)
            .map(|job| job.job.queue.clone());
        if waiting.is_some() {
            self.unindex(drive);
            self.make_available(drive, now);
        }
        Ok((RunCancel::Requested, waiting))
    }
}

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn start_run(&self, new: NewRun, drive: NewJob) -> Result<Started> {
        new.validate(self.max_payload_bytes)?;
        drive.validate(self.max_payload_bytes)?;
        let now = self.clock.now();
        let mut state = self.state.lock();
        if let Some(row) = state.runs.runs.get(&new.id) {
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
            && let Some(existing) = state.runs.by_key.get(&(new.name.clone(), key.clone()))
        {
            return Ok(Started::Existing(*existing));
        }
        if state.jobs.contains_key(&drive.id) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("the drive job's ID {} is already taken", drive.id),
            ));
        }
        let (drive_job, queue) = (drive.id, drive.queue.clone());
        if let Enqueued::Duplicate(holder) = state.enqueue_one(drive, now) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("the drive job's unique key is held by job {holder}"),
            ));
        }
        let run = Run {
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
        };
        if let Some(key) = &run.idempotency_key {
            state.runs.by_key.insert((run.name.clone(), key.clone()), run.id);
        }
        state.runs.by_drive.insert(drive_job, run.id);
        let id = run.id;
        state.runs.runs.insert(id, RunRow { run, checkpoints: Vec::new() });
        drop(state);
        self.wakeups.notify([queue.as_str()]);
        Ok(Started::Created(id))
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
        let after = page.after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let items = state
            .runs
            .runs
            .range((after, std::ops::Bound::Unbounded))
            .map(|(_, row)| &row.run)
            .filter(|run| filter.state.is_none_or(|s| run.state == s))
            .filter(|run| filter.name.as_ref().is_none_or(|n| &run.name == n))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |run: &Run| run.id))
    }

    async fn checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        let state = self.state.lock();
        let row =
            state.runs.runs.get(&run).ok_or_else(|| Error::not_found(format!("no run {run}")))?;
        Ok(row.checkpoints.clone())
    }

    async fn load_run(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let row = state.fenced(lease, run)?;
        if row.run.state == RunState::Suspended {
            row.run.state = RunState::Running;
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
        let wake_at = suspend.wake_at().ok_or_else(|| {
            Error::invalid_input("a suspend needs a wake time or an event to wait for")
        })?;
        let mut state = self.state.lock();
        let row = state.fenced(lease, suspend.run)?;
        if row.run.cancel_requested.is_some() {
            return Ok(SuspendOutcome::CancelRequested);
        }
        // Delivered since the drive's snapshot (the run was being driven): go on, no suspension.
        if suspend.waits.iter().any(|w| row.checkpoints.iter().any(|c| c.key == w.key)) {
            return Ok(SuspendOutcome::Delivered);
        }
        let scope = row.run.scope.clone();
        for wait in &suspend.waits {
            if let Some(payload) = state.take_kept(wait, &scope, now) {
                state.runs.write(suspend.run, NewCheckpoint::new(wait.key.clone(), payload), now);
                return Ok(SuspendOutcome::Delivered);
            }
        }
        // The waits listed are the run's waits now: earlier ones it no longer lists (a branch
        // it dropped) must not take events meant for others.
        state.runs.waits.retain(|_, w| w.run != suspend.run);
        for wait in suspend.waits {
            let seq = state.runs.next_seq();
            state.runs.waits.insert(seq, Wait { run: suspend.run, scope: scope.clone(), wait });
        }
        let row = state.fenced(lease, suspend.run)?;
        row.run.state = RunState::Suspended;
        row.run.updated_at = now;
        let snooze = Finish { lease, outcome: Outcome::Snooze { run_at: RunAt::At(wake_at) } };
        match state.finish_one(&snooze, now) {
            FinishResult::Applied { .. } => Ok(SuspendOutcome::Suspended { wake_at }),
            _ => Err(lease_lost(suspend.run)),
        }
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        let mut state = self.state.lock();
        let row = state.fenced(lease, run)?;
        if let Some(delivered) = row.checkpoints.iter().find(|c| c.key == key) {
            return Ok(WaitResolution::Delivered(delivered.data.clone()));
        }
        state.runs.waits.retain(|_, w| !(w.run == run && w.wait.key == key));
        Ok(WaitResolution::TimedOut)
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, how: RunEnd) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let row = state.fenced(lease, run)?;
        end(&mut row.run, how, now);
        state.runs.waits.retain(|_, w| w.run != run);
        Ok(())
    }

    async fn cancel_run(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        let now = self.clock.now();
        let (cancel, woken) = self.state.lock().cancel_run(id, reason, now)?;
        self.wakeups.notify(woken.as_deref());
        Ok(cancel)
    }

    async fn replay_run(&self, id: RunId, key: &str) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let drive = state.rearmable(id, false)?;
        let row =
            state.runs.runs.get_mut(&id).ok_or_else(|| Error::not_found(format!("no run {id}")))?;
        let at = row
            .checkpoints
            .iter()
            .position(|c| c.key == key)
            .ok_or_else(|| Error::not_found(format!("run {id} has no checkpoint {key:?}")))?;
        row.checkpoints.truncate(at + 1);
        reopen(&mut row.run, now);
        state.runs.waits.retain(|_, w| w.run != id);
        let queue = state.rearm(drive, None, now);
        drop(state);
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let drive = state.rearmable(id, true)?;
        let row =
            state.runs.runs.get_mut(&id).ok_or_else(|| Error::not_found(format!("no run {id}")))?;
        row.run.version = version;
        row.run.updated_at = now;
        if row.run.state.is_final() {
            reopen(&mut row.run, now);
        }
        // A waiting drive job keeps its wake time; an ended one is due now.
        let run_at = state
            .jobs
            .get(&drive)
            .filter(|job| job.job.state == JobState::Available)
            .map_or(now, |job| job.job.run_at);
        let queue = state.rearm(drive, Some(drive_job_name), run_at);
        drop(state);
        self.wakeups.notify(queue.as_deref());
        Ok(())
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.max_payload_bytes)?;
        let now = self.clock.now();
        let mut state = self.state.lock();
        let matching: Vec<u64> = state
            .runs
            .waits
            .iter()
            .filter(|(_, w)| {
                w.wait.name == event.name
                    && w.wait.correlation == event.correlation
                    && w.scope == event.scope
            })
            .map(|(seq, _)| *seq)
            .take(if event.broadcast { usize::MAX } else { 1 })
            .collect();
        let mut published = Published::default();
        for seq in matching {
            if let Some(run) = state.deliver(seq, event.payload.clone(), now)
                && !published.delivered_to.contains(&run)
            {
                published.delivered_to.push(run);
            }
        }
        let keep_until = now + event.keep_for;
        if published.delivered_to.is_empty() && !event.broadcast && keep_until > now {
            let seq = state.runs.next_seq();
            let kept = KeptEvent {
                name: event.name,
                correlation: event.correlation,
                scope: event.scope,
                payload: event.payload,
                keep_until,
            };
            state.runs.kept.insert(seq, kept);
            published.kept = true;
        }
        drop(state);
        if !published.delivered_to.is_empty() {
            self.wakeups.send(&dispatch_core::Wakeup::any());
        }
        Ok(published)
    }
}
