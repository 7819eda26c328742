//! Tallies of jobs per queue and state: [`JobCounts`].

use dispatch_core::{JobState, QueueCount};

/// How many jobs there are per queue and state, as [`JobClient::counts`](crate::JobClient::counts)
/// read them, with the sums a dashboard needs. Pairs with no jobs count 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Sorted by queue, then state in [`JobState`]'s order; no zero rows.
    rows: Vec<QueueCount>,
}

impl JobCounts {
    /// Every job, in any queue and state.
    pub fn total(&self) -> u64 {
        self.rows.iter().map(|row| row.count).sum()
    }

    /// Jobs in `state`, across queues.
    pub fn in_state(&self, state: JobState) -> u64 {
        self.rows.iter().filter(|row| row.state == state).map(|row| row.count).sum()
    }

    /// Jobs in `queue`, in any state.
    pub fn in_queue(&self, queue: &str) -> u64 {
        self.rows.iter().filter(|row| row.queue == queue).map(|row| row.count).sum()
    }

    /// Jobs in `queue` in `state`.
    pub fn get(&self, queue: &str, state: JobState) -> u64 {
        self.rows
            .iter()
            .find(|row| row.queue == queue && row.state == state)
            .map_or(0, |row| row.count)
    }

    /// The queues that have jobs, in order.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        let mut last: Option<&str> = None;
        self.rows.iter().filter_map(move |row| {
            let fresh = last != Some(row.queue.as_str());
            last = Some(&row.queue);
            fresh.then_some(row.queue.as_str())
        })
    }

    /// Every `(queue, state, count)` with jobs, sorted by queue, then state.
    pub fn iter(&self) -> impl Iterator<Item = (&str, JobState, u64)> {
        self.rows.iter().map(|row| (row.queue.as_str(), row.state, row.count))
    }
}

/// From the store's answer ([`JobStore::count_jobs`](dispatch_core::JobStore::count_jobs)), in
/// any order; rows of one queue and state are added up and zero rows dropped.
impl From<Vec<QueueCount>> for JobCounts {
    fn from(mut rows: Vec<QueueCount>) -> Self {
        rows.retain(|row| row.count > 0);
        rows.sort_by(|a, b| (&a.queue, a.state).cmp(&(&b.queue, b.state)));
        rows.dedup_by(|next, kept| {
            let same = next.queue == kept.queue && next.state == kept.state;
            if same {
                kept.count += next.count;
            }
            same
        });
        Self { rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(queue: &str, state: JobState, count: u64) -> QueueCount {
        QueueCount { queue: queue.to_owned(), state, count }
    }

    #[test]
    fn sums_per_state_queue_and_pair_from_rows_in_any_order() {
        let counts = JobCounts::from(vec![
            row("mail", JobState::Dead, 1),
            row("bulk", JobState::Available, 5),
            row("mail", JobState::Available, 2),
            row("mail", JobState::Completed, 0),
            row("bulk", JobState::Available, 1),
        ]);
        assert_eq!(counts.total(), 9);
        assert_eq!(counts.in_state(JobState::Available), 8);
        assert_eq!(counts.in_queue("mail"), 3);
        assert_eq!(counts.get("bulk", JobState::Available), 6);
        assert_eq!(counts.get("bulk", JobState::Dead), 0);
        assert_eq!(counts.queues().collect::<Vec<_>>(), ["bulk", "mail"]);
        let rows: Vec<_> = counts.iter().collect();
        assert_eq!(
            rows,
            [
                ("bulk", JobState::Available, 6),
                ("mail", JobState::Available, 2),
                ("mail", JobState::Dead, 1)
            ]
        );
    }
}
