//! [`Workflows`]: registers definitions as drive jobs, starts runs, publishes events, and drives
//! runs when the job runtime hands it a drive job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    Error, Event, EventId, Hook, NewEvent, NewRun, Page, PageRequest, Published, Run, RunEnd,
    RunFilter, RunId, RunInfo, RunSnapshot, Scope, Started, WorkflowStore,
};
use dispatch_job::{HookBus, JobContext, JobDefinition, JobError};
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::child::{RUN_ENDED, RunEnded};
use crate::context::WorkflowContext;
use crate::definition::{Body, DRIVE_ATTEMPTS, WorkflowDefinition, drive_job, run_info_of};
use crate::drive::{Drive, Ended, Halt, fenced};
use crate::error::WorkflowError;
use crate::output::{RunWaitError, output_of};
use crate::policy::StepPolicy;
use crate::saga;

/// How long an event nobody waits for is kept by default.
pub const DEFAULT_EVENT_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Options of a start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Start at most one run per workflow name and key: a second start returns the first run.
    pub idempotency_key: Option<String>,
    /// Tenant scope (events reach the run only within it).
    pub scope: Scope,
}

/// Options of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOptions {
    /// Tenant scope: only runs of this scope receive it.
    pub scope: Scope,
    /// Deliver to every run waiting now, instead of the one that waited longest.
    pub broadcast: bool,
    /// How long to keep it when nobody waits yet (default [`DEFAULT_EVENT_KEEP`]).
    pub keep_for: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self { scope: Scope::default(), broadcast: false, keep_for: DEFAULT_EVENT_KEEP }
    }
}

/// A registered version of a workflow.
struct Registered {
    body: Body,
    policy: StepPolicy,
    timeout: Option<Duration>,
}

struct Inner {
    store: Arc<dyn WorkflowStore>,
    versions: RwLock<HashMap<(String, u32), Arc<Registered>>>,
    hooks: HookBus,
}

/// The workflow engine over one store. Cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").finish_non_exhaustive()
    }
}

impl Workflows {
    /// An engine over `store`, with no hooks.
    pub fn new(store: Arc<dyn WorkflowStore>) -> Self {
        Self::with_hooks(store, Vec::new())
    }

    /// An engine over `store` whose run and step events go to `hooks` (build it inside a tokio
    /// runtime when `hooks` is not empty: delivery runs on a task of its own).
    pub fn with_hooks(store: Arc<dyn WorkflowStore>, hooks: Vec<Arc<dyn Hook>>) -> Self {
        let hooks = if hooks.is_empty() { HookBus::disabled() } else { HookBus::new(hooks) };
        Self { inner: Arc::new(Inner { store, versions: RwLock::default(), hooks }) }
    }

    /// Register `definition` and get the drive job to register with a worker
    /// (`WorkerBuilder::register`): a worker drives the runs of exactly the versions whose drive
    /// jobs it registered.
    pub fn register<I, O>(&self, definition: &WorkflowDefinition<I, O>) -> JobDefinition<RunId>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let registered = Registered {
            body: definition.body.clone(),
            policy: definition.policy.clone(),
            timeout: definition.timeout,
        };
        let key = (definition.name.clone(), definition.version);
        self.inner.versions.write().insert(key, Arc::new(registered));
        let engine = self.clone();
        JobDefinition::new(definition.drive_job_name(), move |ctx: JobContext, run: RunId| {
            let engine = engine.clone();
            async move { engine.drive(ctx, run).await }
        })
        .max_attempts(DRIVE_ATTEMPTS)
    }

    /// Start a run of `definition` with `input`: the run and its first drive job are created
    /// in one store operation. Returns the run's ID (the existing run's, for an idempotency key
    /// already used).
    pub async fn start<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        input: &I,
        options: StartOptions,
    ) -> Result<RunId, Error>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let (run, drive) = Self::new_run(definition, input, options)?;
        let info = run_info_of(&run);
        let started = self.inner.store.start_run(run, drive).await?;
        if let Started::Created(_) = started {
            self.inner.hooks.emit(|| Event::RunStarted { run: info });
        }
        Ok(started.id())
    }

    /// The run and drive job a start of `definition` with `input` stores, for starting it
    /// inside the application's own transaction (`SqliteStore::start_run_in`,
    /// `PostgresStore::start_run_in`): the run exists exactly when that transaction commits.
    pub fn new_run<I, O>(
        definition: &WorkflowDefinition<I, O>,
        input: &I,
        options: StartOptions,
    ) -> Result<(NewRun, dispatch_core::NewJob), Error>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let input = serde_json::to_vec(input)
            .map_err(|e| Error::new(dispatch_core::ErrorKind::Codec, e.to_string()))?;
        let run = NewRun {
            id: RunId::new(),
            name: definition.name.clone(),
            version: definition.version,
            input,
            scope: options.scope.clone(),
            idempotency_key: options.idempotency_key,
            parent: None,
        };
        let drive = drive_job(&run, options.scope)?;
        Ok((run, drive))
    }

    /// Wait until run `id` ends and decode its output. Without an output the error says why:
    /// the run failed or was cancelled, it did not end within `timeout` (with the run as last
    /// read, so [`Run::waiting`](dispatch_core::Run::waiting) tells what it waits for), there is
    /// no such run, its output does not decode, or the store failed. Polls the store; `?` turns
    /// the error into a [`dispatch_core::Error`].
    pub async fn wait_for_output<O: DeserializeOwned>(
        &self,
        id: RunId,
        timeout: Duration,
    ) -> Result<O, RunWaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = Duration::from_millis(5);
        loop {
            let run = self.inner.store.get_run(id).await.map_err(RunWaitError::Store)?;
            let run = run.ok_or(RunWaitError::NotFound(id))?;
            if run.state.is_final() {
                return output_of(run);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RunWaitError::TimedOut { timeout, run: Box::new(run) });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(250));
        }
    }

    /// Publish event `name` for `correlation` with `payload` (see `WorkflowStore::publish_event`).
    pub async fn publish<T: Serialize>(
        &self,
        name: &str,
        correlation: &str,
        payload: &T,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        let payload = serde_json::to_vec(payload)
            .map_err(|e| Error::new(dispatch_core::ErrorKind::Codec, e.to_string()))?;
        let event = NewEvent {
            id: EventId::new(),
            name: name.to_owned(),
            correlation: correlation.to_owned(),
            payload,
            scope: options.scope,
            broadcast: options.broadcast,
            keep_for: options.keep_for,
        };
        self.inner.store.publish_event(event).await
    }

    /// Ask run `id` to stop: it stops at its next step or suspension (a waiting run wakes for
    /// it), runs the compensations of its completed steps, cancels its running children, and
    /// ends cancelled with `reason`.
    pub async fn cancel(&self, id: RunId, reason: &str) -> Result<dispatch_core::RunCancel, Error> {
        self.inner.store.request_run_cancel(id, reason).await
    }

    /// Debugging: rewind run `id` to its checkpoint `key` (a key of its checkpoints): later
    /// checkpoints are dropped and the run is driven again on its own version, so the steps after
    /// `key` run again. `Conflict` while a drive holds the run.
    pub async fn rewind(&self, id: RunId, key: &str) -> Result<(), Error> {
        self.inner.store.rewind_run(id, key).await
    }

    /// Move run `id` to `definition`'s version (register it on a worker first): its checkpoints
    /// are kept, so finished steps are not run again; a failed or cancelled run is driven again.
    /// `Conflict` while a drive holds the run, or when it completed.
    pub async fn migrate<I, O>(
        &self,
        id: RunId,
        definition: &WorkflowDefinition<I, O>,
    ) -> Result<(), Error>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let store = &self.inner.store;
        store.migrate_run(id, definition.version, &definition.drive_job_name()).await
    }

    /// Cancel the children a cancelled run started (best effort: each child also winds down on
    /// its own).
    async fn cancel_children(&self, children: &[RunId]) {
        for child in children {
            let cancelled =
                self.inner.store.request_run_cancel(*child, "the parent run was cancelled");
            if let Err(error) = cancelled.await {
                tracing::warn!(%child, %error, "could not cancel a child run");
            }
        }
    }

    /// One run.
    pub async fn get_run(&self, id: RunId) -> Result<Option<Run>, Error> {
        self.inner.store.get_run(id).await
    }

    /// Runs by state and name, a page at a time.
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>, Error> {
        self.inner.store.list_runs(filter, page).await
    }

    /// The run's checkpoints (steps, timers, waits, values) in the order written.
    pub async fn get_checkpoints(
        &self,
        id: RunId,
    ) -> Result<Vec<dispatch_core::Checkpoint>, Error> {
        self.inner.store.get_checkpoints(id).await
    }

    /// Advance run `id` as the drive job `ctx` (the job runtime calls this).
    async fn drive(&self, ctx: JobContext, id: RunId) -> Result<(), JobError> {
        let store = &self.inner.store;
        loop {
            // Before the call: the drive's clock then runs ahead of the store's, never behind,
            // so a durable sleep or step backoff measured from it never ends early.
            let asked_at = tokio::time::Instant::now();
            let snapshot = match store.load_snapshot(ctx.lease(), id).await {
                Ok(snapshot) => snapshot,
                Err(error) if fenced(&error) => return Ok(()),
                Err(error) => return Err(JobError::retry(error.to_string())),
            };
            if snapshot.run.state.is_final() {
                return Ok(());
            }
            match self.drive_once(&ctx, &snapshot, asked_at).await? {
                Some(()) => return Ok(()),
                // An event was already waiting: drive again with it.
                None => continue,
            }
        }
    }

    /// One pass of the workflow function; `None` when it must run again at once.
    async fn drive_once(
        &self,
        ctx: &JobContext,
        snapshot: &RunSnapshot,
        asked_at: tokio::time::Instant,
    ) -> Result<Option<()>, JobError> {
        let run = &snapshot.run;
        let key = (run.name.clone(), run.version);
        let Some(registered) = self.inner.versions.read().get(&key).cloned() else {
            return Err(JobError::permanent(format!(
                "workflow {} version {} is not registered on this worker",
                run.name, run.version
            )));
        };
        let info = run_info(run);
        if !snapshot.checkpoints.is_empty() {
            self.inner.hooks.emit(|| Event::RunResumed { run: info.clone() });
        }
        let drive = Arc::new(Drive::new(
            self.inner.store.clone(),
            ctx.lease(),
            info.clone(),
            registered.policy.clone(),
            self.inner.hooks.clone(),
            (snapshot, asked_at),
        ));
        let root = WorkflowContext::root(drive.clone());
        let function =
            saga::run(registered.body.clone(), registered.timeout, root, run.input.clone());
        let ended = drive.run(function).await;
        let children = drive.children();
        let end = match ended {
            Ended::Returned(Ok(output)) => RunEnd::Completed(output),
            Ended::Returned(Err(WorkflowError::Cancelled(reason))) => {
                self.cancel_children(&children).await;
                RunEnd::Cancelled(reason)
            }
            Ended::Returned(Err(error)) => RunEnd::Failed(error.to_string()),
            Ended::Panicked(message) => {
                RunEnd::Failed(format!("workflow code panicked outside a step: {message}"))
            }
            Ended::Halted(Halt::Store(error)) if fenced(&error) => return Ok(Some(())),
            Ended::Halted(Halt::Store(error)) => return Err(JobError::retry(error.to_string())),
            Ended::Halted(Halt::Suspend(suspend)) => {
                return self.suspend(ctx, info, suspend).await;
            }
        };
        self.end(ctx, info, run.parent, end).await.map(Some)
    }

    async fn suspend(
        &self,
        ctx: &JobContext,
        info: RunInfo,
        suspend: dispatch_core::Suspend,
    ) -> Result<Option<()>, JobError> {
        // Kept for the hook only when a hook listens: the suspension owns the list.
        let waiting =
            if self.inner.hooks.is_enabled() { suspend.waiting.clone() } else { Vec::new() };
        match self.inner.store.suspend_run(ctx.lease(), suspend).await {
            Ok(dispatch_core::SuspendOutcome::Suspended { wake_at }) => {
                self.inner.hooks.emit(|| Event::RunSuspended { run: info, wake_at, waiting });
                Ok(Some(()))
            }
            // Drive again at once: with an event delivered, or winding down for a cancel request.
            Ok(dispatch_core::SuspendOutcome::Delivered)
            | Ok(dispatch_core::SuspendOutcome::CancelRequested) => Ok(None),
            Err(error) if fenced(&error) => Ok(Some(())),
            Err(error) => Err(JobError::retry(error.to_string())),
        }
    }

    async fn end(
        &self,
        ctx: &JobContext,
        info: RunInfo,
        parent: Option<RunId>,
        end: RunEnd,
    ) -> Result<(), JobError> {
        let event = match &end {
            RunEnd::Completed(_) => Event::RunCompleted { run: info.clone() },
            RunEnd::Failed(error) => Event::RunFailed { run: info.clone(), error: error.clone() },
            RunEnd::Cancelled(reason) => {
                Event::RunCancelled { run: info.clone(), reason: reason.clone() }
            }
        };
        let notice = parent.map(|_| RunEnded::of(&end));
        match self.inner.store.end_run(ctx.lease(), info.id, end).await {
            Ok(()) => {
                self.inner.hooks.emit(|| event);
                if let Some(notice) = notice {
                    // Best effort: a parent that misses it finds the child's end by looking.
                    let published = self
                        .publish(
                            RUN_ENDED,
                            &info.id.to_string(),
                            &notice,
                            PublishOptions {
                                scope: info.scope.clone(),
                                ..PublishOptions::default()
                            },
                        )
                        .await;
                    if let Err(error) = published {
                        tracing::warn!(run = %info.id, %error, "could not tell the parent run");
                    }
                }
                Ok(())
            }
            Err(error) if fenced(&error) => Ok(()),
            Err(error) => Err(JobError::retry(error.to_string())),
        }
    }
}

fn run_info(run: &Run) -> RunInfo {
    RunInfo { id: run.id, name: run.name.clone(), version: run.version, scope: run.scope.clone() }
}
