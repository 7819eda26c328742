//! Cron through the dispatcher: entries given to the builder are registered at start and fire
//! on the cluster's leader, in their scope, reaching the hooks; without a cluster they are
//! refused.

use std::sync::Arc;
use std::time::Duration;

use dispatch::cluster::ClusterConfig;
use dispatch::core::{CronFilter, Event};
use dispatch::prelude::*;
use parking_lot::Mutex;

use crate::Events;

/// A job's input and tenant, as its handler saw them.
type Fired = (String, Option<String>);

fn fast() -> ClusterConfig {
    ClusterConfig {
        leader_ttl: Duration::from_millis(2000),
        renew_interval: Duration::from_millis(100),
        campaign_interval: Duration::from_millis(30),
        heartbeat_interval: Duration::from_millis(50),
        ..ClusterConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_entry_fires_through_a_clustered_dispatcher() {
    let seen: Arc<Mutex<Vec<Fired>>> = Arc::default();
    let log = seen.clone();
    let tick = JobDefinition::new("tick", move |ctx: JobContext, label: String| {
        let log = log.clone();
        async move {
            log.lock().push((label, ctx.scope().tenant.clone()));
            Ok(())
        }
    });
    let events = Events::default();
    let every_second = CronSpec::new("every-second", "* * * * * *")
        .job(&tick, &"hello".to_owned())
        .scope(Scope::new("shop", "acme"));
    let mut dispatcher = Dispatcher::builder()
        .store(MemoryStore::new())
        .register(tick.clone())
        .hook(events.clone())
        .cluster(fast())
        .cron(every_second)
        .configure(|c| c.poll_interval = Duration::from_millis(20))
        .build()
        .expect("build");
    dispatcher.start().await.expect("start");

    let entries = dispatcher.cron().expect("a cron store");
    let listed = entries.list(&CronFilter::default(), &PageRequest::first(10)).await.expect("list");
    assert_eq!(listed.items.len(), 1, "registered at start");
    assert!(listed.items[0].next_fire.is_some());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the entry did not fire three times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dispatcher.stop().await;

    let seen = seen.lock().clone();
    assert!(
        seen.iter().all(|(label, tenant)| label == "hello" && tenant.as_deref() == Some("acme"))
    );
    let events = events.0.lock();
    let fired: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::CronFired { entry, scheduled, .. } => Some((entry.name.clone(), *scheduled)),
            _ => None,
        })
        .collect();
    assert!(fired.len() >= 3, "{fired:?}");
    assert!(fired.iter().all(|(name, _)| name == "every-second"));
    assert!(fired.windows(2).all(|w| w[0].1 < w[1].1), "each second once: {fired:?}");
}

#[tokio::test]
async fn cron_entries_need_a_cluster_and_a_valid_spec() {
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: ()| async { Ok(()) });
    let spec = CronSpec::new("n", "* * * * *").job(&noop, &());
    let refused = Dispatcher::builder().store(MemoryStore::new()).cron(spec.clone()).build();
    let error = refused.expect_err("no cluster");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("cluster"), "{error}");

    let bad = CronSpec::new("n", "every minute").job(&noop, &());
    let refused = Dispatcher::builder().store(MemoryStore::new()).cluster(fast()).cron(bad).build();
    assert_eq!(refused.expect_err("bad schedule").kind(), ErrorKind::InvalidInput);

    let built = Dispatcher::builder().store(MemoryStore::new()).cluster(fast()).cron(spec).build();
    assert!(built.is_ok());
}

/// An entry's schedule changed in code: the next start updates the stored entry in place, and
/// its next fire (and the fire after it) follows the new schedule. On a manual clock, with the
/// store shared by the two dispatchers as a restarted process shares its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_schedule_takes_effect_at_the_next_start() {
    use dispatch::core::{JobFilter, ManualClock, SharedClock, Timestamp, WorkflowStore};

    const T0: i64 = 1_780_272_030_000_000; // 2026-06-01 00:00:30 UTC
    let minute = |m: i64| Timestamp::from_unix_micros(T0 - 30_000_000 + m * 60_000_000);
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_micros(T0)));
    let shared: SharedClock = clock.clone();
    let store: Arc<dyn WorkflowStore> = Arc::new(MemoryStore::with_clock(shared.clone()));
    let report = JobDefinition::new("report", |_ctx: JobContext, (): ()| async { Ok(()) });
    let start = |schedule: &str| {
        let spec = CronSpec::new("report", schedule).job(&report, &());
        Dispatcher::builder()
            .shared_store(store.clone())
            .clock(shared.clone())
            .register(report.clone())
            .cluster(fast())
            .cron(spec)
            .build()
            .expect("build")
    };

    let mut first = start("0 */5 * * * *");
    first.start().await.expect("start");
    let entries = first.cron().expect("a cron store");
    let before = entries.find(&Scope::default(), "report").await.expect("find").expect("entry");
    assert_eq!(before.next_fire, Some(minute(5)));
    first.stop().await;

    let mut second = start("0 */2 * * * *");
    second.start().await.expect("start");
    let entries = second.cron().expect("a cron store");
    let after = entries.find(&Scope::default(), "report").await.expect("find").expect("entry");
    assert_eq!(after.id, before.id, "the same entry, updated");
    assert_eq!(after.entry.schedule, "0 */2 * * * *");
    assert_eq!(after.next_fire, Some(minute(2)), "the next fire follows the new schedule");

    // Past the first leader's lease (manual time) and the new schedule's first fire.
    clock.set(minute(2) + Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let record = entries.get(after.id).await.expect("get").expect("entry");
        if record.last_fired.is_some() {
            assert_eq!(record.last_fired, Some(minute(2)));
            assert_eq!(record.next_fire, Some(minute(4)));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new schedule did not fire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.stop().await;
    let filter = JobFilter { name: Some("report".into()), ..JobFilter::default() };
    let jobs = store.list_jobs(&filter, &PageRequest::first(10)).await.expect("list");
    assert_eq!(jobs.items.len(), 1, "one fire, at the new schedule's time");
}
