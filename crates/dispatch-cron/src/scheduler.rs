//! [`CronScheduler`]: the leader's cron task. Each tick reads the due entries by the store's
//! clock, plans each fire ([`plan`](crate::plan::plan)) and hands the fires to the store, which
//! applies each as one compare-and-set fenced by the leader's term.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    CronFire, CronFireOutcome, CronId, CronInfo, CronRecord, CronSkip, CronStore, Enqueued, Event,
    JobId, Leader, Result, Timestamp,
};
use dispatch_job::HookBus;

use crate::plan::{Plan, plan};
use crate::schedule::Schedule;

/// How many due entries one store read takes, unless [`CronScheduler::batch`] says.
pub const DEFAULT_BATCH: usize = 500;
/// How often the leader looks for due entries, unless [`CronScheduler::interval`] says.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// What one [`CronScheduler::tick`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Each job a fire enqueued (or found already enqueued): the entry, the scheduled time
    /// and the job.
    pub fired: Vec<(CronId, Timestamp, JobId)>,
    /// Scheduled times skipped because they were missed.
    pub skipped: u64,
    /// Fires skipped because the entry's previous job was unfinished.
    pub overlapped: u64,
    /// Fires the store refused because the entry changed since it was read.
    pub stale: u64,
}

/// Fires due cron entries: a [`LeaderTask`](dispatch_cluster::LeaderTask) (named `cron`) that
/// runs [`tick`](Self::tick) every [`interval`](Self::interval) while this process leads.
///
/// Which process fires is the store's decision, not this task's: every fire is fenced by the
/// leader's term and applies only while the entry's next fire is the one read, and each job
/// carries the unique key of its entry and time, so a deposed leader, two overlapping ticks or
/// a crash between the enqueue and the advance never fire one scheduled time twice.
pub struct CronScheduler {
    store: Arc<dyn CronStore>,
    hooks: HookBus,
    batch: usize,
    interval: Duration,
}

impl std::fmt::Debug for CronScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronScheduler")
            .field("batch", &self.batch)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl CronScheduler {
    /// Fire the entries of `store`, emitting no hooks, [`DEFAULT_BATCH`] entries per read,
    /// every [`DEFAULT_INTERVAL`].
    pub fn new(store: Arc<dyn CronStore>) -> Self {
        Self { store, hooks: HookBus::disabled(), batch: DEFAULT_BATCH, interval: DEFAULT_INTERVAL }
    }

    /// Emit [`Event::CronFired`] and [`Event::CronSkipped`] to `hooks`.
    #[must_use]
    pub fn hooks(mut self, hooks: HookBus) -> Self {
        self.hooks = hooks;
        self
    }

    /// Read at most `batch` due entries per store call (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Look for due entries every `interval`.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Fire what is due under `term`: read a batch of due entries, plan them at the store's
    /// clock, apply the fires, emit the hooks; again while a batch came back full and moved
    /// something. A refused term ([`ErrorKind::NotLeader`](dispatch_core::ErrorKind)) is
    /// returned as it is, so the leader steps down.
    pub async fn tick(&self, term: &Leader) -> Result<TickReport> {
        let mut report = TickReport::default();
        let mut started = None;
        loop {
            let due = self.store.due_cron(self.batch).await?;
            let full = due.entries.len() >= self.batch;
            // Entries come soonest first: once a batch reaches entries that fell due after the
            // tick began, the tick has caught up. Going on would chase schedules that fall due
            // faster than the store can fire them, and the tick would never end.
            let began = *started.get_or_insert(due.now);
            let behind = due.entries.last().and_then(|r| r.next_fire).is_some_and(|t| t <= began);
            let planned: Vec<(CronInfo, Plan)> =
                due.entries.iter().filter_map(|record| plan_record(record, due.now)).collect();
            if planned.is_empty() {
                return Ok(report);
            }
            let fires: Vec<CronFire> = planned.iter().map(|(_, p)| p.fire.clone()).collect();
            let outcomes = self.store.fire_cron(term, fires).await?;
            let stale_before = report.stale;
            for ((info, plan), outcome) in planned.into_iter().zip(outcomes) {
                self.record(&mut report, info, plan, outcome);
            }
            // A batch that moved nothing would come back the same: stop until the next tick.
            let moved = report.stale - stale_before < due.entries.len() as u64;
            if !full || !moved || !behind {
                return Ok(report);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Count one fire's outcome and emit its hooks.
    fn record(
        &self,
        report: &mut TickReport,
        info: CronInfo,
        plan: Plan,
        outcome: CronFireOutcome,
    ) {
        let missed = |report: &mut TickReport| {
            if let Some(skipped) = plan.skipped {
                report.skipped += u64::from(skipped.count);
                self.hooks.emit(|| Event::CronSkipped {
                    entry: info.clone(),
                    scheduled: skipped.first,
                    count: skipped.count,
                    reason: CronSkip::Missed,
                });
            }
        };
        match outcome {
            CronFireOutcome::Fired(enqueued) => {
                missed(report);
                for (&scheduled, job) in plan.scheduled.iter().zip(enqueued) {
                    report.fired.push((info.id, scheduled, job.id()));
                    self.hooks.emit(|| fired(&info, scheduled, job));
                }
            }
            CronFireOutcome::Overlapped { previous } => {
                missed(report);
                report.overlapped += 1;
                if let Some(&first) = plan.scheduled.first() {
                    self.hooks.emit(|| Event::CronSkipped {
                        entry: info.clone(),
                        scheduled: first,
                        count: u32::try_from(plan.scheduled.len()).unwrap_or(u32::MAX),
                        reason: CronSkip::Overlap { previous },
                    });
                }
            }
            CronFireOutcome::Stale => report.stale += 1,
        }
    }
}

fn fired(info: &CronInfo, scheduled: Timestamp, job: Enqueued) -> Event {
    Event::CronFired {
        entry: info.clone(),
        scheduled,
        job: job.id(),
        duplicate: job.is_duplicate(),
    }
}

/// Plan `record` at `now`. An entry whose schedule no longer parses (written by another
/// version, or by hand) is retired: its fire enqueues nothing and sets no next fire, so it
/// stops coming back as due; registering it again with a valid schedule revives it.
fn plan_record(record: &CronRecord, now: Timestamp) -> Option<(CronInfo, Plan)> {
    let info = CronInfo {
        id: record.id,
        name: record.entry.name.clone(),
        scope: record.entry.scope.clone(),
    };
    let plan = match Schedule::parse(&record.entry.schedule, &record.entry.timezone) {
        Ok(schedule) => plan(record, &schedule, now)?,
        Err(error) => {
            tracing::error!(entry = %record.id, name = %record.entry.name, %error,
                "cron entry's schedule does not parse: it stops firing");
            Plan {
                fire: CronFire {
                    id: record.id,
                    expected_next: record.next_fire?,
                    jobs: Vec::new(),
                    fired: None,
                    next_fire: None,
                    skip_if_running: false,
                },
                scheduled: Vec::new(),
                skipped: None,
            }
        }
    };
    Some((info, plan))
}

#[async_trait]
impl dispatch_cluster::LeaderTask for CronScheduler {
    fn name(&self) -> &str {
        "cron"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run(&self, term: &Leader) -> Result<()> {
        let report = self.tick(term).await?;
        if !report.fired.is_empty() || report.skipped > 0 || report.overlapped > 0 {
            tracing::debug!(
                fired = report.fired.len(),
                skipped = report.skipped,
                overlapped = report.overlapped,
                stale = report.stale,
                "cron fired"
            );
        }
        Ok(())
    }
}
