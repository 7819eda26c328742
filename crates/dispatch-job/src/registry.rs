//! The handlers a worker runs, by job name, with their input types erased.

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_core::Backoff;
use futures::future::BoxFuture;

use crate::context::JobContext;
use crate::definition::{JobDefinition, JobInput};
use crate::error::JobResult;

/// A definition with its input type erased: what the registry keeps.
pub trait ErasedJob: Send + Sync + 'static {
    /// The job name.
    fn name(&self) -> &str;
    /// The definition's default queue.
    fn default_queue(&self) -> &str;
    /// The delay between failed attempts.
    fn backoff(&self) -> Backoff;
    /// Decode `payload` and run the handler.
    fn call(&self, ctx: JobContext, payload: &[u8]) -> BoxFuture<'static, JobResult>;
}

impl<I: JobInput> ErasedJob for JobDefinition<I> {
    fn name(&self) -> &str {
        JobDefinition::name(self)
    }

    fn default_queue(&self) -> &str {
        &self.defaults().queue
    }

    fn backoff(&self) -> Backoff {
        self.defaults().backoff
    }

    fn call(&self, ctx: JobContext, payload: &[u8]) -> BoxFuture<'static, JobResult> {
        JobDefinition::call(self, ctx, payload)
    }
}

/// Job definitions by name. Registering a name twice replaces the first.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: HashMap<String, Arc<dyn ErasedJob>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a definition.
    pub fn register<I: JobInput>(&mut self, definition: JobDefinition<I>) {
        self.jobs.insert(definition.name().to_owned(), Arc::new(definition));
    }

    /// The definition of `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedJob>> {
        self.jobs.get(name)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.jobs.keys().cloned().collect();
        names.sort();
        names
    }

    /// The default queues of the registered definitions, sorted and without repeats.
    pub fn default_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> =
            self.jobs.values().map(|job| job.default_queue().to_owned()).collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("names", &self.names()).finish()
    }
}
