//! The event side of workflow runs in [`MemoryStore`](crate::MemoryStore): suspension (taking a
//! kept event, or registering waits and snoozing the drive job), resolving a wait, and
//! publishing (delivering to waits, or keeping the event). Each runs under the store's lock, so
//! a suspend (waits + run + drive job) or a delivery (checkpoint + wake) is one step.

use dispatch_core::{
    EventWait, Finish, FinishResult, LeaseRef, NewCheckpoint, NewEvent, Outcome, Published, Result,
    RunAt, RunId, RunState, Scope, Suspend, SuspendOutcome, Timestamp, WaitResolution,
};

use crate::State;
use crate::run::{KeptEvent, Wait, lease_lost};

impl State {
    /// Suspend a run whose drive holds `lease` until `wake_at` (see
    /// [`WorkflowStore::suspend_run`](dispatch_core::WorkflowStore::suspend_run)).
    pub(crate) fn suspend(
        &mut self,
        lease: LeaseRef,
        suspend: Suspend,
        wake_at: Timestamp,
        now: Timestamp,
    ) -> Result<SuspendOutcome> {
        let row = self.fenced(lease, suspend.run)?;
        if row.run.cancel_requested.is_some() {
            return Ok(SuspendOutcome::CancelRequested);
        }
        // Delivered since the drive's snapshot (the run was being driven): go on, no suspension.
        if suspend.waits.iter().any(|w| row.checkpoints.iter().any(|c| c.key == w.key)) {
            return Ok(SuspendOutcome::Delivered);
        }
        let scope = row.run.scope.clone();
        for wait in &suspend.waits {
            if let Some(payload) = self.take_kept(wait, &scope, now) {
                self.runs.write(suspend.run, NewCheckpoint::new(wait.key.clone(), payload), now);
                return Ok(SuspendOutcome::Delivered);
            }
        }
        self.register(suspend.run, &scope, suspend.waits);
        let row = self.fenced(lease, suspend.run)?;
        row.run.state = RunState::Suspended;
        row.run.waiting = suspend.waiting;
        row.run.updated_at = now;
        let snooze = Finish { lease, outcome: Outcome::Snooze { run_at: RunAt::At(wake_at) } };
        match self.finish_one(&snooze, now) {
            FinishResult::Applied { .. } => Ok(SuspendOutcome::Suspended { wake_at }),
            _ => Err(lease_lost(suspend.run)),
        }
    }

    /// Make `waits` the run's waits: earlier ones it no longer lists (a branch it dropped) must
    /// not take events meant for others.
    /// Make `waits` the run's waits. Of a key listed twice, the last wait counts: a wait is
    /// known by its key (its checkpoint), so two on one key could not both be delivered.
    fn register(&mut self, run: RunId, scope: &Scope, waits: Vec<EventWait>) {
        self.runs.waits.retain(|_, w| w.run != run);
        let last = |i: usize, wait: &EventWait| !waits[i + 1..].iter().any(|w| w.key == wait.key);
        let kept: Vec<EventWait> =
            waits.iter().enumerate().filter(|(i, w)| last(*i, w)).map(|(_, w)| w.clone()).collect();
        for wait in kept {
            let seq = self.runs.next_seq();
            self.runs.waits.insert(seq, Wait { run, scope: scope.clone(), wait });
        }
    }

    /// The delivered payload of wait `key`, or, when none came, the wait withdrawn.
    pub(crate) fn resolve_wait(
        &mut self,
        lease: LeaseRef,
        run: RunId,
        key: &str,
    ) -> Result<WaitResolution> {
        let row = self.fenced(lease, run)?;
        if let Some(delivered) = row.checkpoints.iter().find(|c| c.key == key) {
            return Ok(WaitResolution::Delivered(delivered.data.clone()));
        }
        self.runs.waits.retain(|_, w| !(w.run == run && w.wait.key == key));
        Ok(WaitResolution::TimedOut)
    }

    /// Deliver `event` to the oldest matching wait (every one for a broadcast), or keep it.
    pub(crate) fn publish(&mut self, event: NewEvent, now: Timestamp) -> Published {
        let matching: Vec<u64> = self
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
            if let Some(run) = self.deliver(seq, event.payload.clone(), now)
                && !published.delivered_to.contains(&run)
            {
                published.delivered_to.push(run);
            }
        }
        let keep_until = now + event.keep_for;
        if published.delivered_to.is_empty() && !event.broadcast && keep_until > now {
            let seq = self.runs.next_seq();
            let kept = KeptEvent {
                name: event.name,
                correlation: event.correlation,
                scope: event.scope,
                payload: event.payload,
                keep_until,
            };
            self.runs.kept.insert(seq, kept);
            published.kept = true;
        }
        published
    }

    /// Hand `payload` to the wait `seq`: its checkpoint, and the run's drive job due now.
    fn deliver(&mut self, seq: u64, payload: Vec<u8>, now: Timestamp) -> Option<RunId> {
        let wait = self.runs.waits.remove(&seq)?;
        self.runs.write(wait.run, NewCheckpoint::new(wait.wait.key, payload), now);
        let drive = self.runs.runs.get(&wait.run)?.run.drive_job;
        self.wake_drive(drive, now);
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
