//! The umbrella's composition: a `Dispatcher` built from a store, definitions, a layer and a hook
//! runs jobs end to end, and its lifecycle methods behave.

mod cluster;
mod cron;
mod queues;
mod workflows;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dispatch::core::{DlqFilter, Event, JobState, PageRequest, Replay, ReplayOptions};
use dispatch::job::layer::RecoverLayer;
use dispatch::prelude::*;
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

#[async_trait::async_trait]
impl Hook for Events {
    async fn on_event(&self, event: &Event) {
        self.0.lock().push(event.clone());
    }
}

async fn wait_for(dispatcher: &Dispatcher, id: JobId, state: JobState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job = dispatcher.get_job(id).await.unwrap().unwrap();
        if job.state == state {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "job stuck in {}", job.state);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn dispatcher_runs_jobs_through_layers_and_hooks_and_replays_the_dlq() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let double = JobDefinition::new("double", move |_ctx: JobContext, n: u64| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if n == 0 { Err(JobError::permanent("zero is not allowed")) } else { Ok(()) }
        }
    });
    let events = Events::default();
    let mut dispatcher = Dispatcher::builder()
        .store(MemoryStore::new())
        .register(double.clone())
        .concurrency(4)
        .layer(RecoverLayer) // a user layer composes with the built-ins
        .hook(events.clone())
        .configure(|c| c.poll_interval = Duration::from_millis(10))
        .build()
        .unwrap();
    dispatcher.start().await.unwrap();
    assert_eq!(dispatcher.start().await.unwrap_err().kind(), ErrorKind::Conflict);

    let ok = dispatcher.enqueue(&double, 21).await.unwrap().id();
    let bad = dispatcher.enqueue(&double, 0).await.unwrap().id();
    wait_for(&dispatcher, ok, JobState::Completed).await;
    wait_for(&dispatcher, bad, JobState::Dead).await;

    let page = dispatcher.list_dlq(&DlqFilter::default(), &PageRequest::first(10)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let dlq = dispatcher.dlq();
    let replayed = dlq.replay(page.items[0].id, &ReplayOptions::default()).await.unwrap();
    let Replay::Replayed(again) = replayed else {
        panic!("first replay must replay: {replayed:?}")
    };
    let second = dlq.replay(page.items[0].id, &ReplayOptions::default()).await.unwrap();
    assert_eq!(second, Replay::AlreadyReplayed(again));
    wait_for(&dispatcher, again, JobState::Dead).await;

    dispatcher.stop().await;
    dispatcher.stop().await; // idempotent
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let events = events.0.lock();
    assert!(events.iter().any(|e| matches!(e, Event::JobCompleted { job, .. } if job.id == ok)));
    assert!(events.iter().any(|e| matches!(e, Event::JobPromoted { job, .. } if job.id == bad)));
    assert!(events.iter().any(|e| matches!(e, Event::DlqReplayed { job, .. } if *job == again)));
    assert_eq!(events.last(), Some(&Event::Shutdown));
}

#[test]
fn a_dispatcher_needs_a_store() {
    let err = Dispatcher::builder().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// `start` resolves once the worker listens: with polls ten minutes apart, a job enqueued right
/// after it, and one enqueued once the worker idles, both start through the store's wake-ups.
/// The producer is another dispatcher on the same store, never started, so it does not share
/// the worker's in-process wake-up: only the store's push reaches the worker.
#[tokio::test]
async fn a_started_dispatcher_takes_jobs_through_wake_ups_not_polls() {
    let store = MemoryStore::new();
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: u32| async { Ok(()) });
    let mut worker = Dispatcher::builder()
        .store(store.clone())
        .register(noop.clone())
        .configure(|c| c.poll_interval = Duration::from_secs(600))
        .build()
        .unwrap();
    let producer = Dispatcher::builder().store(store).build().unwrap();
    worker.start().await.unwrap();
    assert!(worker.health().unwrap().ready);

    let first = producer.enqueue(&noop, 1).await.unwrap().id();
    producer.wait(first, Duration::from_secs(60)).await.unwrap();
    let second = producer.enqueue(&noop, 2).await.unwrap().id();
    producer.wait(second, Duration::from_secs(60)).await.unwrap();
    worker.stop().await;
    assert!(worker.health().is_none());
}
