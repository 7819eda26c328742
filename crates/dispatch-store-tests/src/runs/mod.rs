//! Workflow scenarios: durable workflows (`dispatch-workflow`) driven end to end over the store
//! under test, in real time, by workers of the job runtime: steps exactly once across
//! interruptions, loops, parallel branches, resume cost, panics, durable sleeps and retries that
//! hold no worker slot, correlated events, what a suspended run says it waits for.
//! [`run_conformance`](crate::run_conformance) runs them on every store beside the suite; the
//! multi-process crash tests (a worker killed at every step boundary, sleeps across a restart of
//! every worker) live in `dispatch-durability-tests`.

mod events;
mod sagas;
mod steps;
mod timing;
mod waiting;

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Run, RunId, RunState, WorkflowStore};
use dispatch_job::{Worker, WorkerBuilder, WorkerHandle};
use dispatch_workflow::{RunWaitError, StartOptions, WorkflowDefinition, Workflows};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

pub use events::*;
pub use sagas::*;
pub use steps::*;
pub use timing::*;
pub use waiting::*;

use crate::fixtures::eventually;

/// A worker builder with intervals short enough for tests.
fn worker(store: Arc<dyn WorkflowStore>) -> WorkerBuilder {
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

/// Start a run of `definition` with `input` on a worker that is stopped as a crash would leave
/// things once `reached` is notified (the workflow notifies it where it wants to be cut, then
/// blocks), then finish the run on a second worker: the run's outcome.
async fn run_with_one_interruption<I, O>(
    store: &Arc<dyn WorkflowStore>,
    workflows: &Workflows,
    definition: &WorkflowDefinition<I, O>,
    input: &I,
    reached: &Notify,
) -> Result<O, Run>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let drive = workflows.register(definition);
    let first = worker(store.clone())
        .register(drive.clone())
        .shutdown_timeout(Duration::from_millis(10))
        .build()
        .expect("first worker")
        .start();
    let cut = reached.notified();
    let run = workflows.start(definition, input, StartOptions::default()).await.expect("start");
    tokio::time::timeout(Duration::from_secs(30), cut).await.expect("the workflow reached its cut");
    crash(first).await;
    let second = worker(store.clone()).register(drive).build().expect("second worker").start();
    let outcome = ended(workflows.wait_for_output(run, Duration::from_secs(30)).await);
    let outcome = outcome.map_err(|run| *run);
    second.stop().await;
    outcome
}

/// The output of a run that ended, or the run when it failed or was cancelled; panics on any
/// other reason for no output (a run that did not end, a store failure).
fn ended<O>(waited: Result<O, RunWaitError>) -> Result<O, Box<Run>> {
    match waited {
        Ok(output) => Ok(output),
        Err(RunWaitError::Failed { run, .. } | RunWaitError::Cancelled { run, .. }) => Err(run),
        Err(other) => panic!("the run did not end: {other}"),
    }
}

/// Wait until run `id` is in `state`.
async fn wait_state(workflows: &Workflows, id: RunId, state: RunState) {
    eventually(&format!("run {id} to be {state}"), Duration::from_secs(30), || async {
        let run = workflows.get_run(id).await.expect("get_run")?;
        (run.state == state).then_some(())
    })
    .await;
}
