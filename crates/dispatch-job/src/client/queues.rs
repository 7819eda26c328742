//! [`Queues`]: flow control at run time — queue configs (fleet-wide limits, fairness), pause
//! and resume — over a store that keeps it. Changes apply at the next claim of every worker.

use std::sync::Arc;

use dispatch_core::{Error, Event, FlowStore, JobStore, QueueConfig, QueueFlow, Result};

use crate::hooks::HookBus;

/// The flow control of a store's queues. Cheap to clone.
#[derive(Clone)]
pub struct Queues {
    flow: Arc<dyn FlowStore>,
    hooks: HookBus,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

impl Queues {
    /// Flow control over `store`; fails with
    /// [`ErrorKind::InvalidInput`](dispatch_core::ErrorKind::InvalidInput) when the store keeps
    /// none ([`JobStore::as_flow_store`] answers `None`).
    pub fn new(store: Arc<dyn JobStore>) -> Result<Self> {
        let flow = store
            .as_flow_store()
            .ok_or_else(|| Error::invalid_input("this store keeps no flow control"))?;
        Ok(Self { flow, hooks: HookBus::disabled() })
    }

    /// Emit [`Event::QueuePaused`] and [`Event::QueueResumed`] to `hooks`.
    #[must_use]
    pub fn hooks(mut self, hooks: HookBus) -> Self {
        self.hooks = hooks;
        self
    }

    /// Store `config` for its queue (replacing the one there; running counts are kept). A
    /// queue's first config counts its running jobs, so a limit set now holds from the next
    /// claim. Refuses an invalid config with `InvalidInput`.
    pub async fn configure(&self, config: &QueueConfig) -> Result<QueueFlow> {
        self.flow.set_queue_config(config).await
    }

    /// The config of `queue` with its running count, if it has one.
    pub async fn get(&self, queue: &str) -> Result<Option<QueueFlow>> {
        self.flow.queue_flow(queue).await
    }

    /// Every configured queue, by name.
    pub async fn list(&self) -> Result<Vec<QueueFlow>> {
        self.flow.list_queue_flows().await
    }

    /// Remove `queue`'s config: its claims are plain again (its jobs' concurrency keys are no
    /// longer checked until it has a config again). Answers whether there was one.
    pub async fn remove(&self, queue: &str) -> Result<bool> {
        self.flow.delete_queue_config(queue).await
    }

    /// Pause `queue` on every worker: its jobs are not claimed (enqueue still works; running
    /// jobs finish). Answers whether it was running.
    pub async fn pause(&self, queue: &str) -> Result<bool> {
        self.set_paused(queue, None, true).await
    }

    /// Resume a paused queue. Answers whether it was paused.
    pub async fn resume(&self, queue: &str) -> Result<bool> {
        self.set_paused(queue, None, false).await
    }

    /// Pause only the jobs of `name` in `queue`.
    pub async fn pause_job(&self, queue: &str, name: &str) -> Result<bool> {
        self.set_paused(queue, Some(name), true).await
    }

    /// Resume the jobs of `name` in `queue`.
    pub async fn resume_job(&self, queue: &str, name: &str) -> Result<bool> {
        self.set_paused(queue, Some(name), false).await
    }

    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        let changed = self.flow.set_paused(queue, name, paused).await?;
        if changed {
            let (queue, name) = (queue.to_owned(), name.map(str::to_owned));
            self.hooks.emit(|| match paused {
                true => Event::QueuePaused { queue, name },
                false => Event::QueueResumed { queue, name },
            });
        }
        Ok(changed)
    }
}
