//! Dispatch: durable background jobs for Rust, as a library.
//!
//! This umbrella crate wires the pieces together with [`Dispatcher::builder`] and re-exports
//! them. It owns no logic beyond that composition; an application that wants fewer crates can
//! depend on `dispatch-job` and a store crate directly.
//!
//! | feature  | default | what it adds |
//! |----------|---------|--------------|
//! | `memory` | yes     | [`MemoryStore`], the in-process store (`dispatch-store-memory`) |
//! | `workflow` | yes   | [`workflow`]: durable workflows (`dispatch-workflow`) |
//! | `cluster` | yes    | [`cluster`]: leader election, dead-worker takeover, retention (`dispatch-cluster`) |
//! | `cron` | yes       | [`cron`]: cron entries fired by the leader (`dispatch-cron`; turns `cluster` on) |
//! | `dlq` | yes        | [`dlq`]: the dead letter queue service (`dispatch-dlq`) |
//! | `sqlite` | no      | `SqliteStore`, the embedded durable store (`dispatch-store-sqlite`) |
//! | `postgres` | no    | `PostgresStore`, the production store (`dispatch-store-postgres`) |
//! | `redis` | no       | `RedisStore`, the store for teams whose queue state lives in Redis (`dispatch-store-redis`) |
//!
//! Start with the [`prelude`].

mod builder;
#[cfg(feature = "cron")]
mod crons;
mod dispatcher;
mod jobs;
#[cfg(feature = "cluster")]
mod membership;
mod services;
#[cfg(feature = "workflow")]
mod workflows;

#[cfg(feature = "cluster")]
pub use dispatch_cluster as cluster;
pub use dispatch_core as core;
#[cfg(feature = "cron")]
pub use dispatch_cron as cron;
#[cfg(feature = "dlq")]
pub use dispatch_dlq as dlq;
pub use dispatch_job as job;
#[cfg(feature = "memory")]
pub use dispatch_store_memory as memory;
#[cfg(feature = "postgres")]
pub use dispatch_store_postgres as postgres;
#[cfg(feature = "redis")]
pub use dispatch_store_redis as redis;
#[cfg(feature = "sqlite")]
pub use dispatch_store_sqlite as sqlite;
#[cfg(feature = "workflow")]
pub use dispatch_workflow as workflow;

#[doc(inline)]
pub use builder::DispatcherBuilder;
#[doc(inline)]
pub use dispatch_core::{Error, ErrorKind, Result};

/// This version of Dispatch (the `dispatch` crate's version; every crate of the workspace
/// shares it). Worth logging at start-up, and reporting with a bug.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
#[doc(inline)]
#[cfg(feature = "memory")]
pub use dispatch_store_memory::MemoryStore;
#[doc(inline)]
#[cfg(feature = "postgres")]
pub use dispatch_store_postgres::PostgresStore;
#[doc(inline)]
#[cfg(feature = "redis")]
pub use dispatch_store_redis::RedisStore;
#[doc(inline)]
#[cfg(feature = "sqlite")]
pub use dispatch_store_sqlite::SqliteStore;
#[doc(inline)]
pub use dispatcher::{Dispatcher, shutdown_signal};

/// The names most applications use: `use dispatch::prelude::*;` is enough to define, enqueue,
/// wait for and inspect jobs (and workflows, with the `workflow` feature).
pub mod prelude {
    pub use crate::{Dispatcher, Error, ErrorKind, Result};
    pub use dispatch_core::{
        Backoff, DlqFilter, Event, Hook, Job, JobFilter, JobId, JobState, PageRequest, QueueConfig,
        Rate, ReplayOptions, Scope,
    };
    pub use dispatch_job::{
        CancelReason, EnqueueOptions, EnqueueTransactionExt, JobContext, JobDefinition, JobError,
        JobResult, JobWaitError,
    };

    #[cfg(feature = "memory")]
    pub use dispatch_store_memory::MemoryStore;
    #[cfg(feature = "postgres")]
    pub use dispatch_store_postgres::PostgresStore;
    #[cfg(feature = "redis")]
    pub use dispatch_store_redis::RedisStore;
    #[cfg(feature = "sqlite")]
    pub use dispatch_store_sqlite::SqliteStore;
    #[cfg(feature = "cron")]
    pub use {
        dispatch_core::{CatchUp, Overlap},
        dispatch_cron::CronSpec,
    };
    #[cfg(feature = "workflow")]
    pub use {
        dispatch_core::{RunId, RunState, WaitingFor},
        dispatch_workflow::{RunWaitError, StepError, WorkflowContext, WorkflowDefinition},
    };
}
