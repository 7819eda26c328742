//! [`MembershipStore`]: the worker registry of a job store shared by several processes.

use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{Leader, SweepReport, WorkerHeartbeat, WorkerRecord, WorkerRegistration};
use crate::error::Result;
use crate::id::WorkerId;
use crate::job::LeaseRef;
use crate::store::JobStore;

/// The registry of the workers that share a store. With it, a worker's liveness comes from one
/// heartbeat per interval (which also renews all its job leases), and the leader marks a worker
/// whose heartbeat stopped as gone and reclaims its running jobs in the same operation, within
/// seconds instead of a lease TTL. A store without it still runs jobs: workers then rely on
/// lease expiry and [`JobStore::rescue_expired`].
///
/// All times are the store's clock.
#[async_trait]
pub trait MembershipStore: JobStore {
    /// Register a worker (active, last seen now), or register it again: a worker already known
    /// by its ID (active, draining or gone) is active again with its registration replaced, and
    /// keeps its first `started_at`. Answers the record as stored.
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord>;

    /// One heartbeat of `worker`, in one operation: its last-seen becomes now, and `leases`
    /// (the leases it holds) are renewed by `lease_ttl` exactly as [`JobStore::heartbeat`]
    /// renews them. A worker that is gone or unknown is not revived (its leases were rescued,
    /// and show as lost): the answer says [`WorkerState::Gone`](crate::WorkerState::Gone) and
    /// the worker registers again. A draining worker stays draining.
    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat>;

    /// Tell a worker to drain (it learns at its next heartbeat). Fails with
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown worker; a gone worker
    /// stays gone.
    async fn drain_worker(&self, worker: WorkerId) -> Result<()>;

    /// Remove a worker that stopped cleanly (its leases ended or were released first). An
    /// unknown worker is not an error.
    async fn deregister_worker(&self, worker: WorkerId) -> Result<()>;

    /// Every registered worker (gone ones too, until they are deregistered or pruned), by ID.
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Leader work, fenced by `term` ([`cluster::holds`](crate::cluster::holds), checked in the
    /// same operation; else [`ErrorKind::NotLeader`](crate::ErrorKind::NotLeader) and nothing
    /// changes): every active or draining worker last seen more than `timeout` ago becomes gone,
    /// and up to `limit` running jobs leased by gone workers are reclaimed as
    /// [`transition::rescue_from_lost_worker`](crate::transition::rescue_from_lost_worker)
    /// says (attempt kept spent, a `WorkerLost` error recorded; cancelled, available or dead
    /// with a DLQ entry). The accepted sweep is recorded as a leader write (`sweep`).
    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport>;
}
