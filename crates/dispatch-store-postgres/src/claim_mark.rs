//! Where a claim starts reading each priority level: just before the jobs this store claimed
//! last, while a backlog lasts.
//!
//! A claim takes a level's jobs from the front of its claim-index range (oldest run-at first),
//! and every job claimed leaves its index entry behind, dead, until vacuum removes it. During a
//! drain a level's front fills with them, and every claim walked all of them: behind 50,000, a
//! claim of 64 jobs touched ~1,600 buffers instead of ~76 and took three times as long. So while
//! claims come back full, the next claim of a level starts at its mark: the latest run-at this
//! store claimed there, less [`SLACK`] (an enqueue that was running while the claim ran may
//! commit a job a little below it).
//!
//! A mark is a hint, never a promise: a job can land below it (a later commit slower than the
//! slack, a run-at set in the past). So the claim statement reads below the marks too whenever
//! the marked ranges can not fill its batch (a claim comes back short only when nothing else is
//! due), the marks are dropped after a short claim, and a claim reads every level from its
//! front at least every [`FULL_SCAN_EVERY`]: a job below a mark waits at most that long beyond
//! its turn, and only while claims come back full.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::ClaimRequest;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::row::JobRow;

/// How far below the latest claimed run-at a level's next claim starts.
const SLACK: Duration = Duration::from_millis(50);

/// The longest a claim goes on reading from marks before it reads every level from its front.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// A priority level: queue, job name, priority.
type Level = (String, String, i32);

/// The marks of one store, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct ClaimMarks {
    inner: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Per level, the lowest run-at (µs) its next claim reads.
    from: HashMap<Level, i64>,
    /// When a claim last read every level from its front.
    full_scan_at: Option<Instant>,
}

/// Where a claim starts per level, as the claim statement's array parameters; empty when it
/// reads every level from its front.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    pub(crate) queues: Vec<String>,
    pub(crate) names: Vec<String>,
    pub(crate) priorities: Vec<i32>,
    pub(crate) from: Vec<i64>,
}

impl Hints {
    fn is_full_scan(&self) -> bool {
        self.from.is_empty()
    }
}

impl ClaimMarks {
    /// The hints for `request`'s next claim.
    pub(crate) fn hints(&self, request: &ClaimRequest) -> Hints {
        let marks = self.inner.lock();
        let due = marks.full_scan_at.is_none_or(|at| at.elapsed() >= FULL_SCAN_EVERY);
        let mut hints = Hints::default();
        if due {
            return hints;
        }
        for ((queue, name, priority), &from) in &marks.from {
            if request.queues.contains(queue) && request.names.contains(name) {
                hints.queues.push(queue.clone());
                hints.names.push(name.clone());
                hints.priorities.push(*priority);
                hints.from.push(from);
            }
        }
        hints
    }

    /// Learn from a claim of `request` made with `hints` that returned `claimed`.
    pub(crate) fn update(&self, request: &ClaimRequest, hints: &Hints, claimed: &[JobRow]) {
        let mut marks = self.inner.lock();
        if hints.is_full_scan() {
            marks.full_scan_at = Some(Instant::now());
        }
        if claimed.len() < request.limit {
            // Drained, or jobs wait below a mark: the next claim reads from the fronts.
            marks
                .from
                .retain(|(q, n, _), _| !(request.queues.contains(q) && request.names.contains(n)));
            marks.full_scan_at = None;
            return;
        }
        let slack = i64::try_from(SLACK.as_micros()).unwrap_or(i64::MAX);
        for row in claimed {
            let job = &row.job;
            let level = (job.queue.clone(), job.name.clone(), job.priority);
            let from = job.run_at.as_unix_micros().saturating_sub(slack);
            let mark = marks.from.entry(level).or_insert(from);
            *mark = (*mark).max(from);
        }
    }
}
