//! The key names the Rust side reads directly (plain reads that need no script), written as
//! `lua/prelude.lua` writes them, and IDs as the keys spell them.

use uuid::Uuid;

use crate::RedisStore;

/// An ID as keys and index members spell it: its UUID's 32 lowercase hex digits (lexical order
/// is creation order for UUIDv7).
pub(crate) fn hex(uuid: Uuid) -> String {
    uuid.simple().to_string()
}

impl RedisStore {
    /// The hash of job `id` (hex).
    pub(crate) fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.inner.prefix)
    }

    /// The hash of DLQ entry `id` (hex).
    pub(crate) fn dlq_key(&self, id: &str) -> String {
        format!("{}:dlq:{id}", self.inner.prefix)
    }

    /// The hash of run `id` (hex).
    pub(crate) fn run_key(&self, id: &str) -> String {
        format!("{}:run:{id}", self.inner.prefix)
    }

    /// The counts per (state, queue) hash.
    pub(crate) fn counts_key(&self) -> String {
        format!("{}:counts", self.inner.prefix)
    }

    /// The hash of leadership `name`.
    pub(crate) fn leader_key(&self, name: &str) -> String {
        format!("{}:leader:{name}", self.inner.prefix)
    }

    /// The list of the writes accepted under leadership `name`'s terms, oldest first.
    pub(crate) fn leader_writes_key(&self, name: &str) -> String {
        format!("{}:leaderwrites:{name}", self.inner.prefix)
    }
}
