//! [`DeadWorkerSweep`]: the leader marks silent workers gone and reclaims their jobs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Leader, MembershipStore, Result};

/// The leader task that takes over dead workers' jobs: each run calls
/// [`MembershipStore::sweep_workers`] (again at once while a call comes back full), so a worker
/// whose heartbeat stopped has its jobs available again within its timeout plus one interval.
pub struct DeadWorkerSweep {
    store: Arc<dyn MembershipStore>,
    timeout: Duration,
    interval: Duration,
    limit: usize,
}

impl DeadWorkerSweep {
    /// Sweep `store` every `interval`, marking workers silent for `timeout` gone and reclaiming
    /// up to `limit` jobs per call.
    pub fn new(
        store: Arc<dyn MembershipStore>,
        timeout: Duration,
        interval: Duration,
        limit: usize,
    ) -> Self {
        Self { store, timeout, interval, limit: limit.max(1) }
    }
}

impl std::fmt::Debug for DeadWorkerSweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadWorkerSweep")
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl crate::LeaderTask for DeadWorkerSweep {
    fn name(&self) -> &str {
        "dead-worker sweep"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run(&self, term: &Leader) -> Result<()> {
        loop {
            let report = self.store.sweep_workers(term, self.timeout, self.limit).await?;
            for worker in &report.gone {
                tracing::warn!(%worker, "worker stopped heartbeating: marked gone");
            }
            let rescue = &report.rescue;
            let reclaimed = rescue.rescued.len() + rescue.promoted.len() + rescue.cancelled.len();
            if reclaimed > 0 {
                tracing::info!(
                    available = rescue.rescued.len(),
                    dead = rescue.promoted.len(),
                    cancelled = rescue.cancelled.len(),
                    "reclaimed the jobs of gone workers"
                );
            }
            if reclaimed < self.limit {
                return Ok(());
            }
        }
    }
}
