//! Retention: how long finished work is kept, as a policy every store reads the same way
//! ([`RetentionPolicy`], its [`Cutoffs`] at a moment of the store's clock), and the rules of
//! what may never be pruned, as plain functions (as [`transition`](crate::transition) is for
//! jobs). The leader prunes through [`RetentionStore::prune`](crate::RetentionStore::prune),
//! in bounded batches, under its term.
//!
//! What is pruned, each by its own age (all times the store's clock):
//! * completed and cancelled jobs, by their finish time;
//! * dead jobs and DLQ entries, by the time they died: a dead job is kept as long as the DLQ
//!   keeps its entry, so an operator can always follow one from the other;
//! * ended workflow runs (completed, failed, cancelled), by their finish time, with their
//!   checkpoints and their drive job;
//! * kept events past their own `keep_for` (no policy: the publisher chose);
//! * workers marked gone, by their last heartbeat.
//!
//! What is never pruned, whatever its age: a job that is available or running; a job that still
//! holds its unique key's window (it is skipped until the window has passed, so the key stays
//! held for exactly as long as the enqueue asked); the drive job of a stored run (it goes with
//! its run, which a rewind re-arms); a run whose parent run has not ended (the parent may still
//! read it); a run whose drive job is available or running.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState};
use crate::time::Timestamp;
use crate::workflow::RunState;

/// How long each kind of finished record is kept; `None` keeps it for ever. The defaults:
/// completed jobs 24 h, cancelled jobs 7 d, dead jobs and DLQ entries 30 d, ended runs 7 d,
/// gone workers 24 h.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Completed jobs, from their finish.
    pub completed: Option<Duration>,
    /// Cancelled jobs, from their finish.
    pub cancelled: Option<Duration>,
    /// DLQ entries and their dead jobs, from the death.
    pub dead: Option<Duration>,
    /// Ended workflow runs (with their checkpoints and drive job), from their end.
    pub runs: Option<Duration>,
    /// Workers marked gone, from their last heartbeat.
    pub gone_workers: Option<Duration>,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            completed: Some(DAY),
            cancelled: Some(7 * DAY),
            dead: Some(30 * DAY),
            runs: Some(7 * DAY),
            gone_workers: Some(24 * HOUR),
        }
    }
}

impl RetentionPolicy {
    /// A policy that keeps everything (prunes only expired kept events).
    pub fn keep_all() -> Self {
        Self { completed: None, cancelled: None, dead: None, runs: None, gone_workers: None }
    }

    /// The policy's cutoffs at `now`: a record finished at or before its cutoff is old enough.
    pub fn cutoffs(&self, now: Timestamp) -> Cutoffs {
        let cutoff = |age: Option<Duration>| age.map(|age| now - age);
        Cutoffs {
            now,
            completed: cutoff(self.completed),
            cancelled: cutoff(self.cancelled),
            dead: cutoff(self.dead),
            runs: cutoff(self.runs),
            gone_workers: cutoff(self.gone_workers),
        }
    }
}

/// A [`RetentionPolicy`] at one moment: for each kind, the latest finish time that is old
/// enough to prune (`None`: kept for ever). Stores compute it once per call, from their clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoffs {
    /// The moment (unique-key windows and kept events are compared with it).
    pub now: Timestamp,
    /// Completed jobs finished at or before this.
    pub completed: Option<Timestamp>,
    /// Cancelled jobs finished at or before this.
    pub cancelled: Option<Timestamp>,
    /// Dead jobs and DLQ entries that died at or before this.
    pub dead: Option<Timestamp>,
    /// Runs ended at or before this.
    pub runs: Option<Timestamp>,
    /// Gone workers last seen at or before this.
    pub gone_workers: Option<Timestamp>,
}

impl Cutoffs {
    /// The cutoff of jobs in `state`: `None` for the states that are never pruned by age
    /// (available, running) and for a kind kept for ever.
    pub fn for_job_state(&self, state: JobState) -> Option<Timestamp> {
        match state {
            JobState::Completed => self.completed,
            JobState::Cancelled => self.cancelled,
            JobState::Dead => self.dead,
            JobState::Available | JobState::Running => None,
        }
    }

    /// Whether `job` may be pruned on its own: finished at or before its state's cutoff, and
    /// no longer holding its unique key's window (`unique_until`, when the store keeps one, is
    /// the end of that window). The caller also keeps drive jobs of stored runs
    /// ([`job_prunable`] says it in one call).
    pub fn job_old_enough(&self, job: &Job, unique_until: Option<Timestamp>) -> bool {
        let Some(cutoff) = self.for_job_state(job.state) else { return false };
        let finished = job.finished_at.is_some_and(|at| at <= cutoff);
        finished && window_passed(unique_until, self.now)
    }

    /// Whether a run that ended in `state` at `finished_at` is old enough to prune. The caller
    /// also checks its parent and its drive job ([`run_prunable`]).
    pub fn run_old_enough(&self, state: RunState, finished_at: Option<Timestamp>) -> bool {
        let ended = matches!(state, RunState::Completed | RunState::Failed | RunState::Cancelled);
        match (self.runs, finished_at) {
            (Some(cutoff), Some(at)) => ended && at <= cutoff,
            _ => false,
        }
    }
}

/// Whether a unique key's window ending at `until` has passed at `now` (no window: passed).
pub fn window_passed(until: Option<Timestamp>, now: Timestamp) -> bool {
    until.is_none_or(|until| until <= now)
}

/// The rule for one job: old enough by `cutoffs` ([`Cutoffs::job_old_enough`]) and not the
/// drive job of a stored run (`drives_a_stored_run`).
pub fn job_prunable(
    cutoffs: &Cutoffs,
    job: &Job,
    unique_until: Option<Timestamp>,
    drives_a_stored_run: bool,
) -> bool {
    !drives_a_stored_run && cutoffs.job_old_enough(job, unique_until)
}

/// The rule for one run: old enough by `cutoffs`, its parent (when it has one still stored)
/// ended, and its drive job neither available nor running (`None`: the drive job is gone).
pub fn run_prunable(
    cutoffs: &Cutoffs,
    state: RunState,
    finished_at: Option<Timestamp>,
    parent_state: Option<RunState>,
    drive_job_state: Option<JobState>,
) -> bool {
    let parent_live =
        parent_state.is_some_and(|s| matches!(s, RunState::Running | RunState::Suspended));
    let drive_live =
        drive_job_state.is_some_and(|s| matches!(s, JobState::Available | JobState::Running));
    cutoffs.run_old_enough(state, finished_at) && !parent_live && !drive_live
}

/// What one [`prune`](crate::RetentionStore::prune) call removed, per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Jobs removed (completed, cancelled and dead; drive jobs removed with their run too).
    pub jobs: u64,
    /// DLQ entries removed.
    pub dlq: u64,
    /// Runs removed.
    pub runs: u64,
    /// Checkpoints removed with their runs.
    pub checkpoints: u64,
    /// Expired kept events removed.
    pub events: u64,
    /// Gone workers removed.
    pub workers: u64,
    /// Whether some kind reached the call's limit, so more may be left: call again.
    pub more: bool,
}

impl PruneReport {
    /// Everything removed, all kinds together.
    pub fn total(&self) -> u64 {
        self.jobs + self.dlq + self.runs + self.checkpoints + self.events + self.workers
    }

    /// Add `other`'s counts (and its `more`) to this report.
    pub fn absorb(&mut self, other: &PruneReport) {
        self.jobs += other.jobs;
        self.dlq += other.dlq;
        self.runs += other.runs;
        self.checkpoints += other.checkpoints;
        self.events += other.events;
        self.workers += other.workers;
        self.more = other.more;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_follow_the_policy() {
        let now = Timestamp::from_unix_micros(10 * DAY.as_micros() as i64);
        let cutoffs = RetentionPolicy::default().cutoffs(now);
        assert_eq!(cutoffs.completed, Some(now - DAY));
        assert_eq!(cutoffs.for_job_state(JobState::Running), None);
        assert_eq!(RetentionPolicy::keep_all().cutoffs(now).dead, None);
    }

    #[test]
    fn a_run_with_a_live_parent_or_drive_job_is_kept() {
        let now = Timestamp::from_unix_micros(10 * DAY.as_micros() as i64);
        let cutoffs = RetentionPolicy::default().cutoffs(now);
        let old = Some(now - 8 * DAY);
        let done = RunState::Completed;
        assert!(run_prunable(&cutoffs, done, old, None, Some(JobState::Completed)));
        assert!(run_prunable(&cutoffs, done, old, Some(RunState::Failed), None));
        assert!(!run_prunable(&cutoffs, done, old, Some(RunState::Suspended), None));
        assert!(!run_prunable(&cutoffs, done, old, None, Some(JobState::Running)));
        assert!(!run_prunable(&cutoffs, RunState::Running, old, None, None));
        assert!(!run_prunable(&cutoffs, done, Some(now - DAY), None, None));
    }

    #[test]
    fn a_unique_window_keeps_its_job() {
        let now = Timestamp::from_unix_micros(10 * DAY.as_micros() as i64);
        assert!(!window_passed(Some(now + HOUR), now));
        assert!(window_passed(Some(now), now));
        assert!(window_passed(None, now));
    }
}
