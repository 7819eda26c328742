//! Fixtures for tests that drive the runtime over a store: polling against a deadline, a hook
//! that records events, a hook that panics, a store wrapper that counts (and can fail) calls, and (in [`faults`](crate::faults)) one that
//! delays, fails and lies.
//! Used by the runtime scenarios of this crate and by `dispatch-job`'s own tests.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    Call, CallKind, Event, Hook, Intercepted, Interceptor, Job, JobId, JobState, JobStore, Result,
};
use parking_lot::Mutex;

/// Poll `check` every 5 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until job `id` is in `state`; returns it.
pub async fn wait_for_state<S>(store: &Arc<S>, id: JobId, state: JobState) -> Job
where
    S: JobStore + ?Sized,
{
    eventually(&format!("job {id} to be {state}"), Duration::from_secs(60), || async {
        store.get_job(id).await.expect("get_job").filter(|job| job.state == state)
    })
    .await
}

/// A hook that records every event.
#[derive(Clone, Default)]
pub struct Recorder {
    /// Every event, in delivery order.
    pub events: Arc<Mutex<Vec<Event>>>,
}

#[async_trait]
impl Hook for Recorder {
    async fn on_event(&self, event: &Event) {
        self.events.lock().push(event.clone());
    }
}

impl Recorder {
    /// The recorded events about job `id`.
    pub fn for_job(&self, id: JobId) -> Vec<Event> {
        self.events.lock().iter().filter(|e| e.job().is_some_and(|j| j.id == id)).cloned().collect()
    }
}

/// A hook that panics on every event.
pub struct PanickingHook;

#[async_trait]
impl Hook for PanickingHook {
    async fn on_event(&self, _event: &Event) {
        panic!("this hook always panics");
    }
}

/// A store that counts the calls made through it: [`Counts`] around the real store.
/// A job store by default, a workflow store when `S` is one.
pub type CountingStore<S = dyn JobStore> = Intercepted<S, Counts>;

/// Wrap `inner` in a [`CountingStore`].
pub fn counting<S: JobStore + ?Sized>(inner: Arc<S>) -> Arc<CountingStore<S>> {
    Arc::new(Intercepted::new(inner, Counts::default()))
}

/// What a [`CountingStore`] counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// The limit of every claim, in order.
    pub claim_limits: Mutex<Vec<usize>>,
    /// The number of leases in every heartbeat, in order.
    pub heartbeats: Mutex<Vec<usize>>,
    /// Finish calls made.
    pub finishes: AtomicUsize,
    /// `next_due` calls answered: each is an idle fetch loop about to sleep.
    pub next_dues: AtomicUsize,
    /// Calls a workflow drive makes: load, save checkpoints, suspend, resolve a wait, end.
    pub drive_calls: AtomicUsize,
    /// When set, heartbeats fail as if the store were unreachable.
    pub fail_heartbeats: AtomicBool,
}

#[async_trait]
impl Interceptor for Counts {
    async fn before(&self, call: Call) -> Result<()> {
        match call.kind {
            CallKind::Claim => self.claim_limits.lock().push(call.items),
            CallKind::Heartbeat => {
                self.heartbeats.lock().push(call.items);
                if self.fail_heartbeats.load(Ordering::SeqCst) {
                    let message = "heartbeats are failing in this test";
                    return Err(dispatch_core::Error::unavailable(message));
                }
            }
            CallKind::Finish => _ = self.finishes.fetch_add(1, Ordering::SeqCst),
            CallKind::Drive => _ = self.drive_calls.fetch_add(1, Ordering::SeqCst),
            _ => {}
        }
        Ok(())
    }

    async fn after(&self, call: Call, _reply: dispatch_core::Reply<'_>) -> Result<()> {
        if call.kind == CallKind::NextDue {
            self.next_dues.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}
