//! Fixtures: a memory store, an engine, workers with short intervals.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{DynStore, RunId, RunState};
use dispatch_job::{Worker, WorkerBuilder, WorkerHandle};
use dispatch_store_memory::MemoryStore;
pub use dispatch_store_tests::fixtures::{CountingStore, Recorder, eventually};
use dispatch_workflow::Workflows;

pub fn store() -> DynStore {
    Arc::new(MemoryStore::new())
}

/// A worker builder with intervals short enough for tests.
pub fn worker(store: DynStore) -> WorkerBuilder {
    Worker::builder(store).configure(|c| {
        c.poll_interval = Duration::from_millis(20);
        c.heartbeat_interval = Duration::from_millis(50);
        c.lease_ttl = Duration::from_secs(5);
        c.rescue_interval = Duration::from_millis(100);
        c.shutdown_timeout = Duration::from_secs(2);
    })
}

/// Stop `handle` as a crash would leave things: in-flight drives are dropped mid-way (build the
/// worker with a short shutdown timeout; their leases are released so the next worker need not
/// wait for expiry).
pub async fn crash(handle: WorkerHandle) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async move {
        handle.stop().await;
    })
    .await;
}

/// Wait until run `id` is in `state`.
pub async fn wait_state(workflows: &Workflows, id: RunId, state: RunState) {
    eventually(&format!("run {id} to be {state}"), Duration::from_secs(30), || async {
        let run = workflows.get_run(id).await.expect("get_run")?;
        (run.state == state).then_some(())
    })
    .await;
}
