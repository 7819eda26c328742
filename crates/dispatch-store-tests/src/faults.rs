//! A store that misbehaves on purpose, for scenarios that prove the runtime survives a slow or
//! flaky store: replies held back per call kind, an outage window in which every call fails
//! `Unavailable` without reaching the store, and ambiguous failures (the store applied the call,
//! the caller is told it failed).
//!
//! [`faulty`] wraps any store in [`Faults`]; the scenarios change the faults while a worker runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Call, CallKind, Error, Intercepted, Interceptor, JobStore, Reply, Result};
use parking_lot::Mutex;
use tokio::time::Instant;

/// A store wrapped in [`Faults`]: a job store by default, a workflow store when `S` is one.
pub type FaultyStore<S = dyn JobStore> = Intercepted<S, Faults>;

/// Wrap `inner` in [`Faults`] that do nothing until told to.
pub fn faulty<S: JobStore + ?Sized>(inner: Arc<S>) -> Arc<FaultyStore<S>> {
    Arc::new(Intercepted::new(inner, Faults::default()))
}

/// The faults a [`FaultyStore`] injects. Every setting can change while calls are in flight.
#[derive(Debug, Default)]
pub struct Faults {
    reply_delays: Mutex<HashMap<CallKind, Duration>>,
    outage_until: Mutex<Option<Instant>>,
    ambiguous: Mutex<HashMap<CallKind, u64>>,
    calls: Mutex<HashMap<CallKind, u64>>,
    failed: AtomicU64,
}

impl Faults {
    /// Hold back every reply to calls of `kind` for `delay` after the store answered (the call
    /// is applied at once; only its answer is late).
    pub fn delay_replies(&self, kind: CallKind, delay: Duration) {
        self.reply_delays.lock().insert(kind, delay);
    }

    /// From now until `length` has passed, every call fails `Unavailable` without reaching the
    /// store.
    pub fn outage(&self, length: Duration) {
        *self.outage_until.lock() = Some(Instant::now() + length);
    }

    /// Whether an outage is on now.
    pub fn in_outage(&self) -> bool {
        self.outage_until.lock().is_some_and(|until| Instant::now() < until)
    }

    /// Make every `every`-th call of `kind` (the 1st, the `every+1`-th, ...) ambiguous: the store
    /// applies it, the caller gets `Unavailable`. `every = 1` makes every call ambiguous.
    pub fn ambiguous(&self, kind: CallKind, every: u64) {
        self.ambiguous.lock().insert(kind, every.max(1));
    }

    /// Calls of `kind` made through the store so far (outage failures included).
    pub fn calls(&self, kind: CallKind) -> u64 {
        self.calls.lock().get(&kind).copied().unwrap_or(0)
    }

    /// Calls failed on purpose so far (outage or ambiguous).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn fail(&self, message: &str) -> Error {
        self.failed.fetch_add(1, Ordering::SeqCst);
        Error::unavailable(message.to_owned())
    }
}

#[async_trait]
impl Interceptor for Faults {
    async fn before(&self, call: Call) -> Result<()> {
        *self.calls.lock().entry(call.kind).or_default() += 1;
        if self.in_outage() {
            return Err(self.fail("the store is unreachable (injected outage)"));
        }
        Ok(())
    }

    async fn after(&self, call: Call, reply: Reply<'_>) -> Result<()> {
        let delay = self.reply_delays.lock().get(&call.kind).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let every = self.ambiguous.lock().get(&call.kind).copied();
        let nth = self.calls(call.kind);
        let applied = !matches!(reply, Reply::Failed(_));
        if applied && every.is_some_and(|every| (nth - 1).is_multiple_of(every)) {
            return Err(self.fail("the reply was lost after the store applied the call (injected)"));
        }
        Ok(())
    }
}
