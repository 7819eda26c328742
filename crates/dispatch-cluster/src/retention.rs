//! [`Retention`]: the leader prunes what the retention policy no longer keeps.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Leader, PruneReport, Result, RetentionPolicy, RetentionStore};

/// The leader task that keeps a store small: each run calls [`RetentionStore::prune`] with
/// the policy, one bounded batch per call, and calls again while a batch says more may be left.
/// Each call is its own short store operation fenced by the term, so pruning a backlog of
/// millions never holds a lock for long, and a deposed leader's next batch is refused.
pub struct Retention {
    store: Arc<dyn RetentionStore>,
    policy: RetentionPolicy,
    interval: Duration,
    batch: usize,
}

impl Retention {
    /// Prune `store` by `policy` every `interval`, `batch` records of each kind per call.
    pub fn new(
        store: Arc<dyn RetentionStore>,
        policy: RetentionPolicy,
        interval: Duration,
        batch: usize,
    ) -> Self {
        Self { store, policy, interval, batch: batch.max(1) }
    }
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("policy", &self.policy)
            .field("interval", &self.interval)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl crate::LeaderTask for Retention {
    fn name(&self) -> &str {
        "retention"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run(&self, term: &Leader) -> Result<()> {
        let mut total = PruneReport::default();
        loop {
            let report = self.store.prune(term, &self.policy, self.batch).await?;
            total.absorb(&report);
            if !report.more {
                break;
            }
            // Let the store's other writers in between batches (SQLite has one writer).
            tokio::task::yield_now().await;
        }
        if total.total() > 0 {
            tracing::info!(
                jobs = total.jobs,
                dlq = total.dlq,
                runs = total.runs,
                checkpoints = total.checkpoints,
                events = total.events,
                workers = total.workers,
                "retention pruned"
            );
        }
        Ok(())
    }
}
