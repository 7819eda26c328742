//! The composition root: [`Dispatcher`] runs one worker and hands out one client over one
//! store; with workflows, one engine too.

use std::sync::Arc;

use dispatch_core::{DlqId, Enqueued, Error, JobCancel, JobId, JobStore, Replay, Result};
use dispatch_job::{
    EnqueueOptions, JobClient, JobDefinition, JobInput, ShutdownReport, Worker, WorkerHandle,
};

use crate::builder::DispatcherBuilder;

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
    #[cfg(feature = "workflow")]
    pub(crate) workflows: Option<dispatch_workflow::Workflows>,
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

    pub(crate) fn new(
        worker: Worker,
        #[cfg(feature = "workflow")] workflows: Option<dispatch_workflow::Workflows>,
    ) -> Self {
        Self {
            client: worker.client(),
            #[cfg(feature = "workflow")]
            workflows,
            state: State::Ready(worker),
        }
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
        self.client.store()
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
        self.client.enqueue_many(definition, inputs, options).await
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
