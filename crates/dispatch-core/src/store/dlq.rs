//! [`DlqStore`]: the contract of a job store's dead letter queue.

use async_trait::async_trait;

use crate::dlq::{DlqCount, DlqEntry, DlqFilter, Replay, ReplayOptions};
use crate::error::Result;
use crate::id::{DlqId, JobId};
use crate::page::{Page, PageRequest};

/// Where dead jobs live: the dead letter queue of a [`JobStore`](crate::JobStore), which requires
/// it, since promotion to the DLQ happens inside job transitions. Which entries a filter takes
/// is [`DlqFilter::matches`]; bulk calls touch at most `limit` entries, oldest (lowest ID)
/// first, so callers loop in bounded batches ([`DLQ_BATCH`](crate::dlq::DLQ_BATCH)).
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

    /// How many entries match `filter`, per (queue, job name), ordered by queue then name.
    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>>;

    /// Enqueue the entry's job again ([`transition::replay`](crate::transition::replay)), at
    /// most once per entry even under concurrent calls. Fails with
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown entry.
    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay>;

    /// Replay up to `limit` entries that match `filter` and were not replayed yet, oldest
    /// first, each at most once even when another call replays the same entries at the same
    /// time (an entry replayed by the other call is skipped, not counted). Returns each entry
    /// this call replayed with its new job, in entry order; fewer than `limit` means none is
    /// left.
    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>>;

    /// Delete up to `limit` entries matching `filter`, oldest first; returns how many were
    /// deleted (fewer than `limit` means none is left).
    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64>;
}
