//! [`LeaderTask`]: work only the leader does, under its term.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Leader, Result};

/// Work the leader runs at an interval while it leads. Every store write it makes passes
/// `term`, and the store refuses it when the term is no longer valid: return that
/// [`ErrorKind::NotLeader`](dispatch_core::ErrorKind::NotLeader) error and the leader steps
/// down. A task is never run after the leader's local deadline, but a pause can always fall
/// between that check and a write: the store's check is the guarantee.
#[async_trait]
pub trait LeaderTask: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// How long between runs.
    fn interval(&self) -> Duration;

    /// One run under `term`.
    async fn run(&self, term: &Leader) -> Result<()>;
}
