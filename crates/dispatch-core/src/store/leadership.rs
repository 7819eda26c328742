//! [`LeadershipStore`]: leader election as a lease with a term, in the store.

use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{Leader, LeaderWrite};
use crate::error::Result;
use crate::id::WorkerId;

/// Leader election in the store: one leadership per name, held under a lease, each new holding
/// under a term that only grows. The rules are [`crate::cluster`]'s functions; each call is one
/// store operation. Leader work (sweeps, retention, cron) passes its [`Leader`] to the store
/// calls it makes, which check the term in the same operation and record the write.
///
/// All times are the store's clock.
#[async_trait]
pub trait LeadershipStore: Send + Sync + 'static {
    /// Take or keep leadership `name` for `holder` ([`cluster::acquire`](crate::cluster::acquire)):
    /// `Some` with the term when `holder` leads now (a new term when it took a free or expired
    /// leadership, the same term renewed when it already held it), `None` when another holder's
    /// term is valid.
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>>;

    /// Extend `term`'s lease to now + `ttl` ([`cluster::renew`](crate::cluster::renew)): `None`
    /// when the term is no longer valid (another term began, or the lease expired): step down.
    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>>;

    /// Step down: the leadership is free at once when `term` still holds it; otherwise nothing
    /// changes.
    async fn resign_leadership(&self, term: &Leader) -> Result<()>;

    /// Take the next term unconditionally ([`cluster::take`](crate::cluster::take)), for an
    /// election decided outside the store (a Kubernetes Lease): the store's term still grows,
    /// so the previous holder's writes are fenced off from this moment.
    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader>;

    /// The leadership `name` as stored (its holder may have expired), or `None` if never held.
    async fn leader(&self, name: &str) -> Result<Option<Leader>>;

    /// The last `limit` (at most [`LEADER_WRITES_KEPT`](crate::cluster::LEADER_WRITES_KEPT))
    /// writes the store accepted under terms of `name`, oldest first.
    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>>;
}
