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
//! Later concerns (cron entries, cluster membership, retention) each get a trait of their own
//! here, so a feature asks for exactly the trait it needs and the compiler says when a store
//! lacks it. Every trait is dyn-compatible: the runtime holds
//! `Arc<dyn JobStore>` or `Arc<dyn WorkflowStore>`, and the second upcasts to the first.
//!
//! The records these traits speak in live beside them: [`crate::job`], [`crate::dlq`],
//! [`crate::workflow`].

pub mod dlq;
pub mod job;
pub mod transaction;
pub mod workflow;

pub use dlq::DlqStore;
pub use job::JobStore;
pub use transaction::EnqueueTransaction;
pub use workflow::WorkflowStore;
