//! [`DlqStore`]: the contract of a job store's dead letter queue.

use async_trait::async_trait;

use crate::dlq::{DlqEntry, DlqFilter, DlqPurge, Replay};
use crate::error::Result;
use crate::id::DlqId;
use crate::page::{Page, PageRequest};

/// Where dead jobs live: the dead letter queue of a [`JobStore`](crate::JobStore), which requires
/// it, since promotion to the DLQ happens inside job transitions.
#[async_trait]
pub trait DlqStore: Send + Sync + 'static {
    /// Entries matching `filter`, in ID order (the order they died), after the page's cursor.
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>>;

    /// One entry by ID.
    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>>;

    /// Enqueue the entry's job again, at most once per entry even under concurrent calls.
    /// Fails with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown entry.
    async fn replay_dlq(&self, id: DlqId) -> Result<Replay>;

    /// Delete the entries matching `filter`; returns how many were deleted.
    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64>;
}
