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
//! # async fn demo(store: dispatch_core::DynStore) -> Result<(), Box<dyn std::error::Error>> {
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
//! let total: Result<u64, _> = workflows.wait_for_output(run, Duration::from_secs(30)).await?;
//! # drop((total, worker)); Ok(()) }
//! ```
//!
//! This crate is the runtime side; where runs, checkpoints and events live is the store's
//! business (`dispatch_core::WorkflowStore`, implemented by every Dispatch store). Also here:
//! sagas (`step_with_compensation`), run timeouts, child workflows (`child`, `start_child`,
//! `fan_out`) and deterministic helpers (`now`, `random`, `uuid`). Not here yet: cancelling a
//! run, migrating a run to another version, replay from a step.
//! The checkpoint key format is documented in the `record` module source and is persisted.
//!
//! Its tests run on every store: the workflow scenarios of `dispatch-store-tests` (module `runs`)
//! are part of each store's conformance binary, and `dispatch-durability-tests` kills real worker
//! processes at every step boundary.

mod child;
mod context;
mod definition;
mod deterministic;
mod drive;
mod engine;
mod error;
mod policy;
mod record;
mod saga;

pub use context::WorkflowContext;
pub use definition::{DRIVE_ATTEMPTS, WorkflowDefinition};
pub use engine::{DEFAULT_EVENT_KEEP, PublishOptions, StartOptions, Workflows};
pub use error::{StepError, WorkflowError};
pub use policy::StepPolicy;
