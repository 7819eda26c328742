//! The cron client and scheduler on the memory store and a manual clock: registering and
//! managing entries, fires through ticks (catch-up, hooks, overlap), and daily entries over
//! the 2026 daylight saving transitions of Berlin and New York.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    CatchUp, ClusterStore, CronFilter, CronSkip, CronStore, DEFAULT_LEADERSHIP, ErrorKind, Event,
    Hook, JobFilter, JobStore, Leader, ManualClock, Overlap, PageRequest, Scope, SharedClock,
    Timestamp, WorkerId,
};
use dispatch_cron::{Cron, CronScheduler, CronSpec};
use dispatch_job::{HookBus, JobContext, JobDefinition};
use dispatch_store_memory::MemoryStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const SEC: i64 = 1_000_000;

/// 2026-03-28T12:00:00Z, a Saturday, the day before Berlin springs forward.
const START: i64 = 1_774_699_200;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Report {
    kind: String,
}

fn report() -> JobDefinition<Report> {
    JobDefinition::new("report", |_ctx: JobContext, _r: Report| async { Ok(()) })
        .queue("reports")
        .priority(4)
        .max_attempts(3)
}

fn ts(unix_seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(unix_seconds * SEC)
}

fn spec(name: &str, schedule: &str) -> CronSpec {
    CronSpec::new(name, schedule).job(&report(), &Report { kind: "daily".into() })
}

struct World {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    cron: Cron,
    term: Leader,
}

impl World {
    async fn new(start: i64) -> Self {
        let clock = Arc::new(ManualClock::new(ts(start)));
        let store = Arc::new(MemoryStore::with_clock(clock.clone() as SharedClock));
        let cron = Cron::new(store.clone() as Arc<dyn CronStore>, clock.clone() as SharedClock);
        // A term long enough to outlive every clock jump of these tests.
        let ttl = Duration::from_secs(400 * 24 * 3600);
        let cluster = store.clone() as Arc<dyn ClusterStore>;
        let term = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), ttl).await;
        Self { store, clock, cron, term: term.expect("take_leadership") }
    }

    fn scheduler(&self) -> CronScheduler {
        CronScheduler::new(self.store.clone() as Arc<dyn CronStore>)
    }

    fn set(&self, unix_seconds: i64) {
        self.clock.set(ts(unix_seconds));
    }

    async fn jobs(&self) -> Vec<dispatch_core::Job> {
        let page = self.store.list_jobs(&JobFilter::default(), &PageRequest::first(1000)).await;
        page.expect("list_jobs").items
    }
}

#[tokio::test]
async fn register_stores_the_entry_with_its_first_fire() {
    let w = World::new(START).await;
    let record = w
        .cron
        .register(
            spec("nightly", "30 2 * * *").timezone("Europe/Berlin").scope(Scope::new("a", "t")),
        )
        .await
        .expect("register");
    // 2026-03-29 02:30 Berlin does not exist: the first fire is 03:00 CEST, 01:00Z.
    assert_eq!(record.next_fire, Some(ts(1_774_746_000)));
    assert_eq!(record.entry.job.name, "report");
    assert_eq!(record.entry.job.queue, "reports");
    assert_eq!((record.entry.job.priority, record.entry.job.max_attempts), (4, 3));
    assert_eq!(record.entry.grace, dispatch_cron::DEFAULT_GRACE);
    let found = w.cron.find(&Scope::new("a", "t"), "nightly").await.expect("find");
    assert_eq!(found.as_ref().map(|r| r.id), Some(record.id));
    assert_eq!(w.cron.get(record.id).await.expect("get"), found);
    let page = w.cron.list(&CronFilter::default(), &PageRequest::first(10)).await.expect("list");
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn re_registering_updates_and_keeps_the_next_fire_unless_the_schedule_changed() {
    let w = World::new(START).await;
    let first = w.cron.register(spec("hourly", "@hourly")).await.expect("register");
    w.set(START + 1800);
    let payload =
        spec("hourly", "@hourly").queue("other").job(&report(), &Report { kind: "x".into() });
    let updated = w.cron.register(payload.queue("other")).await.expect("update");
    assert_eq!(updated.id, first.id);
    assert_eq!(updated.next_fire, first.next_fire, "same schedule: next fire kept");
    assert_eq!(updated.entry.job.queue, "other");
    assert_ne!(updated.entry.job.payload, first.entry.job.payload);

    let rescheduled = w.cron.register(spec("hourly", "*/10 * * * *")).await.expect("update");
    assert_eq!(rescheduled.id, first.id);
    assert_eq!(rescheduled.next_fire, Some(ts(START + 2400)));
}

#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let w = World::new(START).await;
    let cases = [
        spec("bad", "61 * * * *"),
        spec("bad", "* * * * *").timezone("Mars/Olympus"),
        CronSpec::new("bad", "* * * * *"),
    ];
    for case in cases {
        let error = w.cron.register(case).await.expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    }
    let page = w.cron.list(&CronFilter::default(), &PageRequest::first(10)).await.expect("list");
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn disable_stops_fires_and_enable_resumes_without_catching_up() {
    let w = World::new(START).await;
    let s = w.scheduler();
    let id = w.cron.register(spec("min", "* * * * *")).await.expect("register").id;
    let disabled = w.cron.disable(id).await.expect("disable");
    assert!(!disabled.entry.enabled);
    w.set(START + 300);
    assert!(s.tick(&w.term).await.expect("tick").fired.is_empty());
    let enabled = w.cron.enable(id).await.expect("enable");
    assert!(enabled.entry.enabled);
    assert_eq!(enabled.next_fire, Some(ts(START + 360)));
    w.set(START + 360);
    assert_eq!(s.tick(&w.term).await.expect("tick").fired.len(), 1);
    assert_eq!(
        w.cron.disable(dispatch_core::CronId::new()).await.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn delete_removes_the_entry_and_keeps_its_jobs() {
    let w = World::new(START).await;
    let id = w.cron.register(spec("min", "* * * * *")).await.expect("register").id;
    w.set(START + 60);
    w.scheduler().tick(&w.term).await.expect("tick");
    assert!(w.cron.delete(id).await.expect("delete"));
    assert!(!w.cron.delete(id).await.expect("delete again"));
    assert_eq!(w.cron.get(id).await.expect("get"), None);
    assert_eq!(w.jobs().await.len(), 1);
}

#[tokio::test]
async fn trigger_now_enqueues_outside_the_schedule() {
    let w = World::new(START).await;
    let scope = Scope::new("shop", "acme");
    let record =
        w.cron.register(spec("min", "* * * * *").scope(scope.clone())).await.expect("register");
    let id = w.cron.trigger_now(record.id).await.expect("trigger");
    let again = w.cron.trigger_now(record.id).await.expect("trigger");
    assert_ne!(id, again, "no unique key: each trigger is a job");
    let job = w.store.get_job(id).await.expect("get_job").expect("the job");
    assert_eq!((job.name.as_str(), job.queue.as_str()), ("report", "reports"));
    assert_eq!(job.scope, scope);
    let after = w.cron.get(record.id).await.expect("get").expect("entry");
    assert_eq!(after.next_fire, record.next_fire);
    assert_eq!(after.last_fired, None);
    let missing = w.cron.trigger_now(dispatch_core::CronId::new()).await.expect_err("unknown");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_per_second_entry_fires_each_second_once() {
    let w = World::new(START).await;
    let s = w.scheduler();
    let scope = Scope::new("shop", "acme");
    let id = w.cron.register(spec("s", "* * * * * *").scope(scope.clone())).await.expect("reg").id;
    assert!(s.tick(&w.term).await.expect("tick").fired.is_empty(), "nothing due yet");
    w.set(START + 1);
    let report = s.tick(&w.term).await.expect("tick");
    assert_eq!(report.fired.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), [(id, ts(START + 1))]);
    assert!(s.tick(&w.term).await.expect("tick").fired.is_empty(), "no second fire");
    w.set(START + 4);
    let report = s.tick(&w.term).await.expect("tick");
    let times: Vec<_> = report.fired.iter().map(|f| f.1).collect();
    assert_eq!(times, [ts(START + 2), ts(START + 3), ts(START + 4)]);
    let jobs = w.jobs().await;
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| j.scope == scope));
}

#[tokio::test]
async fn downtime_skips_the_missed_times_and_reports_them() {
    let w = World::new(START).await;
    let s = w.scheduler();
    w.cron.register(spec("s", "* * * * * *")).await.expect("register");
    w.set(START + 100);
    let report = s.tick(&w.term).await.expect("tick");
    // 1..=89 missed, 90..=100 within the 10 s grace.
    assert_eq!(report.fired.len(), 11);
    assert_eq!(report.skipped, 89);

    let w = World::new(START).await;
    w.cron.register(spec("s", "0 * * * * *").catch_up(CatchUp::Once)).await.expect("register");
    w.set(START + 3600 + 5);
    let report = w.scheduler().tick(&w.term).await.expect("tick");
    // Minutes 1..=59 were missed: the latest fires, then the on-time one; 58 skipped.
    let times: Vec<_> = report.fired.iter().map(|f| f.1).collect();
    assert_eq!(times, [ts(START + 3540), ts(START + 3600)]);
    assert_eq!(report.skipped, 58);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

#[async_trait]
impl Hook for Recorder {
    async fn on_event(&self, event: &Event) {
        self.0.lock().push(event.clone());
    }
}

#[tokio::test]
async fn hooks_see_fires_skips_and_overlaps() {
    let w = World::new(START).await;
    let recorder = Arc::new(Recorder::default());
    let hooks = HookBus::new(vec![recorder.clone() as Arc<dyn Hook>]);
    let s = w.scheduler().hooks(hooks.clone());
    let spec = spec("s", "* * * * * *").overlap(Overlap::Skip);
    let id = w.cron.register(spec).await.expect("register").id;
    w.set(START + 20);
    let report = s.tick(&w.term).await.expect("tick");
    assert_eq!(report.fired.len(), 11);
    // Its jobs are still available: the next fire overlaps them.
    w.set(START + 21);
    let report = s.tick(&w.term).await.expect("tick");
    assert_eq!((report.fired.len(), report.overlapped), (0, 1));
    assert!(hooks.flush(Duration::from_secs(5)).await);

    let events = recorder.0.lock().clone();
    let skipped = events.iter().find_map(|e| match e {
        Event::CronSkipped { entry, scheduled, count, reason: CronSkip::Missed } => {
            Some((entry.id, *scheduled, *count))
        }
        _ => None,
    });
    assert_eq!(skipped, Some((id, ts(START + 1), 9)));
    let fired = events.iter().filter(|e| matches!(e, Event::CronFired { duplicate: false, .. }));
    assert_eq!(fired.count(), 11);
    let overlapped = events.iter().any(|e| {
        matches!(e, Event::CronSkipped { scheduled, count: 1, reason: CronSkip::Overlap { .. }, .. }
            if *scheduled == ts(START + 21))
    });
    assert!(overlapped, "{events:?}");
}

#[tokio::test]
async fn a_deposed_leader_is_refused() {
    let w = World::new(START).await;
    w.cron.register(spec("s", "* * * * * *")).await.expect("register");
    let cluster = w.store.clone() as Arc<dyn ClusterStore>;
    cluster
        .take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), Duration::from_secs(60))
        .await
        .expect("a new term");
    w.set(START + 1);
    let error = w.scheduler().tick(&w.term).await.expect_err("old term");
    assert_eq!(error.kind(), ErrorKind::NotLeader);
    assert!(w.jobs().await.is_empty());
}

/// Tick every 5 s from `from` to `to` (unix seconds), as a leader would; every fire's time.
async fn fires_between(w: &World, from: i64, to: i64) -> Vec<Timestamp> {
    let s = w.scheduler();
    let mut fired = Vec::new();
    for now in (from..=to).step_by(5) {
        w.set(now);
        let report = s.tick(&w.term).await.expect("tick");
        assert_eq!(report.skipped, 0);
        fired.extend(report.fired.into_iter().map(|f| f.1));
    }
    fired
}

/// A daily 02:30 entry in `zone`, registered at `from`, ticked until `to`.
async fn daily_0230(zone: &str, from: i64, to: i64) -> Vec<Timestamp> {
    let w = World::new(from).await;
    w.cron.register(spec("d", "30 2 * * *").timezone(zone)).await.expect("register");
    fires_between(&w, from, to).await
}

#[tokio::test]
async fn berlin_spring_forward_fires_once_at_three() {
    // 2026-03-28 12:00Z to 2026-03-30 12:00Z.
    let fires = daily_0230("Europe/Berlin", START, START + 2 * 86_400).await;
    // 2026-03-29 03:00 CEST (01:00Z: 02:30 does not exist), 2026-03-30 02:30 CEST (00:30Z).
    assert_eq!(fires, [ts(1_774_746_000), ts(1_774_830_600)]);
}

#[tokio::test]
async fn berlin_fall_back_fires_once() {
    // 2026-10-24 12:00Z to 2026-10-26 12:00Z.
    let from = 1_792_843_200;
    let fires = daily_0230("Europe/Berlin", from, from + 2 * 86_400).await;
    // 2026-10-25 02:30 CEST (00:30Z, the first of two 02:30s), 2026-10-26 02:30 CET (01:30Z).
    assert_eq!(fires, [ts(1_792_888_200), ts(1_792_978_200)]);
}

#[tokio::test]
async fn new_york_spring_forward_fires_once_at_three() {
    // 2026-03-07 12:00Z to 2026-03-09 12:00Z.
    let from = 1_772_884_800;
    let fires = daily_0230("America/New_York", from, from + 2 * 86_400).await;
    // 2026-03-08 03:00 EDT (07:00Z), 2026-03-09 02:30 EDT (06:30Z).
    assert_eq!(fires, [ts(1_772_953_200), ts(1_773_037_800)]);
}

#[tokio::test]
async fn new_york_fall_back_fires_once() {
    // 2026-10-31 12:00Z to 2026-11-02 12:00Z; 01:00-02:00 repeats, so test 01:30.
    let from = 1_793_448_000;
    let w = World::new(from).await;
    let entry = spec("d", "30 1 * * *").timezone("America/New_York");
    w.cron.register(entry).await.expect("register");
    let fires = fires_between(&w, from, from + 2 * 86_400).await;
    // 2026-11-01 01:30 EDT (05:30Z, the first of two), 2026-11-02 01:30 EST (06:30Z).
    assert_eq!(fires, [ts(1_793_511_000), ts(1_793_601_000)]);
}

/// Moves the clock on by a second at every fire call: a store slower than its schedules.
struct SlowFires(Arc<ManualClock>);

#[async_trait]
impl dispatch_core::Interceptor for SlowFires {
    async fn after(
        &self,
        call: dispatch_core::Call,
        _reply: dispatch_core::Reply<'_>,
    ) -> dispatch_core::Result<()> {
        if call.kind == dispatch_core::CallKind::Leadership {
            self.0.advance(Duration::from_secs(1));
        }
        Ok(())
    }
}

/// Entries that fall due faster than the store fires them (each fire call takes a second of
/// the clock; the entries fire every second, one per batch): a tick fires what was due when it
/// began and ends, instead of chasing the schedules for ever.
#[tokio::test]
async fn a_tick_ends_when_schedules_outrun_the_store() {
    let w = World::new(START).await;
    for name in ["a", "b", "c"] {
        w.cron.register(spec(name, "* * * * * *")).await.expect("register");
    }
    w.set(START + 1);
    let slow = dispatch_core::Intercepted::new(w.store.clone(), SlowFires(w.clock.clone()));
    let scheduler = CronScheduler::new(Arc::new(slow) as Arc<dyn CronStore>).batch(1);
    let tick = tokio::time::timeout(Duration::from_secs(10), scheduler.tick(&w.term)).await;
    let report = tick.expect("the tick ended").expect("tick");
    let entries: std::collections::HashSet<_> = report.fired.iter().map(|f| f.0).collect();
    assert_eq!(entries.len(), 3, "every entry due at the start fired: {report:?}");
    assert!(report.fired.len() <= 12, "the tick chased later seconds: {report:?}");
}
