//! Workflow scenarios: durable workflows (`dispatch-workflow`) driven end to end over the store
//! under test, in real time, by workers of the job runtime: steps exactly once across
//! interruptions, loops, parallel branches, resume cost, panics, durable sleeps and retries that
//! hold no worker slot, correlated events. [`run_conformance`](crate::run_conformance) runs them
//! on every store beside the suite; the multi-process crash tests (a worker killed at every step
//! boundary, sleeps across a restart of every worker) live in `dispatch-durability-tests`.

mod events;
mod sagas;
mod steps;
mod timing;

use std::time::Duration;

use dispatch_core::{DynStore, RunId, RunState};
use dispatch_job::{Worker, WorkerBuilder, WorkerHandle};
use dispatch_workflow::Workflows;

pub use events::*;
pub use sagas::*;
pub use steps::*;
pub use timing::*;

use crate::fixtures::eventually;

/// A worker builder with intervals short enough for tests.
fn worker(store: DynStore) -> WorkerBuilder {
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
async fn crash(handle: WorkerHandle) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async move {
        handle.stop().await;
    })
    .await;
}

/// Wait until run `id` is in `state`.
async fn wait_state(workflows: &Workflows, id: RunId, state: RunState) {
    eventually(&format!("run {id} to be {state}"), Duration::from_secs(30), || async {
        let run = workflows.get_run(id).await.expect("get_run")?;
        (run.state == state).then_some(())
    })
    .await;
}
