//! The dead letter queue: jobs that failed for good, kept with everything needed to inspect and
//! replay them, and the [`DlqStore`](crate::DlqStore) contract.
//!
//! An entry is written in the same store operation that makes its job dead, so a job is never in
//! neither place. Replay makes one new job (same name, queue, payload, priority, timeout,
//! max attempts and scope; fresh attempts; runs now) and can happen at most once per entry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{DlqId, JobId};
use crate::job::{AttemptError, Job};
use crate::scope::Scope;
use crate::time::Timestamp;

/// A dead job, as the DLQ keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// The entry's ID.
    pub id: DlqId,
    /// The dead job's ID.
    pub job_id: JobId,
    /// The job name.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// The encoded input.
    pub payload: Vec<u8>,
    /// The job's priority.
    pub priority: i32,
    /// Attempts the job spent.
    pub attempts: u32,
    /// Attempts the job was allowed.
    pub max_attempts: u32,
    /// The job's per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Tenant scope.
    pub scope: Scope,
    /// Every failed attempt, oldest first; the last one is why it died.
    pub errors: Vec<AttemptError>,
    /// When the job died (store clock).
    pub failed_at: Timestamp,
    /// The job a replay created, once replayed.
    pub replayed_as: Option<JobId>,
    /// When it was replayed.
    pub replayed_at: Option<Timestamp>,
}

impl DlqEntry {
    /// The entry for `job`, which is dying now. Stores call this so every store copies the same
    /// fields.
    pub fn for_job(job: &Job, failed_at: Timestamp) -> Self {
        Self {
            id: DlqId::new(),
            job_id: job.id,
            name: job.name.clone(),
            queue: job.queue.clone(),
            payload: job.payload.clone(),
            priority: job.priority,
            attempts: job.attempt,
            max_attempts: job.max_attempts,
            timeout: job.timeout,
            scope: job.scope.clone(),
            errors: job.errors.clone(),
            failed_at,
            replayed_as: None,
            replayed_at: None,
        }
    }
}

/// Which entries a listing returns. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this job name.
    pub name: Option<String>,
    /// Only replayed (`true`) or not yet replayed (`false`) entries.
    pub replayed: Option<bool>,
}

/// Which entries a purge deletes: those matching every set field. An all-unset filter deletes
/// every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqPurge {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this job name.
    pub name: Option<String>,
    /// Only entries that failed before this time.
    pub failed_before: Option<Timestamp>,
    /// Only replayed (`true`) or not yet replayed (`false`) entries.
    pub replayed: Option<bool>,
}

/// What a replay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// A new job was enqueued with this ID.
    Replayed(JobId),
    /// The entry had been replayed before, as this job; nothing new was enqueued.
    AlreadyReplayed(JobId),
}

impl Replay {
    /// The ID of the job the entry was replayed as.
    pub fn job_id(self) -> JobId {
        match self {
            Self::Replayed(id) | Self::AlreadyReplayed(id) => id,
        }
    }
}
