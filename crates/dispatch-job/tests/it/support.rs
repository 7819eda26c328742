//! Shared test fixtures: a memory store on tokio's (paused) clock and a worker builder with short
//! intervals; the rest (polling against a deadline, a recording hook, a counting store) comes
//! from `dispatch_store_tests::fixtures`, shared with the runtime scenarios every store runs.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Clock, JobStore, ManualClock, Timestamp};
use dispatch_job::{Worker, WorkerBuilder};
use dispatch_store_memory::MemoryStore;

pub use dispatch_store_tests::fixtures::{
    PanickingHook, Recorder, counting, eventually, wait_for_state,
};

/// A clock that follows tokio's (paused) clock, so the store's time moves with the test's
/// timers: backoffs and leases expire as virtual time passes.
#[derive(Debug)]
pub struct TokioClock {
    start: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self { start: ManualClock::fixed().now(), origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.start + self.origin.elapsed()
    }
}

/// A memory store whose clock follows tokio's.
pub fn store() -> Arc<dyn JobStore> {
    Arc::new(MemoryStore::with_clock(Arc::new(TokioClock::new())))
}

/// A worker builder with intervals short enough for tests.
pub fn worker(store: Arc<dyn JobStore>) -> WorkerBuilder {
    Worker::builder(store).configure(|c| {
        c.poll_interval = Duration::from_millis(10);
        c.heartbeat_interval = Duration::from_millis(100);
        c.lease_ttl = Duration::from_secs(30);
        c.rescue_interval = Duration::from_secs(3600);
        c.shutdown_timeout = Duration::from_secs(1);
    })
}
