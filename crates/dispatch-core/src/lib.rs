//! The core of Dispatch: IDs, records, store traits, errors, clock, payload codec, backoff and
//! hook types. Every other Dispatch crate depends on it.
//!
//! Depend on it directly when you write a store (implement the traits of [`store`] for the
//! concerns your store keeps, then run `dispatch-store-tests`) or integrate Dispatch into a
//! framework. Applications use the `dispatch` crate instead. This crate runs nothing: no worker
//! loop, no SQL, no spawned tasks.
//!
//! Key types: [`JobStore`], [`DlqStore`], [`WorkflowStore`], [`Job`], [`NewJob`], [`Lease`],
//! [`Error`], [`Clock`], [`Backoff`], [`Hook`]; the job state machine as plain functions in
//! [`transition`].

pub mod backoff;
pub mod cluster;
pub mod codec;
pub mod cron;
pub mod dlq;
pub mod error;
pub mod flow;
pub mod hook;
pub mod id;
pub mod intercept;
pub mod job;
pub mod page;
pub mod retention;
pub mod scope;
pub mod store;
pub mod time;
pub mod transition;
pub mod wake;
pub mod workflow;

#[doc(inline)]
pub use backoff::Backoff;
#[doc(inline)]
pub use cluster::{
    DEFAULT_LEADERSHIP, Leader, LeaderWrite, SweepReport, WorkerHeartbeat, WorkerRecord,
    WorkerRegistration, WorkerState,
};
#[doc(inline)]
pub use cron::{
    CatchUp, CronEntry, CronFilter, CronFire, CronFireOutcome, CronJob, CronRecord, DueCron,
    Overlap,
};
#[doc(inline)]
pub use dlq::{DlqCount, DlqEntry, DlqFilter, Replay, ReplayOptions};
#[doc(inline)]
pub use error::{Error, ErrorKind, Result};
#[doc(inline)]
pub use flow::{
    Admission, Candidate, ClaimOrder, ConcurrencyKey, GateState, Limits, ProgressUpdate,
    QueueConfig, QueueFlow, Rate,
};
#[doc(inline)]
pub use hook::{CronInfo, CronSkip, Event, Hook, JobInfo, RunInfo};
#[doc(inline)]
pub use id::{CronId, DlqId, EventId, JobId, RunId, WorkerId};
#[doc(inline)]
pub use intercept::{Call, CallKind, Intercepted, Interceptor, Reply};
#[doc(inline)]
pub use job::{
    AttemptError, ClaimRequest, ClaimedJob, Enqueued, Failure, FailureKind, Finish, FinishResult,
    HeartbeatReport, Job, JobCancel, JobFilter, JobState, Lease, LeaseRef, LeaseToken, NewJob,
    Outcome, QueueCount, RescueReport, RunAt, UniqueKey,
};
#[doc(inline)]
pub use page::{Page, PageRequest};
#[doc(inline)]
pub use retention::{Cutoffs, PruneReport, RetentionPolicy};
#[doc(inline)]
pub use scope::Scope;
#[doc(inline)]
pub use store::{
    ClusterStore, CronStore, DlqStore, EnqueueTransaction, FlowStore, JobStore, LeadershipStore,
    MembershipStore, RetentionStore, WorkflowStore,
};
#[doc(inline)]
pub use time::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
#[doc(inline)]
pub use wake::{ListenerState, Wakeup, WakeupHub, WakeupStream};
#[doc(inline)]
pub use workflow::{
    Checkpoint, DRIVE_JOB_CANCEL_REASON, EventWait, NewCheckpoint, NewEvent, NewRun, Published,
    Run, RunCancel, RunEnd, RunFilter, RunSnapshot, RunState, Started, Suspend, SuspendOutcome,
    WaitResolution, WaitingFor,
};
