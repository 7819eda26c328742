//! [`VecStore`]: its records and the lookups the trait impls share. A teaching store: every
//! lookup that is not by ID scans all jobs.

use std::collections::BTreeMap;

use dispatch_core::{
    ClaimRequest, DlqEntry, DlqId, Job, JobId, JobState, LeaseToken, Page, PageRequest,
    SharedClock, Timestamp,
};
use parking_lot::Mutex;

/// Jobs and their dead letter queue in ordered maps behind one mutex, on an injected clock.
pub struct VecStore {
    /// Where "now" comes from: every relative time is resolved against it.
    pub(crate) clock: SharedClock,
    /// Every record. Held only inside synchronous code, never across an await.
    pub(crate) tables: Mutex<Tables>,
}

impl VecStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self { clock, tables: Mutex::new(Tables::default()) }
    }
}

/// What the store keeps: jobs by ID and DLQ entries by ID. Both maps are ordered by ID, which
/// is the order keyset pages walk.
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) jobs: Jobs,
    pub(crate) dlq: BTreeMap<DlqId, DlqEntry>,
}

/// The job table: one row per stored job, and the counter that numbers rows in enqueue order.
#[derive(Default)]
pub(crate) struct Jobs {
    pub(crate) rows: BTreeMap<JobId, Row>,
    next_seq: u64,
}

/// A stored job with the bookkeeping a job record does not carry.
pub(crate) struct Row {
    /// The record every transition function reads and writes.
    pub(crate) job: Job,
    /// Enqueue order: the last tie-breaker of claim order. IDs can not be used for it (two IDs
    /// made in one millisecond sort randomly).
    pub(crate) seq: u64,
    /// The token of the last finish applied; `transition::finish` reads and updates it to tell
    /// a repeated finish (`AlreadyApplied`) from a stale one (`LeaseLost`).
    pub(crate) last_finish: Option<LeaseToken>,
    /// With a unique window: the key stays held until this time, even after the job ended.
    pub(crate) unique_until: Option<Timestamp>,
}

impl Jobs {
    /// Store a new job (from an enqueue or a DLQ replay) after every job stored before it.
    pub(crate) fn insert(&mut self, job: Job, unique_until: Option<Timestamp>) {
        self.next_seq += 1;
        let row = Row { job, seq: self.next_seq, last_finish: None, unique_until };
        self.rows.insert(row.job.id, row);
    }

    /// The job holding unique key `key` of job name `name` at `now`, if any.
    pub(crate) fn key_holder(&self, name: &str, key: &str, now: Timestamp) -> Option<JobId> {
        self.rows.values().find(|row| row.holds_key(name, key, now)).map(|row| row.job.id)
    }

    /// The jobs `request` may claim at `now`, best first: highest priority, then earliest
    /// run-at, then enqueue order; at most `request.limit` of them.
    pub(crate) fn claimable(&self, request: &ClaimRequest, now: Timestamp) -> Vec<JobId> {
        let mut due: Vec<&Row> =
            self.rows.values().filter(|row| row.is_due(request, now)).collect();
        due.sort_by_key(|row| (std::cmp::Reverse(row.job.priority), row.job.run_at, row.seq));
        due.into_iter().take(request.limit).map(|row| row.job.id).collect()
    }

    /// Running jobs whose lease has expired by `now`, earliest expiry first; at most `limit`.
    pub(crate) fn expired(&self, now: Timestamp, limit: usize) -> Vec<JobId> {
        let mut expired: Vec<(Timestamp, u64, JobId)> = self
            .rows
            .values()
            .filter(|row| row.job.state == JobState::Running)
            .filter_map(|row| row.job.lease.map(|lease| (lease.expires_at, row.seq, row.job.id)))
            .filter(|&(expires_at, _, _)| expires_at <= now)
            .collect();
        expired.sort();
        expired.into_iter().take(limit).map(|(_, _, id)| id).collect()
    }
}

impl Row {
    /// Whether this job holds unique key `key` of `name`: while it is available or running, and
    /// within its window after that.
    fn holds_key(&self, name: &str, key: &str, now: Timestamp) -> bool {
        let live = !self.job.state.is_final();
        let in_window = self.unique_until.is_some_and(|until| now < until);
        self.job.name == name && self.job.unique_key.as_deref() == Some(key) && (live || in_window)
    }

    /// Whether `request` may claim this job at `now`: available, due, of a listed queue and name.
    fn is_due(&self, request: &ClaimRequest, now: Timestamp) -> bool {
        let job = &self.job;
        job.state == JobState::Available
            && job.run_at <= now
            && request.queues.contains(&job.queue)
            && request.names.contains(&job.name)
    }
}

/// One keyset page of `matching` (given in key order): the items whose key comes after the
/// page's cursor, at most the page's effective limit of them, and the cursor of the next page.
pub(crate) fn keyset_page<'a, T, K>(
    matching: impl Iterator<Item = &'a T>,
    key: impl Fn(&T) -> K,
    page: &PageRequest<K>,
) -> Page<T, K>
where
    T: Clone + 'a,
    K: Ord + Copy,
{
    let limit = page.effective_limit();
    let past_cursor = |item: &&T| page.after.is_none_or(|after| key(item) > after);
    let items: Vec<T> = matching.filter(past_cursor).take(limit + 1).cloned().collect();
    Page::from_overfetch(items, limit, &key)
}
