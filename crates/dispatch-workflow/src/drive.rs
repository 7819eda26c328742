//! One drive of a run: the state its primitives share while the workflow function re-runs from the top, and
//! the loop that runs the function until it returns, suspends, or is fenced out.
//!
//! The function re-runs from the top on every drive; primitives answer from the checkpoints
//! loaded at the start (no store call for a finished step), so a resume costs one read however
//! many steps are done. A primitive that must wait (a sleep, an event, a step's retry backoff)
//! records why and never completes; once no step is executing anywhere in the function, the
//! drive drops the function's future and suspends the run in one store call.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use dispatch_core::{
    Error, ErrorKind, Event, EventWait, LeaseRef, NewCheckpoint, RunInfo, Suspend, Timestamp,
    WaitingFor, WorkflowStore,
};
use dispatch_job::HookBus;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{StepError, WorkflowError};
use crate::policy::StepPolicy;
use crate::record::{Key, Kind};

/// How often a drive asks the store whether its run was cancelled (at step boundaries).
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a drive stopped before the function returned.
#[derive(Debug)]
pub(crate) enum Halt {
    /// The run waits: suspend it.
    Suspend(Suspend),
    /// A store call failed: end this attempt (the drive job retries) or, for `LeaseLost`, stop.
    Store(Error),
}

/// How the function's run ended.
pub(crate) enum Ended {
    Returned(Result<Vec<u8>, WorkflowError>),
    Panicked(String),
    Halted(Halt),
}

#[derive(Default)]
struct Pending {
    /// Steps (and checkpoint writes) executing now.
    active: usize,
    until: Option<Timestamp>,
    /// What the sleeps and backoffs behind `until` are, for the run's `waiting`.
    sleeps: Vec<WaitingFor>,
    /// Event waits, each with what it means to the user (an event, or a child's end).
    waits: Vec<(EventWait, WaitingFor)>,
    failed: Option<Error>,
}

/// A compensation registered by a completed step, ready to run.
pub(crate) type Compensation =
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), StepError>> + Send + Sync>;

/// A registered compensation: the key of the step it undoes, its own checkpoint key, and it.
pub(crate) struct Undo {
    pub(crate) step: String,
    pub(crate) key: String,
    pub(crate) compensation: Compensation,
}

/// The state one drive's primitives share.
pub(crate) struct Drive {
    pub(crate) store: Arc<dyn WorkflowStore>,
    pub(crate) lease: LeaseRef,
    pub(crate) run: RunInfo,
    pub(crate) policy: StepPolicy,
    pub(crate) hooks: HookBus,
    checkpoints: Mutex<HashMap<String, Vec<u8>>>,
    /// The store's clock at the load, and when the load was asked for by this process's
    /// monotonic clock (no later than the store read its clock, so `now` is never behind).
    base: (Timestamp, tokio::time::Instant),
    pending: Mutex<Pending>,
    idle: Notify,
    /// When the run times out (store clock), if it has a timeout.
    deadline: Mutex<Option<Timestamp>>,
    /// Compensations of completed steps, in completion order.
    compensations: Mutex<Vec<Undo>>,
    /// Set while compensations run: they run past the deadline and a cancel request.
    compensating: std::sync::atomic::AtomicBool,
    /// The run's cancel request, once known, and when the store was last asked.
    cancel: Mutex<(Option<String>, tokio::time::Instant)>,
}

impl Drive {
    pub(crate) fn new(
        store: Arc<dyn WorkflowStore>,
        lease: LeaseRef,
        run: RunInfo,
        policy: StepPolicy,
        hooks: HookBus,
        (snapshot, asked_at): (&dispatch_core::RunSnapshot, tokio::time::Instant),
    ) -> Self {
        let checkpoints =
            snapshot.checkpoints.iter().map(|c| (c.key.clone(), c.data.clone())).collect();
        Self {
            store,
            lease,
            run,
            policy,
            hooks,
            checkpoints: Mutex::new(checkpoints),
            base: (snapshot.now, asked_at),
            pending: Mutex::new(Pending::default()),
            idle: Notify::new(),
            deadline: Mutex::new(None),
            compensations: Mutex::new(Vec::new()),
            compensating: std::sync::atomic::AtomicBool::new(false),
            cancel: Mutex::new((
                snapshot.run.cancel_requested.clone(),
                tokio::time::Instant::now(),
            )),
        }
    }

    /// Now, on the store's clock.
    pub(crate) fn now(&self) -> Timestamp {
        self.base.0 + self.base.1.elapsed()
    }

    /// The data of checkpoint `key`, if written.
    pub(crate) fn checkpoint(&self, key: &str) -> Option<Vec<u8>> {
        self.checkpoints.lock().get(key).cloned()
    }

    /// Write checkpoint `key`, fenced by the drive's lease. On failure the drive halts: this
    /// future never completes.
    pub(crate) async fn write(&self, key: String, data: Vec<u8>) {
        let active = self.begin();
        let write = vec![NewCheckpoint::new(key.clone(), data.clone())];
        match self.store.save_checkpoints(self.lease, self.run.id, write).await {
            Ok(()) => {
                self.checkpoints.lock().insert(key, data);
            }
            Err(error) => {
                drop(active);
                self.fail(error).await;
            }
        }
    }

    /// Halt the drive on a failed store call. Never completes.
    pub(crate) async fn fail(&self, error: Error) {
        self.pending.lock().failed = Some(error);
        self.halt().await;
    }

    /// The run times out at `deadline`: primitives fail with a timeout from then on, and a
    /// suspension wakes at the deadline at the latest.
    pub(crate) fn set_deadline(&self, deadline: Timestamp) {
        *self.deadline.lock() = Some(deadline);
    }

    /// Whether the run must stop before its next primitive: `Err(TimedOut)` past its deadline,
    /// `Err(Cancelled)` once a cancel was requested (the store is asked at most once a second).
    /// Never while compensating.
    pub(crate) async fn check_stop(&self) -> Result<(), WorkflowError> {
        if self.compensating.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(deadline) = *self.deadline.lock()
            && self.now() >= deadline
        {
            return Err(WorkflowError::TimedOut);
        }
        let ask = {
            let cancel = self.cancel.lock();
            if let Some(reason) = &cancel.0 {
                return Err(WorkflowError::Cancelled(reason.clone()));
            }
            cancel.1.elapsed() >= CANCEL_POLL
        };
        if ask {
            let active = self.begin();
            let run = self.store.get_run(self.run.id).await;
            drop(active);
            let reason = run.ok().flatten().and_then(|run| run.cancel_requested);
            *self.cancel.lock() = (reason.clone(), tokio::time::Instant::now());
            if let Some(reason) = reason {
                return Err(WorkflowError::Cancelled(reason));
            }
        }
        Ok(())
    }

    /// The child runs this run started (from their checkpoints).
    pub(crate) fn children(&self) -> Vec<dispatch_core::RunId> {
        self.checkpoints
            .lock()
            .iter()
            .filter(|(key, _)| Key::parse(key).is_ok_and(|key| key.kind() == Kind::Child))
            .filter_map(|(_, data)| serde_json::from_slice(data).ok())
            .collect()
    }

    /// Register the compensation of a completed step.
    pub(crate) fn push_compensation(&self, undo: Undo) {
        self.compensations.lock().push(undo);
    }

    /// Take the registered compensations (completion order) and enter compensation mode.
    pub(crate) fn start_compensating(&self) -> Vec<Undo> {
        self.compensating.store(true, std::sync::atomic::Ordering::SeqCst);
        std::mem::take(&mut *self.compensations.lock())
    }

    /// Mark a step (or write) as executing until the guard drops.
    pub(crate) fn begin(&self) -> Active<'_> {
        self.pending.lock().active += 1;
        Active(self)
    }

    /// When the run times out (store clock), if it has a timeout.
    pub(crate) fn deadline(&self) -> Option<Timestamp> {
        *self.deadline.lock()
    }

    /// Wait until `until` (a sleep or a step's backoff, `why`): the run suspends (once nothing
    /// else executes). Never completes.
    pub(crate) async fn sleep_until(&self, until: Timestamp, why: WaitingFor) {
        {
            let mut pending = self.pending.lock();
            pending.until = Some(pending.until.map_or(until, |t| t.min(until)));
            pending.sleeps.push(why);
        }
        self.halt().await;
    }

    /// Wait for an event (`why`: an event, or a child's end): the run suspends with this wait
    /// registered. Never completes. A wait whose future is dropped before the run suspends (the
    /// losing branch of a `select!`) is no longer pending, so the suspension does not register
    /// it: a wait nobody listens to would take an event meant for another run.
    pub(crate) async fn wait(&self, wait: EventWait, why: WaitingFor) {
        let pending = Pending::waiting(self, wait, why);
        self.halt().await;
        drop(pending);
    }

    async fn halt(&self) {
        self.idle.notify_one();
        std::future::pending::<()>().await;
    }

    /// Why to stop now, if the function can not make progress without a suspension.
    fn halt_reason(&self) -> Option<Halt> {
        let mut pending = self.pending.lock();
        if let Some(error) = pending.failed.take() {
            return Some(Halt::Store(error));
        }
        let waiting = pending.until.is_some() || !pending.waits.is_empty();
        let deadline = *self.deadline.lock();
        (pending.active == 0 && waiting).then(|| {
            // A run with a timeout wakes at its deadline at the latest, to time out.
            let until = match (pending.until.take(), deadline) {
                (Some(until), Some(deadline)) => Some(until.min(deadline)),
                (until, deadline) => until.or(deadline),
            };
            let (waits, mut waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut pending.waits).into_iter().unzip();
            waiting.splice(0..0, std::mem::take(&mut pending.sleeps));
            Halt::Suspend(Suspend { run: self.run.id, until, waits, waiting })
        })
    }

    pub(crate) fn emit(&self, make: impl FnOnce(RunInfo) -> Event) {
        self.hooks.emit(|| make(self.run.clone()));
    }

    /// Run `function` (the workflow function, with its timeout and compensations) over this
    /// drive until it returns, panics, or halts.
    pub(crate) async fn run(
        &self,
        function: BoxFuture<'_, Result<Vec<u8>, WorkflowError>>,
    ) -> Ended {
        let mut function = AssertUnwindSafe(function).catch_unwind();
        loop {
            tokio::select! {
                biased;
                ended = &mut function => {
                    return match ended {
                        Ok(result) => Ended::Returned(result),
                        Err(panic) => Ended::Panicked(panic_message(panic.as_ref())),
                    };
                }
                () = self.idle.notified() => {
                    if let Some(halt) = self.halt_reason() {
                        return Ended::Halted(halt);
                    }
                }
            }
        }
    }
}

impl Pending {
    /// Register `wait` as pending until the returned guard drops.
    fn waiting(drive: &Drive, wait: EventWait, why: WaitingFor) -> PendingWait<'_> {
        let key = wait.key.clone();
        drive.pending.lock().waits.push((wait, why));
        PendingWait { drive, key }
    }
}

/// A wait the drive's function is blocked on; dropping it (the function moved on without it)
/// withdraws the wait. Once the drive has halted, the suspension has taken the waits already.
struct PendingWait<'a> {
    drive: &'a Drive,
    key: String,
}

impl Drop for PendingWait<'_> {
    fn drop(&mut self) {
        self.drive.pending.lock().waits.retain(|(w, _)| w.key != self.key);
    }
}

/// A step or write in progress; dropping it may let the drive suspend.
pub(crate) struct Active<'a>(&'a Drive);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().active -= 1;
        self.0.idle.notify_one();
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

/// Whether `error` means the drive was fenced out (nothing more to do).
pub(crate) fn fenced(error: &Error) -> bool {
    error.kind() == ErrorKind::LeaseLost
}
