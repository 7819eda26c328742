//! [`WorkflowContext`]: the primitives a workflow function is written with.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Event, EventWait, RunId, Timestamp, WaitResolution, WaitingFor};
use futures::FutureExt;
use futures::future::try_join_all;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::drive::{Drive, panic_message};
use crate::error::{StepError, WorkflowError};
use crate::policy::StepPolicy;
use crate::record::{self, Deadline, Kind, Path, StepRecord, TimedOut};

/// The handle a workflow function gets: steps, durable sleeps, event waits and parallel
/// branches, each checkpointed so a resumed run picks up where it stopped.
///
/// Workflow code between primitives must be deterministic (it re-runs on every resume); do
/// side effects inside steps. Call primitives in the same order on every run; within a branch,
/// a name may repeat (loops): each call gets its own checkpoint.
#[derive(Clone)]
pub struct WorkflowContext {
    drive: Arc<Drive>,
    /// This branch (the prefix of its checkpoint keys).
    path: Path,
    /// Calls so far in this branch, per kind and name (nested, so counting a name seen before
    /// allocates nothing).
    counters: Arc<Mutex<HashMap<Kind, HashMap<String, u32>>>>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("run", &self.drive.run.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl WorkflowContext {
    pub(crate) fn drive(&self) -> &Arc<Drive> {
        &self.drive
    }

    pub(crate) fn root(drive: Arc<Drive>) -> Self {
        Self { drive, path: Path::root(), counters: Arc::default() }
    }

    /// The run's ID.
    pub fn run_id(&self) -> RunId {
        self.drive.run.id
    }

    /// Count a call of `kind` and `name` in this branch: which call it is, from 1.
    pub(crate) fn next(&self, kind: Kind, name: &str) -> u32 {
        let mut counters = self.counters.lock();
        let names = counters.entry(kind).or_default();
        match names.get_mut(name) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => *names.entry(name.to_owned()).or_insert(1),
        }
    }

    /// The checkpoint key of the `n`-th call of `kind` and `name` in this branch.
    pub(crate) fn key(&self, kind: Kind, name: &str, n: u32) -> String {
        record::render(&self.path, kind, name, n)
    }

    /// The checkpoint key of the next call of `kind` and `name` in this branch.
    pub(crate) fn next_key(&self, kind: Kind, name: &str) -> String {
        self.key(kind, name, self.next(kind, name))
    }

    /// Run `step` once and checkpoint its result under `name`; on resume the checkpointed result
    /// is returned without running it again. Retried by the definition's step policy.
    pub async fn step<T, F, Fut>(&self, name: &str, step: F) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let policy = self.drive.policy.clone();
        self.step_with(name, &policy, step).await
    }

    /// [`step`](Self::step) with its own retry policy. A failed attempt with attempts left is
    /// checkpointed and the run suspends for the backoff (no worker slot held, and a crash
    /// meanwhile loses nothing); a panic in the step is a failed attempt.
    pub async fn step_with<T, F, Fut>(
        &self,
        name: &str,
        policy: &StepPolicy,
        step: F,
    ) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let key = self.next_key(Kind::Step, name);
        self.step_at(key, policy, step).await
    }

    /// The step machinery under an explicit checkpoint key (steps, compensations, journaled
    /// values).
    pub(crate) async fn step_at<T, F, Fut>(
        &self,
        key: String,
        policy: &StepPolicy,
        mut step: F,
    ) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let drive = &self.drive;
        let attempt = match drive.checkpoint(&key).map(|d| serde_json::from_slice(&d)) {
            Some(Ok(StepRecord::Done { value, .. })) => return decode(&key, value),
            Some(Ok(StepRecord::Failed { error, .. })) => {
                return Err(WorkflowError::Step { key, error });
            }
            Some(Ok(StepRecord::Retrying { attempts, retry_at, .. })) => {
                let retry_at = Timestamp::from_unix_micros(retry_at);
                drive.check_stop().await?;
                if drive.now() < retry_at {
                    let why = WaitingFor::Retry { step: key, attempt: attempts + 1, at: retry_at };
                    drive.sleep_until(retry_at, why).await;
                    unreachable!("a suspended drive never resumes this future");
                }
                attempts + 1
            }
            Some(Err(e)) => return Err(WorkflowError::Codec(format!("checkpoint {key}: {e}"))),
            None => {
                drive.check_stop().await?;
                1
            }
        };
        let active = drive.begin();
        let result = AssertUnwindSafe(step()).catch_unwind().await;
        let error = match result {
            Ok(Ok(value)) => {
                let value = serde_json::to_value(&value)
                    .map_err(|e| WorkflowError::Codec(format!("step {key} result: {e}")))?;
                let done = StepRecord::Done { attempts: attempt, value: value.clone() };
                drive.write(key.clone(), record::encode(&done)).await;
                drop(active);
                drive.emit(|run| Event::StepCompleted { run, key: key.clone(), attempt });
                return decode(&key, value);
            }
            Ok(Err(error)) => error,
            Err(panic) => {
                StepError::retry(format!("the step panicked: {}", panic_message(panic.as_ref())))
            }
        };
        let will_retry = !error.is_permanent() && attempt < policy.attempts;
        let message = error.message().to_owned();
        drive.emit(|run| Event::StepFailed {
            run,
            key: key.clone(),
            attempt,
            error: message.clone(),
            will_retry,
        });
        if !will_retry {
            let failed = StepRecord::Failed { attempts: attempt, error: message.clone() };
            drive.write(key.clone(), record::encode(&failed)).await;
            return Err(WorkflowError::Step { key, error: message });
        }
        let retry_at = drive.now() + policy.backoff.delay(attempt);
        let retrying = StepRecord::Retrying {
            attempts: attempt,
            error: message,
            retry_at: retry_at.as_unix_micros(),
        };
        drive.write(key.clone(), record::encode(&retrying)).await;
        drop(active);
        let why = WaitingFor::Retry { step: key, attempt: attempt + 1, at: retry_at };
        drive.sleep_until(retry_at, why).await;
        unreachable!("a suspended drive never resumes this future")
    }

    /// Sleep durably for `duration`: the run suspends and holds no worker; the wake time is
    /// checkpointed, so a restart neither shortens nor restarts the sleep.
    pub async fn sleep(&self, duration: Duration) -> Result<(), WorkflowError> {
        let until = self.drive.now() + duration;
        self.sleep_until_inner("sleep", until).await
    }

    /// Sleep durably until `until` (store clock).
    pub async fn sleep_until(&self, until: Timestamp) -> Result<(), WorkflowError> {
        self.sleep_until_inner("sleep", until).await
    }

    async fn sleep_until_inner(&self, name: &str, until: Timestamp) -> Result<(), WorkflowError> {
        let key = self.next_key(Kind::Timer, name);
        let until = self.deadline(key, until).await?;
        if self.drive.now() < until {
            self.drive.check_stop().await?;
            self.drive.sleep_until(until, WaitingFor::Sleep { until }).await;
        }
        Ok(())
    }

    /// The checkpointed deadline under `key`, written as `proposed` on first use.
    pub(crate) async fn deadline(
        &self,
        key: String,
        proposed: Timestamp,
    ) -> Result<Timestamp, WorkflowError> {
        match self.drive.checkpoint(&key) {
            Some(data) => serde_json::from_slice::<Deadline>(&data)
                .map(Deadline::at)
                .map_err(|e| WorkflowError::Codec(format!("checkpoint {key}: {e}"))),
            None => {
                let deadline = Deadline { until: proposed.as_unix_micros() };
                self.drive.write(key, record::encode(&deadline)).await;
                Ok(proposed)
            }
        }
    }

    /// Wait durably for the event `name` with correlation key `correlation` (in the run's tenant
    /// scope), at most `timeout`: `Some(payload)` when one arrives, `None` on timeout. The run
    /// suspends while it waits. An event published before the wait is received too (it is kept
    /// for a while by the store).
    pub async fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: &str,
        correlation: &str,
        timeout: Duration,
    ) -> Result<Option<T>, WorkflowError> {
        self.wait_keyed(name, name, correlation, timeout, None).await
    }

    /// [`wait_for_event`](Self::wait_for_event) with its checkpoint named `key_name`; `child`
    /// is the run whose end the event announces, when the wait is a join of that child (the run
    /// then says it waits for the child, not for an event).
    pub(crate) async fn wait_keyed<T: DeserializeOwned>(
        &self,
        key_name: &str,
        name: &str,
        correlation: &str,
        timeout: Duration,
        child: Option<RunId>,
    ) -> Result<Option<T>, WorkflowError> {
        let n = self.next(Kind::Wait, key_name);
        let key = self.key(Kind::Wait, key_name, n);
        let drive = &self.drive;
        if let Some(payload) = drive.checkpoint(&key) {
            return decode_payload(&key, &payload).map(Some);
        }
        let timed_out = self.key(Kind::WaitTimeout, key_name, n);
        if drive.checkpoint(&timed_out).is_some() {
            return Ok(None);
        }
        drive.check_stop().await?;
        let proposed = drive.now() + timeout;
        let deadline = self.deadline(self.key(Kind::WaitDeadline, key_name, n), proposed).await?;
        if drive.now() < deadline {
            let why = match child {
                Some(run) => WaitingFor::Child { run, deadline: drive.deadline() },
                None => WaitingFor::Event {
                    name: name.to_owned(),
                    correlation: correlation.to_owned(),
                    deadline,
                },
            };
            let wait = EventWait {
                key,
                name: name.to_owned(),
                correlation: correlation.to_owned(),
                deadline,
            };
            drive.wait(wait, why).await;
            unreachable!("a suspended drive never resumes this future");
        }
        let active = drive.begin();
        let resolved = drive.store.resolve_wait(drive.lease, drive.run.id, &key).await;
        drop(active);
        match resolved {
            Ok(WaitResolution::Delivered(payload)) => decode_payload(&key, &payload).map(Some),
            Ok(WaitResolution::TimedOut) => {
                drive.write(timed_out, record::encode(&TimedOut {})).await;
                Ok(None)
            }
            Err(error) => {
                drive.fail(error).await;
                unreachable!("a halted drive never resumes this future")
            }
        }
    }

    /// Run `branches` concurrently, each with a context of its own (its own step counters), and
    /// join them fail-fast: the first error is returned (the other branches stop at their next
    /// primitive). Results come in branch order.
    pub async fn parallel<T, F, Fut>(
        &self,
        name: &str,
        branches: Vec<F>,
    ) -> Result<Vec<T>, WorkflowError>
    where
        F: FnOnce(WorkflowContext) -> Fut,
        Fut: Future<Output = Result<T, WorkflowError>>,
    {
        let n = self.next(Kind::Parallel, name);
        let branches = branches.into_iter().enumerate().map(|(i, branch)| {
            let ctx = WorkflowContext {
                drive: self.drive.clone(),
                path: self.path.branch(name, n, i),
                counters: Arc::default(),
            };
            branch(ctx)
        });
        try_join_all(branches).await
    }
}

fn decode<T: DeserializeOwned>(key: &str, value: serde_json::Value) -> Result<T, WorkflowError> {
    serde_json::from_value(value)
        .map_err(|e| WorkflowError::Codec(format!("checkpoint {key} does not decode: {e}")))
}

fn decode_payload<T: DeserializeOwned>(key: &str, payload: &[u8]) -> Result<T, WorkflowError> {
    serde_json::from_slice(payload)
        .map_err(|e| WorkflowError::Codec(format!("event for {key} does not decode: {e}")))
}
