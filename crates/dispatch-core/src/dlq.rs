//! The dead letter queue: jobs that failed for good, kept with everything needed to inspect and
//! replay them, and the [`DlqStore`](crate::DlqStore) contract.
//!
//! An entry is written in the same store operation that makes its job dead, so a job is never in
//! neither place. Replay makes one new job (same name, queue, payload, priority, timeout,
//! max attempts and scope; fresh attempts; runs now unless [`ReplayOptions`] say otherwise) and
//! can happen at most once per entry.

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

/// Which entries a listing, count, bulk replay or purge takes: those matching every set field.
/// An all-unset filter matches every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this job name.
    pub name: Option<String>,
    /// Only this application (the scope's `app`).
    pub app: Option<String>,
    /// Only this tenant (the scope's `tenant`).
    pub tenant: Option<String>,
    /// Only entries that failed at or after this time.
    pub failed_after: Option<Timestamp>,
    /// Only entries that failed before this time.
    pub failed_before: Option<Timestamp>,
    /// Only entries whose last error message contains this text (case-sensitive, bytewise).
    pub error_contains: Option<String>,
    /// Only replayed (`true`) or not yet replayed (`false`) entries.
    pub replayed: Option<bool>,
}

impl DlqFilter {
    /// Whether `entry` matches: the rule every store applies, in its own query language where
    /// it has one.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.queue, Some(&entry.queue))
            && eq(&self.name, Some(&entry.name))
            && eq(&self.app, entry.scope.app.as_deref())
            && eq(&self.tenant, entry.scope.tenant.as_deref())
            && self.failed_after.is_none_or(|t| entry.failed_at >= t)
            && self.failed_before.is_none_or(|t| entry.failed_at < t)
            && self
                .error_contains
                .as_deref()
                .is_none_or(|text| entry.last_error().is_some_and(|message| message.contains(text)))
            && self.replayed.is_none_or(|r| r == entry.replayed_as.is_some())
    }

    /// The same filter restricted to entries not yet replayed: what a bulk replay takes.
    pub fn unreplayed(&self) -> Self {
        Self { replayed: Some(false), ..self.clone() }
    }
}

impl DlqEntry {
    /// The message of the last error: why the job died.
    pub fn last_error(&self) -> Option<&str> {
        self.errors.last().map(|e| e.message.as_str())
    }
}

/// How a replay enqueues the new job. The default keeps the dead job's queue and runs now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Enqueue into this queue instead of the dead job's.
    pub queue: Option<String>,
    /// Make the new job due this long after the replay.
    pub delay: Option<Duration>,
}

/// How many entries one (queue, job name) pair holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqCount {
    /// The queue.
    pub queue: String,
    /// The job name.
    pub name: String,
    /// How many entries.
    pub count: u64,
}

/// The most entries one bulk store call ([`DlqStore::replay_dlq_matching`],
/// [`DlqStore::purge_dlq`]) is asked to touch: callers loop in batches of at most this many,
/// so no call holds a long lock.
///
/// [`DlqStore::replay_dlq_matching`]: crate::DlqStore::replay_dlq_matching
/// [`DlqStore::purge_dlq`]: crate::DlqStore::purge_dlq
pub const DLQ_BATCH: usize = 1000;

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
