//! The DLQ service on the memory store: listing, counting, replays with their hooks, bulk
//! replays and purges over more than one batch, and purges by age.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::dlq::DLQ_BATCH;
use dispatch_core::{
    ClaimRequest, DlqFilter, DlqId, ErrorKind, Event, Failure, FailureKind, Finish, FinishResult,
    Hook, JobState, JobStore, LeaseRef, LeaseToken, ManualClock, NewJob, Outcome, PageRequest,
    Replay, ReplayOptions, SharedClock, Timestamp, WorkerId,
};
use dispatch_dlq::{BulkReport, Dlq};
use dispatch_job::HookBus;
use dispatch_store_memory::MemoryStore;
use parking_lot::Mutex;

const QUEUE: &str = "ops";

struct World {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    recorder: Arc<Recorder>,
    hooks: HookBus,
    dlq: Dlq,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

#[async_trait]
impl Hook for Recorder {
    async fn on_event(&self, event: &Event) {
        self.0.lock().push(event.clone());
    }
}

impl World {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_unix_micros(1_800_000_000_000_000)));
        let store = Arc::new(MemoryStore::with_clock(clock.clone() as SharedClock));
        let recorder = Arc::new(Recorder::default());
        let hooks = HookBus::new(vec![recorder.clone() as Arc<dyn Hook>]);
        let dlq = Dlq::new(store.clone() as Arc<dyn JobStore>)
            .hooks(hooks.clone())
            .clock(clock.clone() as SharedClock);
        Self { store, clock, recorder, hooks, dlq }
    }

    /// Enqueue `count` jobs of `name` with one attempt each, claim them and fail them with
    /// `message`: their DLQ entries, in order.
    async fn kill(&self, name: &str, count: usize, message: &str) -> Vec<DlqId> {
        let jobs: Vec<NewJob> = (0..count)
            .map(|_| {
                let mut job = NewJob::new(name, b"{}".to_vec());
                job.queue = QUEUE.to_owned();
                job.max_attempts = 1;
                job
            })
            .collect();
        self.store.enqueue(jobs).await.expect("enqueue");
        let request = ClaimRequest {
            worker: WorkerId::new(),
            queues: vec![QUEUE.to_owned()],
            names: vec![name.to_owned()],
            limit: count,
            lease_ttl: Duration::from_secs(60),
            token: LeaseToken::new(),
        };
        let claimed = self.store.claim(&request).await.expect("claim");
        assert_eq!(claimed.len(), count);
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|c| Finish {
                lease: LeaseRef { job_id: c.job.id, token: c.lease.token },
                outcome: Outcome::Fail { failure: Failure::new(FailureKind::Error, message) },
            })
            .collect();
        let results = self.store.finish(&finishes).await.expect("finish");
        results
            .into_iter()
            .map(|r| match r {
                FinishResult::Applied { state: JobState::Dead, dlq_id: Some(id) } => id,
                other => panic!("expected a death, got {other:?}"),
            })
            .collect()
    }

    async fn events(&self) -> Vec<Event> {
        assert!(self.hooks.flush(Duration::from_secs(5)).await);
        self.recorder.0.lock().clone()
    }
}

fn named(name: &str) -> DlqFilter {
    DlqFilter { name: Some(name.to_owned()), ..DlqFilter::default() }
}

#[tokio::test]
async fn list_get_and_count() {
    let w = World::new();
    let ids = w.kill("sync", 3, "boom").await;
    w.kill("mail", 2, "smtp down").await;
    let page = w.dlq.list(&named("sync"), &PageRequest::first(10)).await.expect("list");
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let entry = w.dlq.get(ids[0]).await.expect("get").expect("the entry");
    assert_eq!(entry.last_error(), Some("boom"));
    let counts = w.dlq.count(&DlqFilter::default()).await.expect("count");
    let counts: Vec<_> = counts.iter().map(|c| (c.name.as_str(), c.count)).collect();
    assert_eq!(counts, [("mail", 2), ("sync", 3)]);
}

#[tokio::test]
async fn replay_once_with_options_and_a_hook() {
    let w = World::new();
    let id = w.kill("sync", 1, "boom").await[0];
    let options = ReplayOptions { queue: Some("retry".into()), delay: None };
    let Replay::Replayed(job) = w.dlq.replay(id, &options).await.expect("replay") else {
        panic!("a new job")
    };
    assert_eq!(w.dlq.replay(id, &options).await.expect("again"), Replay::AlreadyReplayed(job));
    let new = w.store.get_job(job).await.expect("get_job").expect("the job");
    assert_eq!((new.queue.as_str(), new.state), ("retry", JobState::Available));
    let missing = w.dlq.replay(DlqId::new(), &options).await.expect_err("unknown");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let events = w.events().await;
    let replayed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::DlqReplayed { entry, job } => Some((*entry, *job)),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, [(id, job)], "one event, for the replay that made a job");
}

#[tokio::test]
async fn replay_matching_loops_over_batches_and_skips_the_replayed() {
    let w = World::new();
    let first = w.kill("sync", 1, "boom").await[0];
    w.dlq.replay(first, &ReplayOptions::default()).await.expect("replay");
    w.kill("sync", DLQ_BATCH + 5, "boom").await;
    w.kill("mail", 3, "smtp").await;
    let report =
        w.dlq.replay_matching(&named("sync"), &ReplayOptions::default()).await.expect("bulk");
    assert_eq!(report, BulkReport { touched: DLQ_BATCH as u64 + 5, batches: 2 });
    let again =
        w.dlq.replay_matching(&named("sync"), &ReplayOptions::default()).await.expect("bulk");
    assert_eq!(again, BulkReport { touched: 0, batches: 1 });
    let replayed_events =
        w.events().await.iter().filter(|e| matches!(e, Event::DlqReplayed { .. })).count();
    assert_eq!(replayed_events, DLQ_BATCH + 6);
}

#[tokio::test]
async fn purge_deletes_in_batches_and_emits_per_batch() {
    let w = World::new();
    w.kill("sync", DLQ_BATCH + 2, "boom").await;
    w.kill("mail", 1, "smtp").await;
    let report = w.dlq.purge(&named("sync")).await.expect("purge");
    assert_eq!(report, BulkReport { touched: DLQ_BATCH as u64 + 2, batches: 2 });
    let left = w.dlq.list(&DlqFilter::default(), &PageRequest::first(10)).await.expect("list");
    assert_eq!(left.items.len(), 1);
    let purged: Vec<u64> = w
        .events()
        .await
        .iter()
        .filter_map(|e| match e {
            Event::DlqPurged { count } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(purged, [DLQ_BATCH as u64, 2]);
}

#[tokio::test]
async fn purge_older_than_reads_the_clock() {
    let w = World::new();
    let old = w.kill("sync", 2, "boom").await;
    w.clock.advance(Duration::from_secs(3600));
    let recent = w.kill("sync", 1, "boom").await;
    w.clock.advance(Duration::from_secs(60));
    let report = w.dlq.purge_older_than(Duration::from_secs(600)).await.expect("purge");
    assert_eq!(report.touched, 2);
    for id in old {
        assert_eq!(w.dlq.get(id).await.expect("get"), None);
    }
    assert!(w.dlq.get(recent[0]).await.expect("get").is_some());
}
