//! Delivering lifecycle events to hooks, off the job's path.
//!
//! Events go down a bounded channel to one task that calls every hook in registration order.
//! Emitting never waits for a hook, so a slow hook does not slow claiming or finishing: when the
//! channel is full (hooks slower than the jobs for a long while, or a hook that never returns),
//! the new event is dropped, counted ([`HookBus::dropped`]) and logged, rather than blocking the
//! job's path or growing memory without bound. A hook that panics is caught, logged, and keeps
//! receiving later events. With no hooks registered, emitting costs a branch: the event is never
//! even built.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dispatch_core::{Event, Hook};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

enum Message {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// How many events wait for delivery, by default, before new ones are dropped.
pub const DEFAULT_HOOK_BUFFER: usize = 10_000;

/// The sending side of hook delivery. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HookBus {
    tx: Option<mpsc::Sender<Message>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(event) => event.fmt(f),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl HookBus {
    /// A bus delivering to `hooks` from a task spawned on the current tokio runtime, holding up
    /// to [`DEFAULT_HOOK_BUFFER`] undelivered events. With no hooks, nothing is spawned. Panics
    /// outside a tokio runtime when `hooks` is not empty.
    pub fn new(hooks: Vec<Arc<dyn Hook>>) -> Self {
        Self::with_buffer(hooks, DEFAULT_HOOK_BUFFER)
    }

    /// As [`new`](Self::new), holding up to `buffer` undelivered events (at least 1).
    pub fn with_buffer(hooks: Vec<Arc<dyn Hook>>, buffer: usize) -> Self {
        if hooks.is_empty() {
            return Self::disabled();
        }
        let (tx, rx) = mpsc::channel(buffer.max(1));
        tokio::spawn(deliver(hooks, rx));
        Self { tx: Some(tx), dropped: Arc::default() }
    }

    /// A bus that delivers nothing.
    pub fn disabled() -> Self {
        Self { tx: None, dropped: Arc::default() }
    }

    /// Events dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether any hook listens; when not, callers skip building events.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue the event `make` builds, if any hook listens; drop it (counted) when the buffer is
    /// full.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Event(make())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Message::Event(event))) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped,
                        ?event,
                        "hooks are behind and the buffer is full; event dropped"
                    );
                }
            }
            // The delivery task is gone (runtime shutting down).
            Err(_) => {}
        }
    }

    /// Wait until every event emitted before this call has been delivered, or `within` has
    /// passed; true when everything was delivered. A hook that never returns can not hold the
    /// caller longer than `within`.
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let flushed = async {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Message::Flush(done_tx)).await.is_ok() {
                let _ = done_rx.await;
            }
        };
        tokio::time::timeout(within, flushed).await.is_ok()
    }
}

async fn deliver(hooks: Vec<Arc<dyn Hook>>, mut rx: mpsc::Receiver<Message>) {
    while let Some(message) = rx.recv().await {
        match message {
            Message::Event(event) => {
                for hook in &hooks {
                    let call = AssertUnwindSafe(hook.on_event(&event)).catch_unwind();
                    if call.await.is_err() {
                        tracing::error!(?event, "a hook panicked; the event is skipped for it");
                    }
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
