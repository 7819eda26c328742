//! The dispatcher's workflow calls: start runs, wait for their output, publish the events they
//! wait for, cancel them, and look them up. Each forwards to the dispatcher's
//! [`Workflows`] engine.

use std::time::Duration;

use dispatch_core::{
    Checkpoint, Error, Page, PageRequest, Published, Result, Run, RunCancel, RunFilter, RunId,
};
use dispatch_workflow::{
    PublishOptions, RunWaitError, StartOptions, WorkflowDefinition, Workflows,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Dispatcher;

impl Dispatcher {
    /// The workflow engine, for the calls the dispatcher does not forward (rewind, migrate).
    /// Fails when the dispatcher was built with a store that keeps no runs
    /// ([`job_store`](crate::DispatcherBuilder::job_store)).
    pub fn workflows(&self) -> Result<&Workflows> {
        self.workflows.as_ref().ok_or_else(|| {
            Error::invalid_input(
                "this dispatcher's store keeps no workflow runs (built with `job_store`)",
            )
        })
    }

    /// Start a run of `definition` with `input`; the run and its first drive job are stored
    /// together. Returns the run's ID.
    pub async fn start_workflow<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        input: I,
    ) -> Result<RunId>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        self.start_workflow_with(definition, input, StartOptions::default()).await
    }

    /// Start a run with options: an idempotency key (a second start with the same key returns
    /// the first run), a tenant scope.
    pub async fn start_workflow_with<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        input: I,
        options: StartOptions,
    ) -> Result<RunId>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        self.workflows()?.start(definition, &input, options).await
    }

    /// Publish event `name` for correlation `key`: delivered to the run that waits longest for
    /// it, or kept for the next run that waits (see [`PublishOptions`] for broadcast and
    /// scope).
    pub async fn publish<T: Serialize>(
        &self,
        name: &str,
        key: &str,
        payload: &T,
    ) -> Result<Published> {
        self.publish_with(name, key, payload, PublishOptions::default()).await
    }

    /// Publish with options.
    pub async fn publish_with<T: Serialize>(
        &self,
        name: &str,
        key: &str,
        payload: &T,
        options: PublishOptions,
    ) -> Result<Published> {
        self.workflows()?.publish(name, key, payload, options).await
    }

    /// Ask run `id` to stop: it runs the compensations of its finished steps, cancels its
    /// children and ends cancelled with `reason`.
    pub async fn cancel_run(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        self.workflows()?.cancel(id, reason).await
    }

    /// One run: its state, what it waits for, its output or error.
    pub async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.workflows()?.get_run(id).await
    }

    /// Runs by state and name, a page at a time.
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>> {
        self.workflows()?.list_runs(filter, page).await
    }

    /// A run's checkpoints (steps, timers, event deliveries) in the order written.
    pub async fn get_checkpoints(&self, id: RunId) -> Result<Vec<Checkpoint>> {
        self.workflows()?.get_checkpoints(id).await
    }

    /// Wait until run `id` ends and decode its output; when it does not complete, a
    /// [`RunWaitError`] says why (failed, cancelled, still waiting at the timeout, with the
    /// run and what it waits for).
    pub async fn wait_for_output<O: DeserializeOwned>(
        &self,
        id: RunId,
        timeout: Duration,
    ) -> std::result::Result<O, RunWaitError> {
        self.workflows().map_err(RunWaitError::Store)?.wait_for_output(id, timeout).await
    }
}
