//! Durable workflows for Dispatch: a workflow is an ordinary async function over a
//! [`WorkflowContext`]; each step's result is checkpointed, so after a crash, a restart or a
//! deploy the run resumes where it stopped and no finished step runs again.
//!
//! Workflows are not a second runtime. A run is advanced by a *drive job* of the job runtime
//! (`dispatch-job`), claimed by workflow name and version like any job: one fetch loop, one
//! concurrency limit and one rescue mechanism serve jobs and runs alike. A durable sleep, an
//! event wait or a step's retry backoff ends the drive and snoozes its job until the wake time
//! (or until the event arrives): a waiting run holds no worker slot.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn dispatch_core::WorkflowStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dispatch_workflow::{StartOptions, WorkflowContext, WorkflowDefinition, Workflows};
//!
//! let order = WorkflowDefinition::new("order", |wf: WorkflowContext, id: u64| async move {
//!     let total: u64 = wf.step("price", || async move { Ok(id * 100) }).await?;
//!     wf.sleep(Duration::from_secs(2)).await?;
//!     let paid: Option<bool> = wf.wait_for_event("paid", &id.to_string(), Duration::from_secs(60)).await?;
//!     Ok(if paid.unwrap_or(false) { total } else { 0 })
//! });
//! let workflows = Workflows::new(store.clone());
//! let drive = workflows.register(&order);
//! let worker = dispatch_job::Worker::builder(store).register(drive).build()?.start();
//! let run = workflows.start(&order, &7, StartOptions::default()).await?;
//! workflows.publish("paid", "7", &true, Default::default()).await?;
//! let total: u64 = workflows.wait_for_output(run, Duration::from_secs(30)).await?;
//! # drop((total, worker)); Ok(()) }
//! ```
//!
//! **For** application code with work of several steps that must finish despite crashes,
//! restarts and deploys: steps (retried by a [`StepPolicy`], in loops too), durable sleeps,
//! correlated events (`wait_for_event`, [`Workflows::publish`]), parallel branches, sagas
//! (`step_with_compensation`), run timeouts ([`WorkflowDefinition::timeout`]), child workflows
//! (`child`, `start_child`, `fan_out`) and deterministic helpers (`now`, `random`, `uuid`). Key
//! types: [`WorkflowDefinition`], [`WorkflowContext`], [`Workflows`] (register, start, wait for
//! output, publish; cancel a run, migrate it to another version, rewind it to a checkpoint;
//! get, list, checkpoints; a run says what it waits for in `Run::waiting`), [`StepError`],
//! [`WorkflowError`] and [`RunWaitError`]. No cargo features.
//!
//! **Not** a store: runs, checkpoints and events live in the store
//! (`dispatch_core::WorkflowStore`, implemented by every Dispatch store). Not a sandbox: code
//! between primitives re-runs on every drive and must be deterministic by convention (side
//! effects go in steps). A step runs at least once, not exactly once (a crash after its side
//! effect and before its checkpoint runs it again), and a saga compensates, it does not roll
//! back.
//!
//! Modules, lowest first (each imports only modules listed before it):
//! - `error`: [`StepError`], [`WorkflowError`];
//! - `output`: [`RunWaitError`], why waiting for a run's output gave none;
//! - `record`: what checkpoints hold, and the persisted checkpoint key format (`Kind`, `Path`,
//!   `Key`: one parser, one renderer);
//! - `policy`: [`StepPolicy`];
//! - `drive`: one drive of a run, the state its primitives share, and the loop that runs the
//!   workflow function until it returns, panics or halts (to suspend, or on a store error);
//! - `context`: [`WorkflowContext`] and its primitives (step, sleep, event wait, parallel);
//! - `deterministic`: `now`, `random`, `uuid`, journaled;
//! - `definition`: [`WorkflowDefinition`], its type-erased body, a new run's drive job;
//! - `saga`: the run timeout and compensations around every body, `step_with_compensation`;
//! - `child`: child workflows;
//! - `engine`: [`Workflows`], which drives runs when a worker hands it their drive jobs.
//!
//! Its tests run on every store: the workflow scenarios of `dispatch-store-tests` (module `runs`)
//! are part of each store's conformance binary, and `dispatch-durability-tests` kills real worker
//! processes at every step boundary; `tests/it` pins the checkpoint keys earlier code wrote.

mod child;
mod context;
mod definition;
mod deterministic;
mod drive;
mod engine;
mod error;
mod output;
mod policy;
mod record;
mod saga;

pub use context::WorkflowContext;
pub use definition::{DRIVE_ATTEMPTS, WorkflowDefinition};
pub use engine::{DEFAULT_EVENT_KEEP, PublishOptions, StartOptions, Workflows};
pub use error::{StepError, WorkflowError};
pub use output::RunWaitError;
pub use policy::StepPolicy;
