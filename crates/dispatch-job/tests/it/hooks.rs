//! Hook delivery under hooks that fall behind: a bounded buffer that drops and counts, and a
//! shutdown that a stuck hook can not hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Event, Hook, JobState};
use dispatch_job::{JobContext, JobDefinition};
use tokio::sync::Semaphore;

use crate::support::{store, wait_for_state, worker};

/// A hook that waits for a permit before each event, then counts it.
struct GatedHook {
    gate: Arc<Semaphore>,
    delivered: Arc<AtomicU64>,
}

#[async_trait]
impl Hook for GatedHook {
    async fn on_event(&self, _event: &Event) {
        if let Ok(permit) = self.gate.acquire().await {
            permit.forget();
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
    }
}

fn noop() -> JobDefinition<u32> {
    JobDefinition::new("noop", |_ctx: JobContext, _: u32| async { Ok(()) })
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_never_returns_does_not_hang_shutdown() {
    let store = store();
    let gate = Arc::new(Semaphore::new(0)); // never opened
    let hook = GatedHook { gate, delivered: Arc::default() };
    let handle = worker(store.clone())
        .register(noop())
        .hook(hook)
        .shutdown_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&noop(), 1).await.unwrap().id();
    wait_for_state(&store, id, JobState::Completed).await;
    let report = tokio::time::timeout(Duration::from_secs(60), handle.stop())
        .await
        .expect("stop returns although a hook never does");
    assert!(!report.hooks_flushed);
}

#[tokio::test(start_paused = true)]
async fn hooks_that_fall_behind_lose_events_counted_never_jobs() {
    const JOBS: u64 = 50;
    let store = store();
    let gate = Arc::new(Semaphore::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let hook = GatedHook { gate: gate.clone(), delivered: delivered.clone() };
    let handle = worker(store.clone())
        .register(noop())
        .hook(hook)
        .concurrency(8)
        .configure(|c| c.hook_buffer = 8)
        .build()
        .unwrap()
        .start();
    let client = handle.client();
    let enqueued = client.enqueue_many(&noop(), 0..JOBS as u32).await;
    let ids: Vec<_> = enqueued.unwrap().iter().map(|e| e.id()).collect();
    for id in ids {
        wait_for_state(&store, id, JobState::Completed).await; // while the hook is stuck
    }
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let report = handle.stop().await;
    assert!(report.hooks_flushed);
    assert!(report.hook_events_dropped > 0, "the buffer of 8 overflowed");
    // Enqueued, started and completed per job, and the shutdown: each delivered or counted.
    let emitted = 3 * JOBS + 1;
    assert_eq!(delivered.load(Ordering::SeqCst) + report.hook_events_dropped, emitted);
}
