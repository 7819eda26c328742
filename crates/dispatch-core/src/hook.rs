//! Lifecycle hooks: observe what happens to jobs and workflow runs without being on their path.
//!
//! The runtime delivers events to hooks from a task of its own, in order, after the store has
//! recorded the transition; a slow hook delays other hooks, never claiming or finishing, and a
//! panicking hook is caught and logged. Events are `#[non_exhaustive]`: later concerns add theirs.

use std::time::Duration;

use async_trait::async_trait;

use crate::id::{CronId, DlqId, JobId, RunId};
use crate::job::Failure;
use crate::scope::Scope;
use crate::time::Timestamp;
use crate::workflow::WaitingFor;

/// The job an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// Its ID.
    pub id: JobId,
    /// The job name.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// Tenant scope.
    pub scope: Scope,
}

/// The workflow run an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Its ID.
    pub id: RunId,
    /// The workflow name.
    pub name: String,
    /// The workflow version it runs on.
    pub version: u32,
    /// Tenant scope.
    pub scope: Scope,
}

/// The cron entry an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronInfo {
    /// Its ID.
    pub id: CronId,
    /// Its name.
    pub name: String,
    /// Tenant scope.
    pub scope: Scope,
}

/// Why a cron entry did not fire at a scheduled time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CronSkip {
    /// The time was missed (downtime longer than the entry's grace) and its catch-up policy
    /// skips it.
    Missed,
    /// The entry's previous job was still available or running (overlap policy `Skip`).
    Overlap {
        /// The unfinished job.
        previous: JobId,
    },
}

/// Something that happened to a job, a workflow run, or the runtime.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A job was stored (or found stored, when `duplicate`).
    JobEnqueued {
        /// The job.
        job: JobInfo,
        /// Whether an existing job held its unique key.
        duplicate: bool,
    },
    /// An attempt started.
    JobStarted {
        /// The job.
        job: JobInfo,
        /// The attempt (1-based).
        attempt: u32,
    },
    /// The job completed.
    JobCompleted {
        /// The job.
        job: JobInfo,
        /// The attempt that succeeded.
        attempt: u32,
        /// How long that attempt ran.
        elapsed: Duration,
    },
    /// An attempt failed and the job will run again after `delay`.
    JobRetrying {
        /// The job.
        job: JobInfo,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        failure: Failure,
        /// The backoff before the next attempt.
        delay: Duration,
    },
    /// The job failed for good (it is promoted to the DLQ next).
    JobFailed {
        /// The job.
        job: JobInfo,
        /// The last attempt.
        attempt: u32,
        /// Why.
        failure: Failure,
    },
    /// The job is dead and its DLQ entry exists.
    JobPromoted {
        /// The job.
        job: JobInfo,
        /// The DLQ entry.
        dlq_id: DlqId,
    },
    /// The job was cancelled while running.
    JobCancelled {
        /// The job.
        job: JobInfo,
        /// The attempt that was running.
        attempt: u32,
    },
    /// The job was snoozed: it runs again after `delay`, its attempt given back.
    JobSnoozed {
        /// The job.
        job: JobInfo,
        /// How long until it runs again.
        delay: Duration,
    },
    /// A workflow run was started (its first drive is due).
    RunStarted {
        /// The run.
        run: RunInfo,
    },
    /// A drive picked up a run that had made progress before (after a suspension, a crash or a
    /// lost lease): it re-runs from its checkpoints.
    RunResumed {
        /// The run.
        run: RunInfo,
    },
    /// A run suspended (a durable sleep, an event wait, a step's retry backoff): it holds no
    /// worker until `wake_at` or an event.
    RunSuspended {
        /// The run.
        run: RunInfo,
        /// When its drive is due at the latest (store clock).
        wake_at: Timestamp,
        /// What it waits for, as its record says while it is suspended.
        waiting: Vec<WaitingFor>,
    },
    /// A step's result was checkpointed.
    StepCompleted {
        /// The run.
        run: RunInfo,
        /// The step's checkpoint key.
        key: String,
        /// The attempt that succeeded (1-based).
        attempt: u32,
    },
    /// A step attempt failed.
    StepFailed {
        /// The run.
        run: RunInfo,
        /// The step's checkpoint key.
        key: String,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Why.
        error: String,
        /// Whether another attempt is scheduled.
        will_retry: bool,
    },
    /// A run completed.
    RunCompleted {
        /// The run.
        run: RunInfo,
    },
    /// A run failed.
    RunFailed {
        /// The run.
        run: RunInfo,
        /// Why.
        error: String,
    },
    /// A run was cancelled (after its compensations ran).
    RunCancelled {
        /// The run.
        run: RunInfo,
        /// Why.
        reason: String,
    },
    /// The compensation of a completed step ran (the run is failing or cancelled).
    CompensationRan {
        /// The run.
        run: RunInfo,
        /// The checkpoint key of the step it undid.
        key: String,
    },
    /// A cron entry fired: its job for scheduled time `scheduled` was enqueued (or found
    /// enqueued, when `duplicate`).
    CronFired {
        /// The entry.
        entry: CronInfo,
        /// The scheduled time.
        scheduled: Timestamp,
        /// The job.
        job: JobId,
        /// Whether the job existed already (an earlier fire of the same time).
        duplicate: bool,
    },
    /// A cron entry skipped scheduled times.
    CronSkipped {
        /// The entry.
        entry: CronInfo,
        /// The first scheduled time skipped.
        scheduled: Timestamp,
        /// How many scheduled times were skipped (from `scheduled` on).
        count: u32,
        /// Why.
        reason: CronSkip,
    },
    /// A DLQ entry was replayed as a new job.
    DlqReplayed {
        /// The entry.
        entry: DlqId,
        /// The new job.
        job: JobId,
    },
    /// DLQ entries were purged.
    DlqPurged {
        /// How many.
        count: u64,
    },
    /// A queue (or one job name of it) was paused: its jobs are not claimed until resumed.
    QueuePaused {
        /// The queue.
        queue: String,
        /// The job name, when only that name was paused.
        name: Option<String>,
    },
    /// A paused queue (or job name) was resumed.
    QueueResumed {
        /// The queue.
        queue: String,
        /// The job name, when only that name was resumed.
        name: Option<String>,
    },
    /// A worker stopped.
    Shutdown,
    /// This process became the cluster's leader under a new term (or the same term, acquired
    /// again after a lost renewal answer).
    LeaderElected {
        /// The term it leads under.
        leader: crate::cluster::Leader,
    },
    /// This process stopped leading: it resigned, could not renew in time, or a leader write was
    /// refused because a newer term exists.
    LeadershipLost {
        /// The term it led under.
        leader: crate::cluster::Leader,
        /// Why.
        reason: String,
    },
}

impl Event {
    /// The job the event is about, if any.
    pub fn job(&self) -> Option<&JobInfo> {
        match self {
            Self::JobEnqueued { job, .. }
            | Self::JobStarted { job, .. }
            | Self::JobCompleted { job, .. }
            | Self::JobRetrying { job, .. }
            | Self::JobFailed { job, .. }
            | Self::JobPromoted { job, .. }
            | Self::JobCancelled { job, .. }
            | Self::JobSnoozed { job, .. } => Some(job),
            _ => None,
        }
    }

    /// The workflow run the event is about, if any.
    pub fn run(&self) -> Option<&RunInfo> {
        match self {
            Self::RunStarted { run }
            | Self::RunResumed { run }
            | Self::RunSuspended { run, .. }
            | Self::StepCompleted { run, .. }
            | Self::StepFailed { run, .. }
            | Self::RunCompleted { run }
            | Self::RunFailed { run, .. }
            | Self::RunCancelled { run, .. }
            | Self::CompensationRan { run, .. } => Some(run),
            _ => None,
        }
    }
}

/// Receives lifecycle events. Implement the one method; match the events you care about.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Called once per event, in order, off the job's path.
    async fn on_event(&self, event: &Event);
}
