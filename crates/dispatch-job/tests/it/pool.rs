//! The pool: concurrency, one claim per fetch sized to free slots, one heartbeat per interval,
//! the claim filter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dispatch_core::{JobState, JobStore, NewJob};
use dispatch_job::{JobContext, JobDefinition};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::support::{counting, eventually, store, worker};

#[tokio::test(start_paused = true)]
async fn a_thousand_jobs_at_concurrency_16_run_once_each_never_more_than_16_at_once() {
    let store = store();
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (log, current, max) = (runs.clone(), now.clone(), peak.clone());
    let work = JobDefinition::new("work", move |_ctx: JobContext, n: u32| {
        let (log, current, max) = (log.clone(), current.clone(), max.clone());
        async move {
            let in_flight = current.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(in_flight, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            *log.lock().entry(n).or_default() += 1;
            current.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let handle =
        worker(store.clone()).register(work.clone()).concurrency(16).build().unwrap().start();
    handle.client().enqueue_many(&work, 0..1000).await.unwrap();
    eventually("1,000 runs", Duration::from_secs(600), || async {
        (runs.lock().len() == 1000).then_some(())
    })
    .await;
    handle.stop().await;
    assert!(runs.lock().values().all(|&count| count == 1), "each job ran exactly once");
    assert_eq!(peak.load(Ordering::SeqCst), 16, "the pool fills its slots and never exceeds them");
    let counts = store.count_jobs().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!((counts[0].state, counts[0].count), (JobState::Completed, 1000));
}

#[tokio::test(start_paused = true)]
async fn one_claim_per_fetch_sized_to_free_slots_and_one_heartbeat_per_interval() {
    let counting = counting(store());
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let blocked = JobDefinition::new("blocked", move |_ctx: JobContext, _: u32| {
        let held = held.clone();
        async move {
            if let Ok(permit) = held.acquire().await {
                permit.forget(); // one permit lets exactly one job finish
            }
            Ok(())
        }
    });
    let heartbeat = Duration::from_millis(100);
    let handle = worker(counting.clone())
        .register(blocked.clone())
        .concurrency(8)
        .configure(move |c| c.heartbeat_interval = heartbeat)
        .build()
        .unwrap()
        .start();
    handle.client().enqueue_many(&blocked, 0..20).await.unwrap();
    eventually("8 in flight", Duration::from_secs(5), || async {
        (handle.in_flight() == 8).then_some(())
    })
    .await;

    // All slots busy: no claim call while nothing frees up, one heartbeat per interval for all 8.
    let claims_before = counting.interceptor().claim_limits.lock().len();
    let heartbeats_before = counting.interceptor().heartbeats.lock().len();
    tokio::time::sleep(heartbeat * 10).await;
    assert_eq!(
        counting.interceptor().claim_limits.lock().len(),
        claims_before,
        "no claim without a free slot"
    );
    let heartbeats = counting.interceptor().heartbeats.lock()[heartbeats_before..].to_vec();
    assert!(
        (9..=11).contains(&heartbeats.len()),
        "{} heartbeat calls in 10 intervals",
        heartbeats.len()
    );
    assert!(
        heartbeats.iter().all(|&leases| leases == 8),
        "one call carries all leases: {heartbeats:?}"
    );

    // Free 3 slots at once: the next claim asks for exactly 3.
    gate.add_permits(3);
    eventually("a refill", Duration::from_secs(5), || async {
        (counting.interceptor().claim_limits.lock().len() > claims_before).then_some(())
    })
    .await;
    let limits = counting.interceptor().claim_limits.lock().clone();
    assert_eq!(limits[0], 8, "the first claim asks for every free slot");
    let refill = limits[claims_before];
    assert!((1..=3).contains(&refill), "a claim asks for the free slots, at most 3: {limits:?}");
    eventually("8 in flight again", Duration::from_secs(5), || async {
        (handle.in_flight() == 8).then_some(())
    })
    .await;
    gate.add_permits(1000);
    eventually("all done", Duration::from_secs(5), || async {
        let counts = counting.count_jobs().await.unwrap();
        (counts.iter().all(|c| c.state == JobState::Completed)).then_some(())
    })
    .await;
    handle.stop().await;
    assert!(counting.interceptor().claim_limits.lock().iter().all(|&l| (1..=8).contains(&l)));
}

#[tokio::test(start_paused = true)]
async fn a_job_without_a_handler_here_is_never_claimed_and_stays_available() {
    let store = store();
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: ()| async { Ok(()) });
    let handle = worker(store.clone()).register(noop.clone()).build().unwrap().start();
    let client = handle.client();
    let foreign =
        client.enqueue_jobs(vec![NewJob::new("elsewhere", b"null".to_vec())]).await.unwrap()[0]
            .id();
    let mine = client.enqueue(&noop, ()).await.unwrap().id();
    eventually("the registered job", Duration::from_secs(5), || async {
        let job = store.get_job(mine).await.unwrap()?;
        (job.state == JobState::Completed).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    handle.stop().await;
    let job = store.get_job(foreign).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Available, 0));
}

/// A queue given 2 of a worker's 8 slots never runs more than 2 at once, while the other queue
/// takes the rest of the slots meanwhile; both drain.
#[tokio::test(start_paused = true)]
async fn a_queue_with_local_slots_runs_no_more_than_them_and_leaves_the_rest_to_others() {
    let store = store();
    let (slow_now, slow_peak, fast_peak) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let fast_now = Arc::new(AtomicUsize::new(0));
    let gauge = |now: Arc<AtomicUsize>, peak: Arc<AtomicUsize>| {
        move |_ctx: JobContext, _: u32| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let slow = JobDefinition::new("slow", gauge(slow_now, slow_peak.clone())).queue("slow");
    let fast = JobDefinition::new("fast", gauge(fast_now, fast_peak.clone())).queue("fast");
    let handle = worker(store.clone())
        .register(slow.clone())
        .register(fast.clone())
        .concurrency(8)
        .queue_slots("slow", 2)
        .build()
        .unwrap()
        .start();
    let client = handle.client();
    client.enqueue_many(&slow, 0..20).await.unwrap();
    client.enqueue_many(&fast, 0..60).await.unwrap();
    eventually("both queues to drain", Duration::from_secs(600), || async {
        let counts = store.count_jobs().await.unwrap();
        let done = counts.iter().filter(|c| c.state == JobState::Completed).map(|c| c.count);
        (done.sum::<u64>() == 80).then_some(())
    })
    .await;
    handle.stop().await;
    assert_eq!(slow_peak.load(Ordering::SeqCst), 2, "the slow queue's local slots");
    assert_eq!(fast_peak.load(Ordering::SeqCst), 6, "the rest of the slots");
}

#[test]
fn local_slots_above_the_concurrency_are_refused() {
    let built = worker(store()).concurrency(4).queue_slots("q", 5).build();
    assert!(built.is_err());
}
