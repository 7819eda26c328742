//! The store contracts: one trait per concern, each a seam a store implements only if it keeps
//! that concern.
//!
//! * [`JobStore`] (jobs) with its [`DlqStore`] (their dead letter queue, a supertrait: a job
//!   dies and gets its entry in one operation): all the job runtime needs. A custom store that
//!   runs plain jobs implements these two and nothing else.
//! * [`WorkflowStore`], a [`JobStore`] that also keeps workflow runs, checkpoints and events.
//! * [`EnqueueTransaction`], an open transaction of a store that can enqueue jobs inside the
//!   application's own writes (the stores with transactions implement it for their own
//!   transaction type).
//!
//! Optional powers are provided methods with a default a store may override
//! ([`JobStore::next_due`], [`JobStore::wakeups`], [`JobStore::release_claim`]), never flags.
//! Powers that belong to one store's own API (opening a transaction, its connection) stay on that
//! store's type; only enqueueing inside it is shared, so typed enqueue reads the same everywhere.
//! * [`MembershipStore`] (the worker registry) and [`LeadershipStore`] (leader election with
//!   fencing terms): a cluster of workers on one store ([`ClusterStore`] names both).
//!
//! * [`RetentionStore`]: pruning what a retention policy no longer keeps, leader work.
//!
//! * [`CronStore`]: cron entries, fired by the leader as one fenced compare-and-set each.
//!
//! * [`FlowStore`]: queue configs (fleet-wide limits, pause) enforced by the claim, and job
//!   progress.
//!
//! Later concerns (webhooks) each get a trait of their own
//! here, so a feature asks for exactly the trait it needs and the compiler says when a store
//! lacks it. Every trait is dyn-compatible: the runtime holds
//! `Arc<dyn JobStore>` or `Arc<dyn WorkflowStore>`, and the second upcasts to the first.
//!
//! The records these traits speak in live beside them: [`crate::job`], [`crate::dlq`],
//! [`crate::workflow`].

pub mod cron;
pub mod dlq;
pub mod flow;
pub mod job;
pub mod leadership;
pub mod membership;
pub mod retention;
pub mod transaction;
pub mod workflow;

pub use cron::CronStore;
pub use dlq::DlqStore;
pub use flow::FlowStore;
pub use job::JobStore;
pub use leadership::LeadershipStore;
pub use membership::MembershipStore;
pub use retention::RetentionStore;
pub use transaction::EnqueueTransaction;
pub use workflow::WorkflowStore;

/// A store that keeps a cluster: the worker registry and leader election together (every
/// built-in store is one). Implemented for every store that implements both.
pub trait ClusterStore: MembershipStore + LeadershipStore {}

impl<S: MembershipStore + LeadershipStore + ?Sized> ClusterStore for S {}
