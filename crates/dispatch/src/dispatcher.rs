//! The composition root: [`Dispatcher`] wires a store, job definitions, layers and hooks into
//! one worker and one client.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{DlqId, Enqueued, Error, Hook, JobCancel, JobId, JobStore, Replay, Result};
use dispatch_job::{
    EnqueueOptions, JobClient, JobDefinition, JobError, JobInput, JobRequest, JobService,
    ShutdownReport, Worker, WorkerBuilder, WorkerConfig, WorkerHandle,
};
use tower::{Layer, Service};

type Step = Box<dyn FnOnce(WorkerBuilder) -> WorkerBuilder + Send>;

/// Configures a [`Dispatcher`]. Start with [`Dispatcher::builder`].
#[derive(Default)]
pub struct DispatcherBuilder {
    store: Option<Arc<dyn JobStore>>,
    steps: Vec<Step>,
}

impl DispatcherBuilder {
    /// The store jobs live in (required).
    pub fn store(mut self, store: impl JobStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The store, already shared.
    pub fn shared_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = Some(store);
        self
    }

    fn step(mut self, step: impl FnOnce(WorkerBuilder) -> WorkerBuilder + Send + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }

    /// Run jobs of `definition` on this dispatcher's worker.
    pub fn register<I: JobInput>(self, definition: JobDefinition<I>) -> Self {
        self.step(move |w| w.register(definition))
    }

    /// Most attempts running at once (default 10).
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.step(move |w| w.concurrency(concurrency))
    }

    /// Claim from these queues only (default: `"default"` plus the registered definitions'
    /// queues).
    pub fn queues<S: Into<String>>(self, queues: impl IntoIterator<Item = S>) -> Self {
        let queues: Vec<String> = queues.into_iter().map(Into::into).collect();
        self.step(move |w| w.queues(queues))
    }

    /// How long in-flight attempts may run after stop is asked (default 30 s).
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.step(move |w| w.shutdown_timeout(timeout))
    }

    /// Change any worker setting.
    pub fn configure(self, change: impl FnOnce(&mut WorkerConfig) + Send + 'static) -> Self {
        self.step(move |w| w.configure(change))
    }

    /// Add a tower layer around every handler (inside the built-in layers).
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<JobService> + Send + Sync + 'static,
        L::Service:
            Service<JobRequest, Response = (), Error = JobError> + Clone + Send + Sync + 'static,
        <L::Service as Service<JobRequest>>::Future: Send + 'static,
    {
        self.step(move |w| w.layer(layer))
    }

    /// Deliver lifecycle events to `hook`.
    pub fn hook(self, hook: impl Hook) -> Self {
        self.step(move |w| w.hook(hook))
    }

    /// Build the dispatcher (inside a tokio runtime). Fails without a store or with settings that
    /// do not fit together.
    pub fn build(self) -> Result<Dispatcher> {
        let store = self.store.ok_or_else(|| Error::invalid_input("a dispatcher needs a store"))?;
        let builder =
            self.steps.into_iter().fold(Worker::builder(store.clone()), |w, step| step(w));
        let worker = builder.build()?;
        let client = worker.client();
        Ok(Dispatcher { client, store, state: State::Ready(worker) })
    }
}

enum State {
    Ready(Worker),
    Running(WorkerHandle),
    Stopped,
}

/// Runs and enqueues jobs: one worker and one client over one store.
///
/// ```no_run
/// use dispatch::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Email { to: String }
///
/// # async fn run() -> dispatch::Result<()> {
/// let send = JobDefinition::new("send_email", |_ctx: JobContext, email: Email| async move {
///     println!("to {}", email.to);
///     Ok(())
/// });
/// let mut dispatcher = Dispatcher::builder()
///     .store(MemoryStore::new())
///     .register(send.clone())
///     .build()?;
/// dispatcher.start()?;
/// dispatcher.enqueue(&send, Email { to: "a@example.com".into() }).await?;
/// dispatcher.stop().await;
/// # Ok(()) }
/// ```
pub struct Dispatcher {
    client: JobClient,
    store: Arc<dyn JobStore>,
    state: State,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Running(_) => "running",
            State::Stopped => "stopped",
        };
        f.debug_struct("Dispatcher").field("state", &state).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Start configuring a dispatcher.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder::default()
    }

    /// Start the worker. Fails when it was started before.
    pub fn start(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Ready(worker) => {
                self.state = State::Running(worker.start());
                Ok(())
            }
            other => {
                self.state = other;
                Err(Error::new(
                    dispatch_core::ErrorKind::Conflict,
                    "the dispatcher was already started",
                ))
            }
        }
    }

    /// Stop gracefully (see [`WorkerHandle::stop`]). Stopping twice, or before start, does
    /// nothing.
    pub async fn stop(&mut self) -> ShutdownReport {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(handle) => handle.stop().await,
            _ => ShutdownReport::default(),
        }
    }

    /// The client: enqueue, cancel, replay.
    pub fn client(&self) -> &JobClient {
        &self.client
    }

    /// The store, for lookups (jobs, counts, the DLQ).
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// Enqueue `input` for `definition` with its defaults.
    pub async fn enqueue<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
    ) -> Result<Enqueued> {
        self.client.enqueue(definition, input).await
    }

    /// Enqueue `input` for `definition` with per-call overrides.
    pub async fn enqueue_with<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
        options: EnqueueOptions,
    ) -> Result<Enqueued> {
        self.client.enqueue_with(definition, input, options).await
    }

    /// Enqueue many inputs of one definition in one store call.
    pub async fn enqueue_many<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I>,
        options: EnqueueOptions,
    ) -> Result<Vec<Enqueued>> {
        self.client.enqueue_many_with(definition, inputs, options).await
    }

    /// Ask for a job to be cancelled.
    pub async fn cancel(&self, id: JobId) -> Result<JobCancel> {
        self.client.cancel(id).await
    }

    /// Replay a DLQ entry as a new job, at most once.
    pub async fn replay(&self, id: DlqId) -> Result<Replay> {
        self.client.replay(id).await
    }
}
