//! The in-process notice, proven by a poll that never comes: each client here polls once a day,
//! and tokio's paused clock jumps to the earliest timer whenever every task is idle. A wait
//! answered by its poll would find the test's one-hour limit first; a wait answered by the notice
//! returns while that limit is still far away, after exactly one read beyond the first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    Call, CallKind, ClaimRequest, Intercepted, Interceptor, JobId, JobState, JobStore, LeaseToken,
    ManualClock, Result, WorkerId,
};
use dispatch_store_memory::MemoryStore;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{JobWaitError, Poll};
use crate::{EnqueueOptions, JobClient, JobContext, JobDefinition, Worker, WorkerHandle};

const DAY: Duration = Duration::from_secs(24 * 3600);
const LIMIT: Duration = Duration::from_secs(3600);

/// Counts the store's lookups (the wait's reads of its job).
#[derive(Clone, Default)]
struct Reads(Arc<AtomicUsize>);

impl Reads {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Interceptor for Reads {
    async fn before(&self, call: Call) -> Result<()> {
        if call.kind == CallKind::Read {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn counted(store: MemoryStore) -> (Arc<dyn JobStore>, Reads) {
    let reads = Reads::default();
    let inner: Arc<dyn JobStore> = Arc::new(store);
    (Arc::new(Intercepted::new(inner, reads.clone())), reads)
}

/// `client`, polling once a day.
fn slow_polling(mut client: JobClient) -> JobClient {
    client.poll = Poll { first: DAY, max: DAY };
    client
}

/// Start waiting for `id` and return once the wait has read the job and sleeps.
async fn waiting(
    client: &JobClient,
    reads: &Reads,
    id: JobId,
) -> JoinHandle<Result<dispatch_core::Job, JobWaitError>> {
    let before = reads.count();
    let client = client.clone();
    let waiter = tokio::spawn(async move { client.wait(id, 7 * DAY).await });
    while reads.count() == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    waiter
}

/// The waiter's answer within [`LIMIT`] of the paused clock, and the reads it made.
async fn answer(
    waiter: JoinHandle<Result<dispatch_core::Job, JobWaitError>>,
) -> Result<dispatch_core::Job, JobWaitError> {
    let within = tokio::time::timeout(LIMIT, waiter).await;
    within.expect("the notice answers the wait; its poll is a day away").unwrap()
}

fn gated(gate: Arc<Notify>) -> JobDefinition<()> {
    JobDefinition::new("gated", move |_ctx: JobContext, _: ()| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok(())
        }
    })
}

fn start(store: &Arc<dyn JobStore>, gate: &Arc<Notify>, rescue: Duration) -> WorkerHandle {
    Worker::builder(store.clone())
        .register(gated(gate.clone()))
        .configure(|c| c.rescue_interval = rescue)
        .build()
        .unwrap()
        .start()
}

#[tokio::test(start_paused = true)]
async fn a_job_the_local_worker_completes_answers_the_wait_before_its_next_poll() {
    let (store, reads) = counted(MemoryStore::new());
    let gate = Arc::new(Notify::new());
    let handle = start(&store, &gate, DAY);
    let client = slow_polling(handle.client());
    let id = client.enqueue(&gated(gate.clone()), ()).await.unwrap().id();
    let waiter = waiting(&client, &reads, id).await;

    gate.notify_one();
    let job = answer(waiter).await.unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(reads.count(), 2, "one read before the finish, one after its notice");
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancel_through_the_client_answers_the_wait_before_its_next_poll() {
    let (store, reads) = counted(MemoryStore::new());
    let client = slow_polling(JobClient::standalone(store));
    let unhandled = gated(Arc::default());
    let id = client.enqueue(&unhandled, ()).await.unwrap().id();
    let waiter = waiting(&client, &reads, id).await;

    client.cancel(id).await.unwrap();
    let error = answer(waiter).await.unwrap_err();
    assert!(matches!(error, JobWaitError::Cancelled(_)), "{error:?}");
    assert_eq!(reads.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rescue_that_kills_the_job_answers_the_wait_before_its_next_poll() {
    let clock = Arc::new(ManualClock::fixed());
    let (store, reads) = counted(MemoryStore::with_clock(clock.clone()));
    let gate = Arc::new(Notify::new());
    // Another worker claimed the job and vanished; this worker rescues it every second.
    let doomed = JobDefinition::new("doomed", |_ctx: JobContext, _: ()| async { Ok(()) });
    let client = JobClient::standalone(store.clone());
    let id = client.enqueue_with(&doomed, (), EnqueueOptions::new().max_attempts(1)).await;
    let id = id.unwrap().id();
    let claim = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".to_owned()],
        names: vec!["doomed".to_owned()],
        limit: 1,
        lease_ttl: Duration::from_secs(30),
        token: LeaseToken::new(),
    };
    assert_eq!(store.claim(&claim).await.unwrap().len(), 1);
    let handle = start(&store, &gate, Duration::from_secs(1));
    let client = slow_polling(handle.client());
    let waiter = waiting(&client, &reads, id).await;

    clock.advance(Duration::from_secs(60));
    let error = answer(waiter).await.unwrap_err();
    let JobWaitError::Dead(job) = error else { panic!("{error:?}") };
    assert!(job.dlq_id.is_some());
    assert_eq!(reads.count(), 2);
    handle.stop().await;
}
