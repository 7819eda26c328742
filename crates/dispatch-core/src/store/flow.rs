//! [`FlowStore`]: queue configs (fleet-wide limits, pause) and job progress.

use async_trait::async_trait;

use crate::error::Result;
use crate::flow::{ProgressUpdate, QueueConfig, QueueFlow};
use crate::store::JobStore;

/// A store that keeps flow control: each queue's [`QueueConfig`] and the state of its gates
/// (see [`flow`](crate::flow)), enforced by [`JobStore::claim`] in the same operation as the
/// claim, and the progress reports of running jobs.
///
/// What a claim must do for a gated queue (one with a config) is the rule of
/// [`Admission`](crate::flow::Admission): candidates in claim order (tenant lanes round-robin
/// for a queue [`in_lanes`](QueueConfig::in_lanes)), paused queues and names never claimed, each
/// admitted job counted in its [`held_gates`](crate::flow::held_gates) until it leaves running.
/// A store answers [`JobStore::next_due`] without paused queues and names.
#[async_trait]
pub trait FlowStore: JobStore {
    /// Store `config` for its queue, replacing the one there (the gates' running counts and
    /// arrival times are kept). A queue's first config counts the jobs already running in it, in
    /// the same operation. Takes effect at the next claim, on every worker. Answers the queue's
    /// flow as stored. Fails with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for an invalid config ([`QueueConfig::validate`]).
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow>;

    /// The config of `queue` and its running count, if it has a config.
    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>>;

    /// Every queue with a config, by queue name.
    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>>;

    /// Remove the config of `queue`: its claims are plain again, and its jobs' concurrency keys
    /// are checked only while a claim also names a queue with a config (or once the queue has one
    /// again). Gates keep their state. Answers whether there was one.
    async fn delete_queue_config(&self, queue: &str) -> Result<bool>;

    /// Pause (`paused = true`) or resume `queue`, or only its jobs of `name` when given, in one
    /// operation that keeps the rest of the config (a queue without one gets a default config).
    /// Answers whether anything changed (pausing a paused queue changes nothing).
    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool>;

    /// Write progress reports: each applies only while its lease holds the job (one answer per
    /// item, in order: whether it was written). The last report is kept on the job, across
    /// retries, until the job is pruned.
    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>>;
}
