//! Jobs: the record, its states, leases, and the [`JobStore`](crate::JobStore) contract every store implements.
//!
//! # States
//!
//! ```text
//!             enqueue                     claim (spends an attempt, writes a lease)
//!   ─────────────────────► available ───────────────────────────────► running
//!                           ▲  │ ▲ ▲                                      │
//!    request_job_cancel         │  │ │ └── retry (attempts left) / rescue ────┤
//!    (not running)          │  │ └──── snooze / release (attempt back) ───┤
//!                           │  ▼                                          ├── complete ──► completed
//!                     cancelled ◄──── cancel (holder, after a request) ───┤
//!                                                                          ├── fail (permanent) ──► dead
//!   replay (DLQ) makes a new job                                           └── retry/rescue, no attempts left ──► dead
//! ```
//!
//! * **available**: waiting for its `run_at`; scheduled jobs and jobs waiting out a retry backoff
//!   are available with a future `run_at`. Only `claim` moves it to running; only
//!   `request_job_cancel` moves it to cancelled.
//! * **running**: held under a [`Lease`]. Only the holder of the lease token moves it on (finish,
//!   heartbeat), and `rescue_expired` once the lease has expired.
//! * **completed**, **cancelled**, **dead**: final. A dead job has a DLQ entry, written in the
//!   same store operation that made it dead.
//!
//! # Attempts
//!
//! `max_attempts` counts the first run. Claiming spends one attempt. A snooze and a release give it
//! back; a rescue keeps it spent, so a job that kills its worker every time ends in the DLQ.
//!
//! # Fencing
//!
//! Each claim makes a fresh [`LeaseToken`]. Every transition of a running job names the token, and
//! the store applies it only while that token holds the lease. A worker that lost its lease can
//! not overwrite the new holder's work: it gets [`FinishResult::LeaseLost`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::check_payload_size;
use crate::error::{Error, Result};
use crate::id::{DlqId, JobId, WorkerId};
use crate::scope::Scope;
use crate::time::Timestamp;

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";
/// The attempts a job gets when none are named (the first run included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;
/// The longest job name or queue name a store accepts, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Where a job is in its life. See the [module docs](self) for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its run-at time, or ready to be claimed.
    Available,
    /// Claimed by a worker under a lease.
    Running,
    /// Finished successfully.
    Completed,
    /// Cancelled before or while it ran.
    Cancelled,
    /// Failed for good; its DLQ entry holds the details.
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 5] =
        [Self::Available, Self::Running, Self::Completed, Self::Cancelled, Self::Dead];

    /// The stable lowercase name stores persist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    /// Whether no transition leaves this state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::invalid_input(format!("unknown job state {s:?}")))
    }
}

/// When a job becomes claimable. Relative times are resolved by the store with its own clock, so
/// an application whose clock is off still schedules a "2 s from now" job 2 s from now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunAt {
    /// At once.
    #[default]
    Now,
    /// At this time.
    At(Timestamp),
    /// This long after the store receives the call.
    After(Duration),
}

impl RunAt {
    /// The absolute time, given the store's `now`.
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            Self::Now => now,
            Self::At(t) => t,
            Self::After(d) => now + d,
        }
    }
}

/// A uniqueness constraint on an enqueue. Keys are scoped by job name: two jobs of one name
/// with one key can not both be available or running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueKey {
    /// The key.
    pub key: String,
    /// When set, the key stays held for this long after the holder's enqueue, even after the
    /// holder finished.
    pub window: Option<Duration>,
}

/// At most `limit` running jobs share `key`, fleet-wide and across queues (see
/// [`crate::flow`]). Set at enqueue; a job is admitted while fewer than its own `limit` jobs
/// with the key run, so the jobs of one key should carry the same limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConcurrencyKey {
    /// The key (e.g. a customer's ID).
    pub key: String,
    /// The most running jobs with this key (at least 1).
    pub limit: u32,
}

impl ConcurrencyKey {
    /// At most `limit` running jobs with `key`.
    pub fn new(key: impl Into<String>, limit: u32) -> Self {
        Self { key: key.into(), limit }
    }

    /// Check the key before a store keeps it.
    pub fn validate(&self) -> Result<()> {
        if self.key.is_empty() || self.key.len() > MAX_NAME_LEN || self.limit == 0 {
            return Err(Error::invalid_input(format!(
                "concurrency key must be 1 to {MAX_NAME_LEN} bytes with a limit ≥ 1, got {:?} \
                 ({} bytes) limit {}",
                self.key,
                self.key.len(),
                self.limit
            )));
        }
        Ok(())
    }
}

/// A job not yet stored: what enqueue takes. Store-independent, so it can also be written inside
/// an application's own transaction by stores that offer that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// The job's ID, chosen by the caller so it is known before the store answers.
    pub id: JobId,
    /// The job name: which handler runs it.
    pub name: String,
    /// The queue it waits in.
    pub queue: String,
    /// The encoded input.
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// When it becomes claimable.
    pub run_at: RunAt,
    /// Attempts allowed, the first included; at least 1.
    pub max_attempts: u32,
    /// How long one attempt may run; `None` means no limit.
    pub timeout: Option<Duration>,
    /// Uniqueness constraint, if any.
    pub unique: Option<UniqueKey>,
    /// Tenant scope.
    pub scope: Scope,
    /// At most this many running jobs share the key, fleet-wide (see [`crate::flow`]).
    pub concurrency: Option<ConcurrencyKey>,
}

impl NewJob {
    /// A job of `name` with `payload` and default options: queue `default`, priority 0, now,
    /// [`DEFAULT_MAX_ATTEMPTS`], no timeout, not unique, no scope.
    pub fn new(name: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            id: JobId::new(),
            name: name.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload,
            priority: 0,
            run_at: RunAt::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            unique: None,
            scope: Scope::default(),
            concurrency: None,
        }
    }

    /// Check what a store checks before it writes anything: names, attempts, payload size.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        check_name("job name", &self.name)?;
        check_name("queue name", &self.queue)?;
        if self.max_attempts == 0 {
            return Err(Error::invalid_input(format!(
                "job {:?}: max_attempts must be at least 1",
                self.name
            )));
        }
        if self.unique.as_ref().is_some_and(|u| u.key.is_empty()) {
            return Err(Error::invalid_input(format!(
                "job {:?}: unique key must not be empty",
                self.name
            )));
        }
        if let Some(key) = &self.concurrency {
            key.validate()?;
        }
        check_payload_size(&self.name, self.payload.len(), max_payload_bytes)
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid_input(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// What an enqueue did with one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enqueued {
    /// The job was stored under this ID.
    Created(JobId),
    /// A job holding the same unique key exists; this is its ID. Nothing new was stored.
    Duplicate(JobId),
}

impl Enqueued {
    /// The ID of the stored job (new or existing).
    pub fn id(self) -> JobId {
        match self {
            Self::Created(id) | Self::Duplicate(id) => id,
        }
    }

    /// Whether the enqueue found an existing job.
    pub fn is_duplicate(self) -> bool {
        matches!(self, Self::Duplicate(_))
    }
}

/// Identifies one claim of one job; unique per claim.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    /// A fresh random token.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// From a stored UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID, for storage.
    pub fn uuid(self) -> Uuid {
        self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", self.0.simple())
    }
}

/// The right of one worker to run one job until `expires_at`, unless renewed by a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker holding it.
    pub owner: WorkerId,
    /// Unique to this claim; every transition names it.
    pub token: LeaseToken,
    /// When it lapses, making the job rescuable.
    pub expires_at: Timestamp,
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler panicked.
    Panic,
    /// The attempt ran past its timeout.
    Timeout,
    /// The payload did not decode as the handler's input type.
    Decode,
    /// The worker holding the lease stopped heartbeating (crashed, hung, partitioned).
    LeaseExpired,
    /// The worker holding the lease was marked gone by the cluster's leader: its registry
    /// heartbeat stopped for longer than the worker timeout (dead-worker takeover).
    WorkerLost,
}

impl FailureKind {
    /// The stable lowercase name stores persist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Decode => "decode",
            Self::LeaseExpired => "lease_expired",
            Self::WorkerLost => "worker_lost",
        }
    }
}

/// A failed attempt as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Why.
    pub kind: FailureKind,
    /// The error message.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A failed attempt as the store keeps it: every attempt's error is kept on the job and copied
/// into its DLQ entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Which attempt failed (1-based).
    pub attempt: u32,
    /// Why.
    pub kind: FailureKind,
    /// The error message.
    pub message: String,
    /// When the store recorded it (store clock).
    pub at: Timestamp,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its ID.
    pub id: JobId,
    /// The job name.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// The encoded input.
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// Where it is in its life.
    pub state: JobState,
    /// Attempts spent so far (the running attempt included).
    pub attempt: u32,
    /// Attempts allowed, the first included.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout: Option<Duration>,
    /// When it becomes (or became) claimable.
    pub run_at: Timestamp,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When it reached a final state.
    pub finished_at: Option<Timestamp>,
    /// Its unique key, if it was enqueued with one.
    pub unique_key: Option<String>,
    /// Tenant scope.
    pub scope: Scope,
    /// The current lease; `Some` exactly while running.
    pub lease: Option<Lease>,
    /// Whether a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// Its DLQ entry, once dead.
    pub dlq_id: Option<DlqId>,
    /// Its concurrency key, when enqueued with one.
    pub concurrency: Option<ConcurrencyKey>,
    /// The last progress its handler reported (any JSON), kept across retries.
    pub progress: Option<serde_json::Value>,
}

/// What a claim asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claiming worker; becomes the lease owner.
    pub worker: WorkerId,
    /// Queues to claim from.
    pub queues: Vec<String>,
    /// Job names this worker has handlers for; jobs of other names are left alone. Empty claims
    /// nothing.
    pub names: Vec<String>,
    /// The most jobs to claim (the worker's free slots).
    pub limit: usize,
    /// How long each lease lasts before it needs a heartbeat.
    pub lease_ttl: Duration,
    /// The token every lease this claim writes carries. The claiming worker makes it, fresh per
    /// call, so that when the claim's answer is lost (a timeout, a dropped connection after the
    /// commit) it can still give the leases back with [`JobStore::release_claim`](crate::JobStore::release_claim): no lease is
    /// left that nobody holds.
    pub token: LeaseToken,
}

/// A job just claimed, with the lease the worker now holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedJob {
    /// The job, in state running, its attempt already spent.
    pub job: Job,
    /// The lease (also in `job.lease`).
    pub lease: Lease,
}

/// Names one held lease: the job and the claim's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The job.
    pub job_id: JobId,
    /// The token of the claim.
    pub token: LeaseToken,
}

/// How a worker ends an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success: the job completes.
    Complete,
    /// A failure worth retrying. The job becomes available at `run_at`, or dead (with a DLQ
    /// entry) when no attempts are left.
    Retry {
        /// What went wrong.
        failure: Failure,
        /// When to try again (the backoff).
        run_at: RunAt,
    },
    /// A failure not worth retrying: the job is dead at once, with a DLQ entry.
    Fail {
        /// What went wrong.
        failure: Failure,
    },
    /// Not now: the job becomes available at `run_at` and gets its attempt back.
    Snooze {
        /// When to try again.
        run_at: RunAt,
    },
    /// The job is cancelled (after a cancel request, or by the handler's own choice).
    Cancel,
    /// Shutdown: the job becomes available at once and gets its attempt back.
    Release,
}

impl Outcome {
    /// The stable lowercase name of the outcome, as SQL and Lua stores spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Retry { .. } => "retry",
            Self::Fail { .. } => "fail",
            Self::Snooze { .. } => "snooze",
            Self::Cancel => "cancel",
            Self::Release => "release",
        }
    }

    /// The failure a retry or a fail records; `None` for the other outcomes.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Retry { failure, .. } | Self::Fail { failure } => Some(failure),
            _ => None,
        }
    }

    /// When a retry or a snooze makes the job available again; `None` for the other outcomes.
    pub fn run_at(&self) -> Option<RunAt> {
        match self {
            Self::Retry { run_at, .. } | Self::Snooze { run_at } => Some(*run_at),
            _ => None,
        }
    }
}

/// One finish: end the attempt held by `lease` with `outcome`.
///
/// A cancel request wins over running again: when the job has a cancel request, an outcome that
/// would make it available again (retry, snooze, release) ends it cancelled instead (a retry's
/// failure is still recorded). Complete, fail and cancel apply as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// The lease being ended.
    pub lease: LeaseRef,
    /// How.
    pub outcome: Outcome,
}

/// What a finish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishResult {
    /// The transition happened; the job is now in `state`, and `dlq_id` is set when it was
    /// promoted to the DLQ.
    Applied {
        /// The job's new state.
        state: JobState,
        /// The DLQ entry made, when the job became dead.
        dlq_id: Option<DlqId>,
    },
    /// The last finish applied to this job carried this token (a retried call); nothing changed.
    AlreadyApplied,
    /// The token no longer holds the lease (expired and rescued, the job is gone, or a later
    /// attempt has finished since); nothing changed.
    LeaseLost,
}

/// What a heartbeat found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// Leases extended (those with a cancel request included).
    pub renewed: Vec<JobId>,
    /// Leases the caller no longer holds: stop those handlers, their results will be refused.
    pub lost: Vec<JobId>,
    /// Renewed leases whose job has a cancel request: cancel those handlers and finish with
    /// [`Outcome::Cancel`].
    pub cancel_requested: Vec<JobId>,
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCancel {
    /// The job was available and is now cancelled; it will never be claimed.
    Cancelled,
    /// The job is running; the request is recorded and its holder learns of it at its next
    /// heartbeat.
    Requested,
    /// The job had already reached this final state; nothing changed.
    AlreadyFinal(JobState),
}

/// What a rescue did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescueReport {
    /// Jobs whose lease had expired and that are available again (attempt still spent).
    pub rescued: Vec<JobId>,
    /// Jobs whose lease had expired with no attempts left: now dead, with these DLQ entries.
    pub promoted: Vec<(JobId, DlqId)>,
    /// Jobs whose lease had expired after a cancel request: now cancelled.
    pub cancelled: Vec<JobId>,
}

impl RescueReport {
    /// Whether the rescue changed nothing.
    pub fn is_empty(&self) -> bool {
        self.rescued.is_empty() && self.promoted.is_empty() && self.cancelled.is_empty()
    }
}

/// Which jobs a listing returns. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this job name.
    pub name: Option<String>,
}

/// The number of jobs in one queue in one state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: JobState,
    /// How many.
    pub count: u64,
}
