//! The cron scheduler's policies over each store, on a manual clock: catch-up after downtime
//! (skip, once, each up to a limit), an entry's grace, and overlap. The leader's
//! [`CronScheduler`] plans each fire and the store applies it, so these pin the two together.

use std::time::Duration;

use dispatch_core::{CatchUp, CronRecord, JobId, JobStore, Outcome, Overlap, Timestamp};
use dispatch_cron::{CronScheduler, Schedule, TickReport};

use dispatch_core::Clock as _;

use super::{QUEUE, entry};
use crate::TestContext;
use crate::support::{lease, request_in, secs};

const MINUTE: Duration = secs(60);

impl TestContext<dyn JobStore> {
    /// A per-minute entry `name` with `catch_up` and `overlap`, saved with its first fire at
    /// the next minute; that minute.
    async fn per_minute(&self, name: &str, catch_up: CatchUp, overlap: Overlap) -> Timestamp {
        let mut e = entry(name);
        e.catch_up = catch_up;
        e.overlap = overlap;
        let schedule = Schedule::parse(&e.schedule, &e.timezone).expect("a valid schedule");
        let first = schedule.next_after(self.clock.now()).expect("a next minute");
        self.cron().save_cron(e, Some(first)).await.expect("save_cron");
        first
    }

    /// One scheduler tick under a fresh term.
    async fn tick(&self) -> TickReport {
        let term = self.term().await;
        CronScheduler::new(self.cron()).tick(&term).await.expect("tick")
    }

    async fn entry_named(&self, name: &str) -> CronRecord {
        let found = self.cron().find_cron(&dispatch_core::Scope::default(), name).await;
        found.expect("find_cron").expect("the entry exists")
    }
}

/// The scheduled times a tick fired, oldest first.
fn fired(report: &TickReport) -> Vec<Timestamp> {
    let mut times: Vec<Timestamp> = report.fired.iter().map(|f| f.1).collect();
    times.sort();
    times
}

/// Fire `name`'s first minute on time, then stop the clock's world for five minutes: the
/// minutes `first + 1..=4` are missed (older than the grace), `first + 5` is on time.
async fn after_downtime(
    ctx: &TestContext<dyn JobStore>,
    name: &str,
    catch_up: CatchUp,
) -> (Timestamp, TickReport) {
    let first = ctx.per_minute(name, catch_up, Overlap::Allow).await;
    ctx.clock.set(first + secs(1));
    assert_eq!(fired(&ctx.tick().await), [first], "the first minute fires on time");
    ctx.clock.set(first + 5 * MINUTE + secs(2));
    let report = ctx.tick().await;
    let record = ctx.entry_named(name).await;
    assert_eq!(record.next_fire, Some(first + 6 * MINUTE), "the schedule moves past now");
    (first, report)
}

/// `Skip`: the missed minutes are skipped; the on-time one fires.
pub async fn catch_up_skip_fires_only_what_is_on_time(ctx: TestContext<dyn JobStore>) {
    let (first, report) = after_downtime(&ctx, "skip", CatchUp::Skip).await;
    assert_eq!(fired(&report), [first + 5 * MINUTE]);
    assert_eq!(report.skipped, 4);
}

/// `Once`: one fire for the whole downtime (its latest missed minute), then the on-time one.
pub async fn catch_up_once_fires_the_latest_missed_time(ctx: TestContext<dyn JobStore>) {
    let (first, report) = after_downtime(&ctx, "once", CatchUp::Once).await;
    assert_eq!(fired(&report), [first + 4 * MINUTE, first + 5 * MINUTE]);
    assert_eq!(report.skipped, 3);
}

/// `Each { limit }`: the latest `limit` missed minutes fire, oldest first, then the on-time one.
pub async fn catch_up_each_fires_missed_times_up_to_its_limit(ctx: TestContext<dyn JobStore>) {
    let (first, report) = after_downtime(&ctx, "each", CatchUp::Each { limit: 3 }).await;
    let want = [first + 2 * MINUTE, first + 3 * MINUTE, first + 4 * MINUTE, first + 5 * MINUTE];
    assert_eq!(fired(&report), want);
    assert_eq!(report.skipped, 1);
    let again = ctx.tick().await;
    assert!(again.fired.is_empty(), "nothing fires twice: {again:?}");
}

/// A fire late by less than the grace is on time, whatever the policy.
pub async fn a_late_fire_within_the_grace_is_on_time(ctx: TestContext<dyn JobStore>) {
    let first = ctx.per_minute("late", CatchUp::Skip, Overlap::Allow).await;
    ctx.clock.set(first + secs(9));
    let report = ctx.tick().await;
    assert_eq!((fired(&report), report.skipped), (vec![first], 0));
}

/// `Overlap::Skip`: while the entry's job is available or running, its minutes are skipped
/// (the schedule still moves on); once it finished, the next minute fires.
pub async fn overlap_skip_skips_while_the_job_runs(ctx: TestContext<dyn JobStore>) {
    let first = ctx.per_minute("overlap", CatchUp::Skip, Overlap::Skip).await;
    ctx.clock.set(first + secs(1));
    let report = ctx.tick().await;
    let job: JobId = report.fired[0].2;
    ctx.clock.set(first + MINUTE + secs(1));
    let report = ctx.tick().await;
    assert_eq!((report.fired.len(), report.overlapped), (0, 1), "the first job is available");
    let claimed = ctx.claim_with(&request_in(&[QUEUE], &["cron-job"], 10)).await;
    assert_eq!(claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(), [job]);
    ctx.clock.set(first + 2 * MINUTE + secs(1));
    assert_eq!(ctx.tick().await.overlapped, 1, "the first job is running");
    ctx.finish(lease(&claimed[0]), Outcome::Complete).await;
    ctx.clock.set(first + 3 * MINUTE + secs(1));
    let report = ctx.tick().await;
    assert_eq!(fired(&report), [first + 3 * MINUTE], "the job finished: the entry fires again");
    let record = ctx.entry_named("overlap").await;
    assert_eq!(record.last_job, Some(report.fired[0].2));
}
