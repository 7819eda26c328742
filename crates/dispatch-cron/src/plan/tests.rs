//! The catch-up rules on concrete times.

use std::time::Duration;

use dispatch_core::{CronEntry, CronJob, Scope};

use super::*;

const SEC: i64 = 1_000_000;

fn at(seconds: i64) -> Timestamp {
    // 2026-01-01T00:00:00Z plus `seconds`.
    Timestamp::from_unix_micros((1_767_225_600 + seconds) * SEC)
}

fn record(schedule: &str, catch_up: CatchUp, next_fire: i64) -> (CronRecord, Schedule) {
    let entry = CronEntry {
        name: "tick".into(),
        scope: Scope::new("app", "acme"),
        schedule: schedule.into(),
        timezone: "UTC".into(),
        job: CronJob {
            name: "report".into(),
            queue: "reports".into(),
            payload: b"{}".to_vec(),
            priority: 3,
            max_attempts: 2,
            timeout: Some(Duration::from_secs(9)),
        },
        catch_up,
        grace: Duration::from_secs(10),
        overlap: Overlap::Allow,
        jitter: Duration::ZERO,
        enabled: true,
    };
    let record = CronRecord {
        id: CronId::new(),
        entry,
        next_fire: Some(at(next_fire)),
        last_fired: None,
        last_job: None,
        created_at: at(0),
        updated_at: at(0),
    };
    let schedule = Schedule::parse(schedule, "UTC").expect("parses");
    (record, schedule)
}

fn seconds(times: &[Timestamp]) -> Vec<i64> {
    times.iter().map(|t| t.as_unix_micros() / SEC - 1_767_225_600).collect()
}

#[test]
fn on_time_fire_takes_the_due_time_and_moves_past_now() {
    let (r, s) = record("*/5 * * * * *", CatchUp::Skip, 5);
    let plan = plan(&r, &s, at(7)).expect("due");
    assert_eq!(seconds(&plan.scheduled), [5]);
    assert_eq!(plan.fire.fired, Some(at(5)));
    assert_eq!(plan.fire.next_fire, Some(at(10)));
    assert_eq!(plan.fire.expected_next, at(5));
    assert_eq!(plan.skipped, None);
}

#[test]
fn job_is_built_from_the_template_with_the_fire_key() {
    let (r, s) = record("*/5 * * * * *", CatchUp::Skip, 5);
    let plan = plan(&r, &s, at(5)).expect("due");
    let job = &plan.fire.jobs[0];
    assert_eq!((job.name.as_str(), job.queue.as_str()), ("report", "reports"));
    assert_eq!((job.priority, job.max_attempts), (3, 2));
    assert_eq!(job.timeout, Some(Duration::from_secs(9)));
    assert_eq!(job.scope, Scope::new("app", "acme"));
    assert_eq!(job.run_at, RunAt::At(at(5)));
    let unique = job.unique.as_ref().expect("unique");
    assert_eq!(unique.key, fire_key(r.id, at(5)));
    assert_eq!(unique.window, None);
    assert!(!plan.fire.skip_if_running);
}

#[test]
fn times_within_the_grace_all_fire() {
    // Due at 0..=8 every 2 s, now 8, grace 10 s: every due time is on time.
    let (r, s) = record("*/2 * * * * *", CatchUp::Skip, 0);
    let plan = plan(&r, &s, at(8)).expect("due");
    assert_eq!(seconds(&plan.scheduled), [0, 2, 4, 6, 8]);
    assert_eq!(plan.fire.next_fire, Some(at(10)));
    assert_eq!(plan.skipped, None);
}

#[test]
fn skip_fires_the_on_time_ones_and_reports_the_missed() {
    // Every second from 0, now 100, grace 10 s: 0..=89 missed, 90..=100 on time.
    let (r, s) = record("* * * * * *", CatchUp::Skip, 0);
    let plan = plan(&r, &s, at(100)).expect("due");
    assert_eq!(seconds(&plan.scheduled), (90..=100).collect::<Vec<_>>());
    assert_eq!(plan.skipped, Some(Skipped { first: at(0), count: 90 }));
    assert_eq!(plan.fire.next_fire, Some(at(101)));
}

#[test]
fn skip_with_nothing_on_time_fires_nothing_and_advances() {
    // Every minute from 60, now 200: 60, 120 and 180 missed, none within 10 s of now.
    let (r, s) = record("0 * * * * *", CatchUp::Skip, 60);
    let plan = plan(&r, &s, at(200)).expect("due");
    assert!(plan.fire.jobs.is_empty());
    assert_eq!(plan.fire.fired, None);
    assert_eq!(plan.fire.next_fire, Some(at(240)));
    assert_eq!(plan.skipped, Some(Skipped { first: at(60), count: 3 }));
}

#[test]
fn once_fires_the_latest_missed_then_the_on_time_ones() {
    let (r, s) = record("0 * * * * *", CatchUp::Once, 60);
    let plan = plan(&r, &s, at(245)).expect("due");
    // 60, 120, 180 missed; 240 on time.
    assert_eq!(seconds(&plan.scheduled), [180, 240]);
    assert_eq!(plan.skipped, Some(Skipped { first: at(60), count: 2 }));
    assert_eq!(plan.fire.fired, Some(at(240)));
}

#[test]
fn each_fires_the_latest_missed_up_to_its_limit_oldest_first() {
    let (r, s) = record("0 * * * * *", CatchUp::Each { limit: 2 }, 60);
    let plan = plan(&r, &s, at(245)).expect("due");
    assert_eq!(seconds(&plan.scheduled), [120, 180, 240]);
    assert_eq!(plan.skipped, Some(Skipped { first: at(60), count: 1 }));

    let (r, s) = record("0 * * * * *", CatchUp::Each { limit: 10 }, 60);
    let all = super::plan(&r, &s, at(245)).expect("due");
    assert_eq!(seconds(&all.scheduled), [60, 120, 180, 240]);
    assert_eq!(all.skipped, None);
}

#[test]
fn a_week_of_per_second_downtime_is_bounded_work() {
    let week = 7 * 24 * 3600;
    let (r, s) = record("* * * * * *", CatchUp::Each { limit: u32::MAX }, 0);
    let plan = plan(&r, &s, at(week)).expect("due");
    // MAX_CATCH_UP missed ones, then the 11 on time.
    assert_eq!(plan.scheduled.len(), MAX_CATCH_UP as usize + 11);
    assert_eq!(plan.scheduled.last(), Some(&at(week)));
    let skipped = plan.skipped.expect("skipped");
    assert_eq!(skipped.first, at(0));
    assert_eq!(skipped.count, MAX_COUNTED - MAX_CATCH_UP);
    assert_eq!(plan.fire.next_fire, Some(at(week + 1)));
}

#[test]
fn a_grace_longer_than_the_on_time_cap_continues_next_tick() {
    let (mut r, s) = record("* * * * * *", CatchUp::Skip, 0);
    r.entry.grace = Duration::from_secs(3600);
    let plan = plan(&r, &s, at(2000)).expect("due");
    assert_eq!(plan.scheduled.len(), MAX_ON_TIME);
    assert_eq!(plan.fire.next_fire, Some(at(MAX_ON_TIME as i64)));
}

#[test]
fn overlap_skip_asks_the_store_to_skip_if_running() {
    let (mut r, s) = record("* * * * * *", CatchUp::Skip, 0);
    r.entry.overlap = Overlap::Skip;
    assert!(plan(&r, &s, at(0)).expect("due").fire.skip_if_running);
}

#[test]
fn no_next_fire_plans_nothing() {
    let (mut r, s) = record("* * * * * *", CatchUp::Skip, 0);
    r.next_fire = None;
    assert_eq!(plan(&r, &s, at(0)), None);
}

#[test]
fn jitter_is_deterministic_and_within_its_span() {
    let id = CronId::new();
    let span = Duration::from_secs(30);
    let mut distinct = std::collections::HashSet::new();
    for s in 0..100 {
        let d = jitter(id, at(s), span);
        assert!(d < span);
        assert_eq!(d, jitter(id, at(s), span));
        distinct.insert(d);
    }
    assert!(distinct.len() > 90, "spread: {}", distinct.len());
    assert_eq!(jitter(id, at(0), Duration::ZERO), Duration::ZERO);

    let (mut r, s) = record("* * * * * *", CatchUp::Skip, 0);
    r.entry.jitter = span;
    let plan = plan(&r, &s, at(0)).expect("due");
    let RunAt::At(run_at) = plan.fire.jobs[0].run_at else { panic!("run at a time") };
    assert_eq!(run_at, at(0) + jitter(r.id, at(0), span));
}
