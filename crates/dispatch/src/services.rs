//! What the dispatcher's services beside its worker share: the store, the hooks and the clock
//! of cron entries (registered at start, fired by the leader) and the dead letter queue.

use std::sync::Arc;

use dispatch_core::{JobStore, Result, SharedClock};
use dispatch_job::HookBus;

/// What the services need, kept by the dispatcher.
pub(crate) struct Services {
    /// The store.
    pub(crate) jobs: Arc<dyn JobStore>,
    /// The bus cron and DLQ events go down (the dispatcher's hooks).
    pub(crate) hooks: HookBus,
    /// The clock cron registrations and DLQ age purges read.
    #[cfg_attr(not(any(feature = "cron", feature = "dlq")), allow(dead_code))]
    pub(crate) clock: SharedClock,
    /// The entries to register at start.
    #[cfg(feature = "cron")]
    pub(crate) crons: Vec<dispatch_core::CronEntry>,
    /// The queue configs to store at start.
    pub(crate) queues: Vec<dispatch_core::QueueConfig>,
}

impl Services {
    /// Store the builder's queue configs (at every start: the code is the source of truth).
    pub(crate) async fn configure_queues(&self) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let queues = self.queues()?;
        for config in &self.queues {
            queues.configure(config).await?;
        }
        Ok(())
    }

    /// Flow control over the store, its pauses and resumes on the dispatcher's hooks.
    pub(crate) fn queues(&self) -> Result<dispatch_job::Queues> {
        Ok(dispatch_job::Queues::new(self.jobs.clone())?.hooks(self.hooks.clone()))
    }
}

#[cfg(feature = "cron")]
impl Services {
    /// Register the builder's entries: at every start, so a changed entry is updated (an
    /// unchanged schedule keeps its next fire: a restart neither skips nor repeats a time).
    pub(crate) async fn register_crons(&self) -> Result<()> {
        if self.crons.is_empty() {
            return Ok(());
        }
        let cron = self.cron()?;
        for entry in &self.crons {
            cron.register_entry(entry.clone()).await?;
        }
        Ok(())
    }

    /// The cron client over the store, when it keeps cron entries.
    pub(crate) fn cron(&self) -> Result<dispatch_cron::Cron> {
        let store = self.jobs.clone().as_cron_store().ok_or_else(|| {
            dispatch_core::Error::invalid_input("this store keeps no cron entries")
        })?;
        Ok(dispatch_cron::Cron::new(store, self.clock.clone()))
    }
}

#[cfg(not(feature = "cron"))]
impl Services {
    pub(crate) async fn register_crons(&self) -> Result<()> {
        Ok(())
    }
}
