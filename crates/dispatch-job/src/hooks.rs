//! Delivering lifecycle events to hooks, off the job's path.
//!
//! Events go down an unbounded channel to one task that calls every hook in registration order.
//! Emitting never waits for a hook, so a slow hook does not slow claiming or finishing; a hook
//! that panics is caught, logged, and keeps receiving later events. With no hooks registered,
//! emitting costs a branch: the event is never even built.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use dispatch_core::{Event, Hook};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

enum Message {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// The sending side of hook delivery. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HookBus {
    tx: Option<mpsc::UnboundedSender<Message>>,
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
    /// A bus delivering to `hooks` from a task spawned on the current tokio runtime. With no
    /// hooks, nothing is spawned. Panics outside a tokio runtime when `hooks` is not empty.
    pub fn new(hooks: Vec<Arc<dyn Hook>>) -> Self {
        if hooks.is_empty() {
            return Self::disabled();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(hooks, rx));
        Self { tx: Some(tx) }
    }

    /// A bus that delivers nothing.
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Whether any hook listens; when not, callers skip building events.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue the event `make` builds, if any hook listens.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if let Some(tx) = &self.tx {
            // A send fails only when the delivery task is gone (runtime shutting down).
            let _ = tx.send(Message::Event(make()));
        }
    }

    /// Wait until every event emitted before this call has been delivered.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Message::Flush(done_tx)).is_ok() {
                let _ = done_rx.await;
            }
        }
    }
}

async fn deliver(hooks: Vec<Arc<dyn Hook>>, mut rx: mpsc::UnboundedReceiver<Message>) {
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
