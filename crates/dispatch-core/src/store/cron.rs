//! [`CronStore`]: cron entries kept in the store, fired by the leader as one fenced
//! compare-and-set per entry.

use async_trait::async_trait;

use crate::cluster::Leader;
use crate::cron::{CronEntry, CronFilter, CronFire, CronFireOutcome, CronRecord, DueCron};
use crate::error::Result;
use crate::id::CronId;
use crate::page::{Page, PageRequest};
use crate::scope::Scope;
use crate::store::JobStore;
use crate::time::Timestamp;

/// A store that keeps cron entries (see [`crate::cron`]). Schedule arithmetic is the caller's;
/// the store keeps entries, finds the due ones by its clock, and applies fires atomically.
#[async_trait]
pub trait CronStore: JobStore {
    /// Insert the entry, or update the one with the same `(scope, name)`. A new entry, or an
    /// update whose schedule or time zone differ ([`CronEntry::schedule_differs`]), or one
    /// that enables a disabled entry, takes `next_fire`; any other update keeps the stored next
    /// fire (a restart neither skips nor repeats a time). `last_fired` and `last_job` are kept.
    async fn save_cron(&self, entry: CronEntry, next_fire: Option<Timestamp>)
    -> Result<CronRecord>;

    /// One entry by ID.
    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>>;

    /// One entry by its `(scope, name)`.
    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>>;

    /// Entries matching `filter`, in ID order, after the page's cursor.
    async fn list_cron(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>>;

    /// Enable or disable an entry. Enabling a disabled entry sets its next fire to
    /// `next_fire` (the times it was disabled for are not caught up); otherwise the next fire
    /// is kept. Fails with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) for an unknown
    /// entry.
    async fn set_cron_enabled(
        &self,
        id: CronId,
        enabled: bool,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord>;

    /// Delete an entry; whether it existed. Jobs it enqueued stay.
    async fn delete_cron(&self, id: CronId) -> Result<bool>;

    /// Enabled entries whose next fire is at or before the store's clock, soonest first, at
    /// most `limit`, with that clock's reading.
    async fn due_cron(&self, limit: usize) -> Result<DueCron>;

    /// Leader work, fenced by `term` ([`cluster::holds`](crate::cluster::holds), checked in the
    /// same operation; else [`ErrorKind::NotLeader`](crate::ErrorKind::NotLeader) and nothing
    /// changes). Applies each fire as one atomic step: while the entry is enabled and its next
    /// fire is still `expected_next`, enqueue its jobs (unless `skip_if_running` and the
    /// entry's last job is available or running) and set `next_fire`, `last_fired` and
    /// `last_job` (the last job of this fire); else nothing ([`CronFireOutcome::Stale`]).
    /// Outcomes in the order of `fires`. An accepted call is recorded as a leader write
    /// (`cron`).
    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>>;
}
