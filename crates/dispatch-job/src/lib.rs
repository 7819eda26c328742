//! Typed background jobs for Dispatch: definitions, the handler stack, the worker pool, hooks.
//!
//! Use it directly when you want jobs without the `dispatch` umbrella: pick a store, define jobs
//! with [`JobDefinition`], run them with a [`Worker`], enqueue, inspect and wait for them with a
//! [`JobClient`]. It is not a
//! store and has no persistence of its own; workflows and cron build on it in their own crates.
//!
//! Key types: [`JobDefinition`] (name + input type + handler + defaults), [`EnqueueOptions`]
//! (per-call overrides), [`JobContext`] (what a handler knows, with its [`CancelToken`]),
//! [`JobError`] (retry, permanent, snooze), [`Worker`] / [`WorkerHandle`], [`JobClient`] (with [`JobCounts`] and [`JobWaitError`]), and the
//! tower layers in [`layer`].

pub mod client;
pub mod context;
pub mod definition;
pub mod error;
pub mod hooks;
pub mod layer;
pub mod registry;
pub mod service;
pub mod transaction;
pub mod worker;

mod progress;
mod waiters;

#[doc(inline)]
pub use client::{JobClient, JobCounts, JobWaitError, Queues};
#[doc(inline)]
pub use context::{CancelReason, CancelToken, JobContext, current_scope, with_scope};
#[doc(inline)]
pub use definition::{EnqueueOptions, JobDefaults, JobDefinition, JobInput};
#[doc(inline)]
pub use error::{JobError, JobResult};
#[doc(inline)]
pub use hooks::HookBus;
#[doc(inline)]
pub use registry::Registry;
#[doc(inline)]
pub use service::{JobRequest, JobService};
#[doc(inline)]
pub use transaction::EnqueueTransactionExt;
#[doc(inline)]
pub use worker::{
    HealthProbe, RecentError, ShutdownReport, Worker, WorkerBuilder, WorkerConfig, WorkerHandle,
    WorkerHealth,
};
