//! [`RetentionStore`]: pruning finished work, so a store stays small while it runs for months.

use async_trait::async_trait;

use crate::cluster::Leader;
use crate::error::Result;
use crate::retention::{PruneReport, RetentionPolicy};
use crate::store::JobStore;

/// A store that prunes what its [`RetentionPolicy`] no longer keeps. Leader work: one call
/// removes a bounded batch and holds no lock for long, so the leader calls it again while the
/// report says [`more`](PruneReport::more).
#[async_trait]
pub trait RetentionStore: JobStore {
    /// Leader work, fenced by `term` ([`cluster::holds`](crate::cluster::holds), checked in
    /// the same operation; else [`ErrorKind::NotLeader`](crate::ErrorKind::NotLeader) and
    /// nothing changes). Removes, oldest first and at most `limit` of each kind, what
    /// `policy` at the store's clock says ([`RetentionPolicy::cutoffs`]) and the rules of
    /// [`retention`](crate::retention) allow: completed, cancelled and dead jobs, DLQ entries,
    /// ended runs with their checkpoints and drive job, expired kept events and gone workers.
    /// A store that keeps no runs (or no registry) has none to remove. An accepted call is
    /// recorded as a leader write (`prune`). A batch may be applied in several short
    /// transactions, each fenced; a refused one ends the call.
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport>;
}
