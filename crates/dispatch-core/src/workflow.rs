//! Durable workflow runs: their records, checkpoints, correlated events, and the
//! [`WorkflowStore`](crate::WorkflowStore) contract.
//!
//! A run is advanced by one *drive job* of the job runtime at a time. The drive job's lease
//! fences every write a drive makes ([`LeaseRef`](crate::LeaseRef) on each call): a drive whose lease was lost
//! (its worker stalled, the job was rescued and claimed again) can not write a checkpoint, suspend
//! or end the run. Starting a run creates the run and its drive job in one store operation.
//!
//! # Checkpoints
//!
//! A checkpoint is a key and opaque bytes, written by the runtime (step results, timers, event
//! deliveries). Keys are unique per run; writing a key again replaces it. Resume reads the run
//! and all its checkpoints in one call ([`WorkflowStore::load_snapshot`](crate::WorkflowStore::load_snapshot)), in write order.
//!
//! # Suspension
//!
//! A run waits (a durable sleep, an event) by [`suspend_run`](crate::WorkflowStore::suspend_run): in one
//! store operation the run becomes suspended, its event waits are registered, and its drive job
//! is *finished* by the store as a snooze until the earliest wake time (the finish records the
//! lease token, so the runtime's own finish of that attempt is answered
//! [`AlreadyApplied`](crate::FinishResult::AlreadyApplied)). A suspended run holds no worker
//! slot. When an event for one of its waits was already waiting in the store, it is delivered
//! then and the run does not suspend. A suspension also says, in a user's words, what the run
//! waits for ([`WaitingFor`]: a sleep, an event, a child run, a step's retry backoff); the store
//! keeps it as [`Run::waiting`] while the run stays suspended and clears it when the run is
//! driven again or ends.
//!
//! The waits a suspension lists are the run's waits from then on: waits registered by an earlier
//! suspension and not listed again (a branch the workflow dropped) are removed, so they can not
//! take events meant for other runs. A wait registered earlier and listed again may have
//! received its event while the run was being driven (the drive re-runs from the checkpoints it
//! loaded): a suspension that finds one of its waits' checkpoints already written answers
//! [`SuspendOutcome::Delivered`] and changes nothing, so the drive goes on with the event.
//!
//! # Events
//!
//! An event has a name, a correlation key and a tenant scope. Publishing delivers it, in the same
//! store operation, to the oldest wait registered on that (name, key, scope) — one event, one
//! waiter — or, for a broadcast, to every such wait registered at that moment. Delivery writes the
//! wait's checkpoint (the payload) and makes the waiting run's drive job available at once. A
//! non-broadcast event nobody waits for is kept for its `keep_for` and taken by the first
//! wait registered before then. A wait that times out is removed atomically with the check
//! that nothing was delivered ([`resolve_wait`](crate::WorkflowStore::resolve_wait)), so an event
//! is never delivered to a wait that already gave up.
//!
//! # Failure of the drive job
//!
//! When a run's drive job dies (out of attempts: crashes, rescues), the store ends the run
//! failed in the same operation, with the job's last error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{EventId, JobId, RunId};
use crate::scope::Scope;
use crate::time::Timestamp;

/// The cancel reason a store records on a run when its drive job is cancelled
/// ([`JobStore::request_job_cancel`](crate::JobStore::request_job_cancel) of a drive job whose run has
/// not ended is the run's cancel request).
pub const DRIVE_JOB_CANCEL_REASON: &str = "cancelled through its drive job";

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Being driven, or waiting for a worker to drive it.
    Running,
    /// Waiting for a timer or an event; its drive job is scheduled for the wake time.
    Suspended,
    /// Returned its output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 5] =
        [Self::Running, Self::Suspended, Self::Completed, Self::Failed, Self::Cancelled];

    /// The stable lowercase name stores write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Suspended => "suspended",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::invalid_input(format!("unknown run state {s:?}")))
    }
}

/// A run to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    /// The run's ID (chosen by the caller, so it is known before the store answers).
    pub id: RunId,
    /// The workflow name.
    pub name: String,
    /// The workflow version the run is bound to.
    pub version: u32,
    /// The encoded input.
    pub input: Vec<u8>,
    /// Tenant scope; events reach the run only within it.
    pub scope: Scope,
    /// When set, a second start with the same workflow name and key returns the first run
    /// instead of starting another ([`Started::Existing`]).
    pub idempotency_key: Option<String>,
    /// The run that started this one as a child.
    pub parent: Option<RunId>,
}

impl NewRun {
    /// Check the input against the payload limit ([`ErrorKind::PayloadTooLarge`](crate::ErrorKind::PayloadTooLarge)).
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        let what = format!("input of run {} ({})", self.id, self.name);
        crate::codec::check_size(&what, self.input.len(), max_payload_bytes)
    }
}

/// What a start did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// The run and its drive job were created.
    Created(RunId),
    /// A run with the same workflow name and idempotency key exists; nothing was created.
    Existing(RunId),
}

impl Started {
    /// The run's ID (new or existing).
    pub fn id(self) -> RunId {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }
}

/// A workflow run, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The run's ID.
    pub id: RunId,
    /// The workflow name.
    pub name: String,
    /// The workflow version it runs on.
    pub version: u32,
    /// Its state.
    pub state: RunState,
    /// The encoded input.
    pub input: Vec<u8>,
    /// The encoded output, once completed.
    pub output: Option<Vec<u8>>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Tenant scope.
    pub scope: Scope,
    /// The idempotency key it was started with.
    pub idempotency_key: Option<String>,
    /// The parent run, for a child.
    pub parent: Option<RunId>,
    /// The job that drives it (one per run, snoozed while the run is suspended).
    pub drive_job: JobId,
    /// When it was started (store clock).
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Why it was asked to stop ([`WorkflowStore::request_run_cancel`](crate::WorkflowStore::request_run_cancel)), while it winds down.
    pub cancel_requested: Option<String>,
    /// What it waits for while suspended, as its last suspension listed it
    /// ([`Suspend::waiting`]); empty in every other state.
    pub waiting: Vec<WaitingFor>,
}

/// One thing a suspended run waits for, as [`Run::waiting`] lists it. A run may wait for
/// several at once (parallel branches, a `select!` of a sleep and an event); it wakes at the
/// earliest of their times, and at its own timeout at the latest.
///
/// Stores keep it as JSON (`{"kind": "event", "name": …}`, times as µs since the epoch): the
/// variants and field names are a persisted format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitingFor {
    /// A durable sleep (`sleep`, `sleep_until`).
    Sleep {
        /// When it ends (store clock).
        until: Timestamp,
    },
    /// An event (`wait_for_event`).
    Event {
        /// The event name.
        name: String,
        /// The correlation key.
        correlation: String,
        /// When the wait gives up (store clock).
        deadline: Timestamp,
    },
    /// A child run to end (`child`, `join_child`, `fan_out`).
    Child {
        /// The child run.
        run: RunId,
        /// When the waiting run gives up on it (its own timeout), if it has one.
        deadline: Option<Timestamp>,
    },
    /// A step's backoff before its next attempt, after a failed one.
    Retry {
        /// The step's checkpoint key (its name, with its branch and call number).
        step: String,
        /// The attempt that runs next (the first is 1).
        attempt: u32,
        /// When it runs (store clock).
        at: Timestamp,
    },
}

impl WaitingFor {
    /// A run's waits as a SQL store keeps them in one column: JSON text, or `None` (NULL) for
    /// none.
    pub fn to_column(waiting: &[Self]) -> Result<Option<String>> {
        if waiting.is_empty() {
            return Ok(None);
        }
        serde_json::to_string(waiting)
            .map(Some)
            .map_err(|e| Error::internal(format!("could not encode a run's waits: {e}")))
    }

    /// The waits of a run in `state`, read back from its [`to_column`](Self::to_column) value.
    /// Only a suspended run waits for anything, so a value a statement left behind on another
    /// state is never shown. A value that does not decode is a corrupt row (`Internal`).
    pub fn from_column(state: RunState, stored: Option<&str>) -> Result<Vec<Self>> {
        match stored {
            Some(json) if state == RunState::Suspended => serde_json::from_str(json)
                .map_err(|e| Error::internal(format!("corrupt run waiting {json:?}: {e}"))),
            _ => Ok(Vec::new()),
        }
    }

    /// When this wait ends at the latest, if it has a time of its own.
    pub fn wakes_at(&self) -> Option<Timestamp> {
        match self {
            Self::Sleep { until } => Some(*until),
            Self::Event { deadline, .. } => Some(*deadline),
            Self::Child { deadline, .. } => *deadline,
            Self::Retry { at, .. } => Some(*at),
        }
    }
}

/// A checkpoint to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCheckpoint {
    /// Unique per run; writing a key again replaces its data.
    pub key: String,
    /// Opaque to the store.
    pub data: Vec<u8>,
}

impl NewCheckpoint {
    /// A checkpoint of `data` under `key`.
    pub fn new(key: impl Into<String>, data: Vec<u8>) -> Self {
        Self { key: key.into(), data }
    }
}

impl NewCheckpoint {
    /// Check the data against the payload limit ([`ErrorKind::PayloadTooLarge`](crate::ErrorKind::PayloadTooLarge)).
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        // Every step's write comes here: name the checkpoint only for the error.
        if self.data.len() <= max_payload_bytes {
            return Ok(());
        }
        let what = format!("checkpoint {:?}", self.key);
        crate::codec::check_size(&what, self.data.len(), max_payload_bytes)
    }

    /// [`validate`](Self::validate) every checkpoint of a write; the first over the limit fails
    /// it, so nothing of the write is stored.
    pub fn validate_all(checkpoints: &[Self], max_payload_bytes: usize) -> Result<()> {
        checkpoints.iter().try_for_each(|c| c.validate(max_payload_bytes))
    }
}

/// A stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its key.
    pub key: String,
    /// Its data.
    pub data: Vec<u8>,
    /// When it was (last) written (store clock).
    pub at: Timestamp,
}

/// A run with every checkpoint it has, in write order (a rewritten key keeps its first place):
/// what a drive needs to resume, in one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSnapshot {
    /// The run.
    pub run: Run,
    /// Its checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// The store's clock at the load: the drive measures time from it (durable sleeps and
    /// wait deadlines are absolute times on the store's clock, never the application's).
    pub now: Timestamp,
}

/// One event a suspending run waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventWait {
    /// The checkpoint key a delivery writes (with the event's payload).
    pub key: String,
    /// The event name.
    pub name: String,
    /// The correlation key.
    pub correlation: String,
    /// When the wait gives up; the run's drive job is due then at the latest.
    pub deadline: Timestamp,
}

/// A run suspending: until a time, and/or until events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspend {
    /// The run.
    pub run: RunId,
    /// Wake at this time (a durable sleep), if set.
    pub until: Option<Timestamp>,
    /// Events to wait for; registered, or delivered now when one is already stored.
    pub waits: Vec<EventWait>,
    /// What the run waits for, in words a user reads: stored as the run's
    /// [`Run::waiting`] while it is suspended (the store does not interpret it).
    pub waiting: Vec<WaitingFor>,
}

impl Suspend {
    /// When the drive job is due: the earliest of `until` and every wait's deadline.
    pub fn wake_at(&self) -> Option<Timestamp> {
        self.waits.iter().map(|w| w.deadline).chain(self.until).min()
    }

    /// [`wake_at`](Self::wake_at), which a store's suspend requires: `InvalidInput` when there
    /// is nothing to wake for (no time and no wait).
    pub fn required_wake_at(&self) -> Result<Timestamp> {
        self.wake_at().ok_or_else(|| {
            Error::invalid_input("a suspend needs a wake time or an event to wait for")
        })
    }
}

/// What a suspend did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// The run is suspended and its drive job snoozed until this time; the attempt is over.
    Suspended {
        /// When the drive job is due.
        wake_at: Timestamp,
    },
    /// A stored event was delivered to one of the waits at once (its checkpoint is written):
    /// nothing was suspended and the drive goes on.
    Delivered,
    /// The run has a cancel request: nothing was suspended or registered; the drive goes on to
    /// wind the run down.
    CancelRequested,
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunCancel {
    /// Recorded: the run stops at its next step or suspension (a waiting run's drive job is
    /// due at once), runs its compensations and ends cancelled.
    Requested,
    /// The run had already ended in this state; nothing changed.
    AlreadyFinal(RunState),
}

/// How a wait ended, as [`resolve_wait`](crate::WorkflowStore::resolve_wait) settles it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitResolution {
    /// An event was delivered: its payload.
    Delivered(Vec<u8>),
    /// Nothing was delivered; the wait is removed and can no longer receive one.
    TimedOut,
}

/// How a run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Completed with this encoded output.
    Completed(Vec<u8>),
    /// Failed with this error.
    Failed(String),
    /// Cancelled, with this reason.
    Cancelled(String),
}

impl RunEnd {
    /// The state this end leaves the run in.
    pub fn state(&self) -> RunState {
        match self {
            Self::Completed(_) => RunState::Completed,
            Self::Failed(_) => RunState::Failed,
            Self::Cancelled(_) => RunState::Cancelled,
        }
    }
}

/// An event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's ID.
    pub id: EventId,
    /// The event name.
    pub name: String,
    /// The correlation key: which runs it concerns.
    pub correlation: String,
    /// The payload delivered to the waiting run.
    pub payload: Vec<u8>,
    /// Tenant scope: only runs of this scope receive it.
    pub scope: Scope,
    /// Deliver to every run waiting now (not kept for later waiters).
    pub broadcast: bool,
    /// How long a non-broadcast event that no run waits for yet is kept for a later wait,
    /// from the publish (store clock).
    pub keep_for: std::time::Duration,
}

impl NewEvent {
    /// Check the payload against the payload limit ([`ErrorKind::PayloadTooLarge`](crate::ErrorKind::PayloadTooLarge)).
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        let what = format!("payload of event {:?}", self.name);
        crate::codec::check_size(&what, self.payload.len(), max_payload_bytes)
    }
}

/// What a publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The runs it was delivered to (their drive jobs are due now).
    pub delivered_to: Vec<RunId>,
    /// Whether it was kept for a later wait (nobody waited).
    pub kept: bool,
}

/// Which runs a listing returns. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this state.
    pub state: Option<RunState>,
    /// Only this workflow name.
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON stores keep: what older code wrote must still read.
    #[test]
    fn run_waits_keep_their_json_form() {
        let child: RunId = "wfrun_01jdzr3kv4f3fb0qtz0ytb4g3c".parse().unwrap();
        let waits = vec![
            WaitingFor::Sleep { until: Timestamp::from_unix_micros(5) },
            WaitingFor::Event {
                name: "paid".into(),
                correlation: "order-7".into(),
                deadline: Timestamp::from_unix_micros(6),
            },
            WaitingFor::Child { run: child, deadline: None },
            WaitingFor::Retry {
                step: "s:charge#1".into(),
                attempt: 2,
                at: Timestamp::from_unix_micros(7),
            },
        ];
        let json = r#"[{"kind":"sleep","until":5},{"kind":"event","name":"paid","correlation":"order-7","deadline":6},{"kind":"child","run":"wfrun_01jdzr3kv4f3fb0qtz0ytb4g3c","deadline":null},{"kind":"retry","step":"s:charge#1","attempt":2,"at":7}]"#;
        assert_eq!(serde_json::to_string(&waits).unwrap(), json);
        assert_eq!(serde_json::from_str::<Vec<WaitingFor>>(json).unwrap(), waits);
    }

    #[test]
    fn a_run_wait_wakes_at_its_own_time() {
        let at = Timestamp::from_unix_micros(9);
        assert_eq!(WaitingFor::Sleep { until: at }.wakes_at(), Some(at));
        let child = WaitingFor::Child { run: RunId::new(), deadline: None };
        assert_eq!(child.wakes_at(), None);
    }
}
