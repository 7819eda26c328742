//! The DLQ's bulk calls and cron fires at scale: a bulk replay, a count and a purge whose
//! matches lie past the first stretch of the index (each script call walks at most 5,000
//! entries, and the Rust side pages on), leaving no entry in any DLQ index; and a batch of 500
//! cron fires applied in one call. Timings are printed (`--nocapture`).

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::cron::fire_key;
use dispatch_core::{
    CatchUp, Clock as _, CronEntry, CronFire, CronFireOutcome, CronJob, CronStore,
    DEFAULT_LEADERSHIP, DlqCount, DlqFilter, DlqStore, Enqueued, Failure, FailureKind, Finish,
    JobStore, LeadershipStore, LeaseRef, ManualClock, NewJob, Outcome, Overlap, ReplayOptions,
    RunAt, Scope, UniqueKey, WorkerId,
};
use dispatch_store_redis::RedisStore;

use crate::common::{job_in, request, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("dlq_bulk_calls_page_past_a_stretch", |url| {
            Box::pin(dlq_bulk_calls_page_past_a_stretch(url))
        }),
        ("cron_fires_500_entries_in_one_call", |url| {
            Box::pin(cron_fires_500_entries_in_one_call(url))
        }),
    ]
}

const HOUR: Duration = Duration::from_secs(3600);

/// Kill `count` jobs named `name` in `queue`, 1,000 per call.
async fn kill(store: &RedisStore, queue: &str, count: usize) {
    let mut left = count;
    while left > 0 {
        let batch = left.min(1000);
        let jobs: Vec<NewJob> = (0..batch)
            .map(|_| {
                let mut new = job_in("bulk", queue);
                new.max_attempts = 1;
                new
            })
            .collect();
        store.enqueue(jobs).await.expect("enqueue");
        let claimed = store.claim(&request(queue, "bulk", batch, HOUR)).await.expect("claim");
        assert_eq!(claimed.len(), batch);
        let failure = Failure { kind: FailureKind::Error, message: "boom".to_owned() };
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|c| Finish {
                lease: LeaseRef { job_id: c.job.id, token: c.lease.token },
                outcome: Outcome::Fail { failure: failure.clone() },
            })
            .collect();
        store.finish(&finishes).await.expect("finish");
        left -= batch;
    }
}

/// The cardinality of sorted set `key` of the store's prefix.
async fn zcard(url: &str, store: &RedisStore, key: &str) -> u64 {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let key = format!("{}:{key}", store.prefix());
    redis::cmd("ZCARD").arg(key).query_async(&mut conn).await.expect("ZCARD")
}

/// 5,500 entries in one queue, then 500 in another: the second queue's entries lie past the
/// first stretch, yet a bulk replay takes all of them, a count sees both, and purges in
/// batches of 1,000 empty the DLQ and its retention index alike.
async fn dlq_bulk_calls_page_past_a_stretch(url: String) {
    let store = store(&url).await;
    kill(&store, "early", 5500).await;
    kill(&store, "late", 500).await;
    let late = DlqFilter { queue: Some("late".to_owned()), ..DlqFilter::default() };

    let started = tokio::time::Instant::now();
    let counts = store.count_dlq(&DlqFilter::default()).await.expect("count_dlq");
    let count = |queue: &str, count| DlqCount { queue: queue.into(), name: "bulk".into(), count };
    assert_eq!(counts, [count("early", 5500), count("late", 500)]);
    println!("count over 6,000 entries: {:?}", started.elapsed());

    let started = tokio::time::Instant::now();
    let options = ReplayOptions { queue: Some("again".to_owned()), delay: None };
    let replayed = store.replay_dlq_matching(&late, &options, 1000).await.expect("replay");
    assert_eq!(replayed.len(), 500, "every late entry, found past the first stretch");
    assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    println!("bulk replay of 500 behind 5,500: {:?}", started.elapsed());
    let again = store.replay_dlq_matching(&late, &options, 1000).await.expect("replay");
    assert!(again.is_empty(), "each entry once");
    let claimed = store.claim(&request("again", "bulk", 1000, HOUR)).await.expect("claim");
    assert_eq!(claimed.len(), 500);

    let started = tokio::time::Instant::now();
    let mut purged = Vec::new();
    loop {
        let n = store.purge_dlq(&DlqFilter::default(), 1000).await.expect("purge_dlq");
        purged.push(n);
        if n < 1000 {
            break;
        }
    }
    assert_eq!(purged, [1000, 1000, 1000, 1000, 1000, 1000, 0]);
    println!("purge of 6,000 entries in batches of 1,000: {:?}", started.elapsed());
    assert_eq!(zcard(&url, &store, "dlqs").await, 0);
    assert_eq!(zcard(&url, &store, "dlqs:failed").await, 0, "retention's index kept in step");
}

/// An every-minute entry `name`.
fn entry(name: &str) -> CronEntry {
    CronEntry {
        name: name.to_owned(),
        scope: Scope::default(),
        schedule: "0 * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        job: CronJob {
            name: "tick".to_owned(),
            queue: "cron".to_owned(),
            payload: b"{}".to_vec(),
            priority: 0,
            max_attempts: 1,
            timeout: None,
        },
        catch_up: CatchUp::Skip,
        grace: Duration::from_secs(10),
        overlap: Overlap::Skip,
        jitter: Duration::ZERO,
        enabled: true,
    }
}

/// 500 due entries fired in one call: each enqueues its job and advances; the due set is
/// empty afterwards, and the same batch again is stale throughout.
async fn cron_fires_500_entries_in_one_call(url: String) {
    const ENTRIES: usize = 500;
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let now = clock.now();
    for i in 0..ENTRIES {
        store.save_cron(entry(&format!("e{i}")), Some(now)).await.expect("save_cron");
    }
    let due = store.due_cron(ENTRIES).await.expect("due_cron");
    assert_eq!(due.entries.len(), ENTRIES);
    let next = now + Duration::from_secs(60);
    let fires: Vec<CronFire> = due
        .entries
        .iter()
        .map(|record| {
            let mut job = NewJob::new("tick", b"{}".to_vec());
            job.queue = "cron".to_owned();
            job.run_at = RunAt::At(now);
            job.unique = Some(UniqueKey { key: fire_key(record.id, now), window: None });
            CronFire {
                id: record.id,
                expected_next: now,
                jobs: vec![job],
                fired: Some(now),
                next_fire: Some(next),
                skip_if_running: true,
            }
        })
        .collect();
    let term = store.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    let term = term.expect("take_leadership");

    let started = tokio::time::Instant::now();
    let outcomes = store.fire_cron(&term, fires.clone()).await.expect("fire_cron");
    println!("{ENTRIES} fires in one call: {:?}", started.elapsed());
    assert!(outcomes.iter().all(|o| matches!(o, CronFireOutcome::Fired(jobs)
        if matches!(jobs[..], [Enqueued::Created(_)]))));
    assert!(store.due_cron(ENTRIES).await.expect("due_cron").entries.is_empty());
    let claimed = store.claim(&request("cron", "tick", 1000, HOUR)).await.expect("claim");
    assert_eq!(claimed.len(), ENTRIES);

    let again = store.fire_cron(&term, fires).await.expect("fire_cron");
    assert!(again.iter().all(|o| *o == CronFireOutcome::Stale));
    let writes = store.leader_writes(DEFAULT_LEADERSHIP, 10).await.expect("leader_writes");
    assert_eq!(writes.iter().filter(|w| w.action == "cron").count(), 2, "one per call");
}
