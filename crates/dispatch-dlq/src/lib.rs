//! The dead letter queue service of Dispatch: inspect, count, replay and purge dead jobs.
//!
//! What it is for: [`Dlq`] is the one place applications manage dead jobs. Listing, counting
//! and single replays forward to the store; bulk replays and purges loop over the store's
//! bounded batch calls ([`DLQ_BATCH`] entries each), so clearing a million entries never holds
//! a lock for long, and each batch emits its hooks ([`Event::DlqReplayed`],
//! [`Event::DlqPurged`]).
//!
//! What it is not: where entries are written (a store writes one in the same operation that
//! makes its job dead) nor the rules of a replay ([`transition::replay`](dispatch_core::transition::replay))
//! or of a filter ([`DlqFilter::matches`]), which live in `dispatch-core` and every store.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::dlq::DLQ_BATCH;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, Event, JobStore, Page, PageRequest, Replay,
    ReplayOptions, Result, SharedClock, SystemClock,
};
use dispatch_job::HookBus;

/// What a bulk replay or purge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkReport {
    /// Entries replayed or purged.
    pub touched: u64,
    /// Store calls it took.
    pub batches: u64,
}

/// Manages a store's dead letter queue. Cheap to clone.
///
/// ```
/// # use std::sync::Arc;
/// # use dispatch_core::{DlqFilter, ReplayOptions};
/// # use dispatch_dlq::Dlq;
/// # use dispatch_store_memory::MemoryStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dispatch_core::Result<()> {
/// let dlq = Dlq::new(Arc::new(MemoryStore::new()));
/// let failed_payments = DlqFilter { queue: Some("payments".into()), ..DlqFilter::default() };
/// let replayed = dlq.replay_matching(&failed_payments, &ReplayOptions::default()).await?;
/// assert_eq!(replayed.touched, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dlq {
    store: Arc<dyn JobStore>,
    hooks: HookBus,
    clock: SharedClock,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq").field("hooks", &self.hooks.is_enabled()).finish_non_exhaustive()
    }
}

impl Dlq {
    /// The DLQ of `store`, emitting no hooks, reading the system clock for
    /// [`purge_older_than`](Self::purge_older_than).
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        Self { store, hooks: HookBus::disabled(), clock: Arc::new(SystemClock) }
    }

    /// Emit [`Event::DlqReplayed`] and [`Event::DlqPurged`] to `hooks`.
    #[must_use]
    pub fn hooks(mut self, hooks: HookBus) -> Self {
        self.hooks = hooks;
        self
    }

    /// Read `clock` for [`purge_older_than`](Self::purge_older_than) (the store's clock, so
    /// the cut-off compares with the times the store wrote).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Entries matching `filter`, in ID order (the order the jobs died), after the page's
    /// cursor.
    pub async fn list(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        self.store.list_dlq(filter, page).await
    }

    /// One entry by ID (a dead job carries its entry's ID in
    /// [`Job::dlq_id`](dispatch_core::Job::dlq_id)).
    pub async fn get(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.store.get_dlq(id).await
    }

    /// How many entries match `filter`, per (queue, job name).
    pub async fn count(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        self.store.count_dlq(filter).await
    }

    /// Replay one entry as a new job, at most once per entry: a second replay answers the
    /// first one's job. Fails with [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound)
    /// for an unknown entry.
    pub async fn replay(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        let replay = self.store.replay_dlq(id, options).await?;
        if let Replay::Replayed(job) = replay {
            self.hooks.emit(|| Event::DlqReplayed { entry: id, job });
        }
        Ok(replay)
    }

    /// Replay every entry matching `filter` not replayed yet, oldest first, in batches of
    /// [`DLQ_BATCH`]. An entry another call replays at the same time is replayed once, by
    /// whichever call gets it, and counted by that call only.
    pub async fn replay_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
    ) -> Result<BulkReport> {
        let filter = filter.unreplayed();
        let mut report = BulkReport::default();
        loop {
            let replayed = self.store.replay_dlq_matching(&filter, options, DLQ_BATCH).await?;
            report.batches += 1;
            report.touched += replayed.len() as u64;
            for &(entry, job) in &replayed {
                self.hooks.emit(|| Event::DlqReplayed { entry, job });
            }
            if replayed.len() < DLQ_BATCH {
                return Ok(report);
            }
        }
    }

    /// Delete every entry matching `filter` (an all-unset filter deletes every entry), oldest
    /// first, in batches of [`DLQ_BATCH`].
    pub async fn purge(&self, filter: &DlqFilter) -> Result<BulkReport> {
        let mut report = BulkReport::default();
        loop {
            let deleted = self.store.purge_dlq(filter, DLQ_BATCH).await?;
            report.batches += 1;
            report.touched += deleted;
            if deleted > 0 {
                self.hooks.emit(|| Event::DlqPurged { count: deleted });
            }
            if deleted < DLQ_BATCH as u64 {
                return Ok(report);
            }
        }
    }

    /// Delete every entry whose job died more than `age` ago.
    pub async fn purge_older_than(&self, age: Duration) -> Result<BulkReport> {
        let cutoff = self.clock.now() - age;
        self.purge(&DlqFilter { failed_before: Some(cutoff), ..DlqFilter::default() }).await
    }
}
