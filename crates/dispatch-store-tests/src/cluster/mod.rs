//! Tests of the cluster traits, by theme: `members` (the worker registry: registration,
//! heartbeats that renew leases, draining, the sweep that takes over a lost worker's jobs) and
//! `leaders` (election under contention, terms that only grow, fencing of leader writes). This
//! module holds the helpers they share; every test is re-exported here, so the suite lists it as
//! `cluster::<name>`.

mod leaders;
mod members;

pub use leaders::*;
pub use members::*;

use dispatch_core::{ClusterStore, JobStore, WorkerId, WorkerRegistration};

use crate::TestContext;

impl TestContext<dyn ClusterStore> {
    /// The same store seen as a job store, for the job helpers.
    fn jobs(&self) -> TestContext<dyn JobStore> {
        let store: std::sync::Arc<dyn JobStore> = self.store.clone();
        TestContext { store, clock: self.clock.clone() }
    }

    /// Register a new worker on the default queue; its ID.
    async fn register(&self) -> WorkerId {
        let registration = registration(WorkerId::new());
        self.store.register_worker(&registration).await.expect("register");
        registration.id
    }
}

/// A registration of worker `id` as the suite writes it.
pub(crate) fn registration(id: WorkerId) -> WorkerRegistration {
    WorkerRegistration {
        id,
        host: "host-a".to_owned(),
        pid: 4242,
        queues: vec!["default".to_owned(), "mail".to_owned()],
        concurrency: 16,
        version: "1.2.3".to_owned(),
    }
}
