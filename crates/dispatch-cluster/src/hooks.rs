//! Delivery of the cluster's events (leader elected, leadership lost) to hooks: in order, from a
//! task of its own, a panicking hook caught and logged.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use dispatch_core::{Event, Hook};
use futures::FutureExt as _;
use tokio::sync::mpsc;

/// A sender of events to the cluster's hooks (nothing is sent when there are none).
#[derive(Clone)]
pub(crate) struct Hooks {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Hooks {
    /// Start delivering to `hooks` (inside a tokio runtime); the delivery task ends once every
    /// sender is dropped and the events sent are delivered.
    pub(crate) fn start(hooks: Vec<Arc<dyn Hook>>) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        if hooks.is_empty() {
            return (Self { tx: None }, None);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let delivery = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                for hook in &hooks {
                    let call = AssertUnwindSafe(hook.on_event(&event)).catch_unwind();
                    if call.await.is_err() {
                        tracing::error!(?event, "a cluster hook panicked");
                    }
                }
            }
        });
        (Self { tx: Some(tx) }, Some(delivery))
    }

    /// Send `event` (built only when someone listens).
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event());
        }
    }
}
