//! The claim index: available jobs per (queue, name), in claim order.
//!
//! Claim must not scan every job ever stored. Each (queue, name) pair keeps its available jobs
//! in a `BTreeSet` ordered by priority (highest first), then run-at, then enqueue sequence. A
//! claim walks only the pairs it asks for; within a priority level it stops at the first job
//! that is not due yet and seeks straight to the next level, so future-scheduled jobs cost one
//! step per priority level, not one per job.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use dispatch_core::{JobId, Timestamp};
use uuid::Uuid;

/// A job's place in claim order.
pub(crate) type Key = (Reverse<i32>, Timestamp, u64, JobId);

/// The key of a job.
pub(crate) fn key(priority: i32, run_at: Timestamp, seq: u64, id: JobId) -> Key {
    (Reverse(priority), run_at, seq, id)
}

/// The jobs of one (queue, name) pair, by tenant (`None`: jobs without one): the lanes a fair
/// queue's claim reads.
pub(crate) type Lanes = BTreeMap<Option<String>, BTreeSet<Key>>;

/// Available jobs by queue, then job name; and the same again by tenant, for flow control's
/// lanes.
#[derive(Debug, Default)]
pub(crate) struct AvailableIndex {
    by_queue: HashMap<String, HashMap<String, BTreeSet<Key>>>,
    lanes: HashMap<(String, String), Lanes>,
}

impl AvailableIndex {
    pub(crate) fn insert(&mut self, queue: &str, name: &str, tenant: Option<&str>, key: Key) {
        let names = self.by_queue.entry(queue.to_owned()).or_default();
        names.entry(name.to_owned()).or_default().insert(key);
        let lanes = self.lanes.entry((queue.to_owned(), name.to_owned())).or_default();
        lanes.entry(tenant.map(str::to_owned)).or_default().insert(key);
    }

    pub(crate) fn remove(&mut self, queue: &str, name: &str, tenant: Option<&str>, key: &Key) {
        if let Some(set) = self.by_queue.get_mut(queue).and_then(|names| names.get_mut(name)) {
            set.remove(key);
        }
        let pair = (queue.to_owned(), name.to_owned());
        if let Some(lanes) = self.lanes.get_mut(&pair) {
            let tenant = tenant.map(str::to_owned);
            if let Some(lane) = lanes.get_mut(&tenant) {
                lane.remove(key);
                if lane.is_empty() {
                    lanes.remove(&tenant);
                }
            }
        }
    }

    /// The available jobs of one (queue, name) pair, in claim order.
    pub(crate) fn pair(&self, queue: &str, name: &str) -> Option<&BTreeSet<Key>> {
        self.by_queue.get(queue).and_then(|names| names.get(name))
    }

    /// The lanes of one (queue, name) pair.
    pub(crate) fn lanes(&self, queue: &str, name: &str) -> Option<&Lanes> {
        self.lanes.get(&(queue.to_owned(), name.to_owned()))
    }

    /// The best `limit` due jobs (run-at ≤ `now`) across the given queues and names, in claim
    /// order.
    pub(crate) fn best_due(
        &self,
        queues: &[String],
        names: &[String],
        now: Timestamp,
        limit: usize,
    ) -> Vec<Key> {
        let mut candidates = Vec::new();
        for queue in queues {
            let Some(by_name) = self.by_queue.get(queue) else { continue };
            for name in names {
                if let Some(set) = by_name.get(name) {
                    collect_due(set, now, limit, &mut candidates);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.truncate(limit);
        candidates
    }
}

impl AvailableIndex {
    /// The earliest run-at among the available jobs of the given queues and names.
    pub(crate) fn earliest(&self, queues: &[String], names: &[String]) -> Option<Timestamp> {
        let sets = queues
            .iter()
            .filter_map(|queue| self.by_queue.get(queue))
            .flat_map(|by_name| names.iter().filter_map(|name| by_name.get(name)));
        sets.filter_map(earliest_in).min()
    }
}

/// The earliest run-at in `set`: the first key of each priority level, levels found by seeking.
fn earliest_in(set: &BTreeSet<Key>) -> Option<Timestamp> {
    let mut earliest: Option<Timestamp> = None;
    let mut start = Bound::Unbounded;
    while let Some(first) = set.range((start, Bound::Unbounded)).next() {
        earliest = Some(earliest.map_or(first.1, |e| e.min(first.1)));
        let Some(lower) = first.0.0.checked_sub(1) else { break };
        start = Bound::Included(level_start(lower));
    }
    earliest
}

/// Push up to `limit` due keys of `set` onto `out`, in order.
fn collect_due(set: &BTreeSet<Key>, now: Timestamp, limit: usize, out: &mut Vec<Key>) {
    collect_due_where(set, now, limit, usize::MAX, |_| true, out);
}

/// Push up to `limit` due keys of `set` that `keep` accepts onto `out`, in order, looking at
/// no more than `scan` due keys.
pub(crate) fn collect_due_where(
    set: &BTreeSet<Key>,
    now: Timestamp,
    limit: usize,
    scan: usize,
    mut keep: impl FnMut(&Key) -> bool,
    out: &mut Vec<Key>,
) {
    if limit == 0 {
        return;
    }
    let (mut taken, mut scanned) = (0, 0);
    let mut start = Bound::Unbounded;
    'levels: loop {
        for key in set.range((start, Bound::Unbounded)) {
            if key.1 <= now {
                scanned += 1;
                if keep(key) {
                    out.push(*key);
                    taken += 1;
                }
                if taken == limit || scanned >= scan {
                    return;
                }
                continue;
            }
            // Not due: nothing later at this priority is due either; seek to the next level.
            let Some(lower) = key.0.0.checked_sub(1) else { return };
            start = Bound::Included(level_start(lower));
            continue 'levels;
        }
        return;
    }
}

/// The smallest key of a priority level.
fn level_start(priority: i32) -> Key {
    (Reverse(priority), Timestamp::from_unix_micros(i64::MIN), 0, JobId::from_uuid(Uuid::nil()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_future_jobs_per_priority_level() {
        let now = Timestamp::from_unix_micros(1_000);
        let mut set = BTreeSet::new();
        let id = || JobId::new();
        let future = key(5, Timestamp::from_unix_micros(2_000), 1, id());
        let due_low = key(1, now, 2, id());
        let due_high = key(9, now, 3, id());
        set.extend([future, due_low, due_high]);
        let mut out = Vec::new();
        collect_due(&set, now, 10, &mut out);
        assert_eq!(out, [due_high, due_low]);
        assert_eq!(earliest_in(&set), Some(now));
        set.remove(&due_high);
        set.remove(&due_low);
        assert_eq!(earliest_in(&set), Some(Timestamp::from_unix_micros(2_000)));
    }
}
