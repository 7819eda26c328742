//! Push wake-ups: how a store tells idle workers that jobs are waiting.
//!
//! Polling is the safety net; a store that can push (its [`JobStore::wakeups`] answers `Some`)
//! hands each worker a [`WakeupStream`] so jobs enqueued elsewhere (another client in this process, another
//! process, a database trigger) start at once instead of at the next poll. A wake-up is a hint,
//! never a promise: a worker that wakes claims, and finds nothing when another worker was faster.
//!
//! A store whose wake-ups travel over a connection that can be lost (PostgreSQL's `LISTEN`)
//! reports that connection through [`JobStore::listener_state`] as a [`ListenerState`], so a
//! worker's health view can tell "no jobs" from "deaf".
//!
//! [`JobStore::wakeups`]: crate::JobStore::wakeups
//! [`JobStore::listener_state`]: crate::JobStore::listener_state

use std::pin::Pin;

use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A hint that jobs may be available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wakeup {
    /// The queue that received jobs; `None` when any queue may have (for example after the
    /// store's listener reconnected and may have missed notifications).
    pub queue: Option<String>,
}

impl Wakeup {
    /// A wake-up for one queue.
    pub fn queue(queue: impl Into<String>) -> Self {
        Self { queue: Some(queue.into()) }
    }

    /// A wake-up for every queue.
    pub fn any() -> Self {
        Self { queue: None }
    }

    /// Whether a worker of `queues` should look.
    pub fn concerns(&self, queues: &[String]) -> bool {
        self.queue.as_ref().is_none_or(|queue| queues.iter().any(|q| q == queue))
    }
}

/// A snapshot of a store's wake-up listener: the connection over which pushed wake-ups arrive.
///
/// While it is not connected, jobs enqueued elsewhere start at the next poll instead of at once;
/// nothing is lost, since the listener sends [`Wakeup::any`] each time it (re)connects. Times are
/// the store process's wall clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerState {
    /// Whether the listener is connected and listening now.
    pub connected: bool,
    /// Since when [`connected`](Self::connected) has held its value: the last (re)connect, or the
    /// loss of the connection (or, before the first connect, when the store was built).
    pub since: Timestamp,
    /// The last error of the listener (a lost connection, a failed connect), if any.
    pub last_error: Option<String>,
    /// When [`last_error`](Self::last_error) happened.
    pub last_error_at: Option<Timestamp>,
    /// How many times the listener connected again after its first connect.
    pub reconnects: u64,
}

impl ListenerState {
    /// A listener that has not connected yet, as of `now`.
    pub fn new(now: Timestamp) -> Self {
        Self { connected: false, since: now, last_error: None, last_error_at: None, reconnects: 0 }
    }
}

/// The wake-ups a store pushes to one subscriber. It ends when the store is dropped.
pub type WakeupStream = Pin<Box<dyn Stream<Item = Wakeup> + Send + 'static>>;

/// The fan-out of wake-ups from a store to its subscribed workers, for stores that push from
/// their own write path (in-process). Wake-ups coalesce: a subscriber that has not yet read its
/// last wake-up sees one, for that queue or, when several queues were woken meanwhile, for any
/// queue. So a slow subscriber never makes a notifier wait or buffer. Clones share subscribers;
/// streams end when the last clone is dropped.
#[derive(Clone, Debug, Default)]
pub struct WakeupHub {
    inner: std::sync::Arc<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    subscribers: parking_lot::Mutex<Vec<std::sync::Weak<Slot>>>,
}

/// One subscriber's pending wake-up and the task waiting for it.
#[derive(Debug, Default)]
struct Slot {
    state: parking_lot::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    pending: Option<Wakeup>,
    waker: Option<std::task::Waker>,
    closed: bool,
}

impl WakeupHub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wake subscribers for jobs in `queues`: a wake-up for the queue when all are one queue,
    /// for any queue when they are several; nothing when `queues` is empty.
    pub fn notify<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        let mut queues = queues.into_iter();
        let Some(first) = queues.next() else { return };
        let wakeup = if queues.all(|q| q == first) { Wakeup::queue(first) } else { Wakeup::any() };
        self.send(&wakeup);
    }

    /// Deliver `wakeup` to every live subscriber.
    pub fn send(&self, wakeup: &Wakeup) {
        let mut subscribers = self.inner.subscribers.lock();
        subscribers.retain(|slot| match slot.upgrade() {
            Some(slot) => {
                slot.offer(wakeup);
                true
            }
            None => false,
        });
    }

    /// A new subscriber's stream.
    pub fn subscribe(&self) -> WakeupStream {
        let slot = std::sync::Arc::new(Slot::default());
        self.inner.subscribers.lock().push(std::sync::Arc::downgrade(&slot));
        Box::pin(Subscription { slot })
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        for slot in self.subscribers.get_mut().drain(..).filter_map(|s| s.upgrade()) {
            let mut state = slot.state.lock();
            state.closed = true;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Slot {
    fn offer(&self, wakeup: &Wakeup) {
        let mut state = self.state.lock();
        state.pending = Some(match state.pending.take() {
            Some(pending) if pending != *wakeup => Wakeup::any(),
            _ => wakeup.clone(),
        });
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The stream side of one subscriber.
struct Subscription {
    slot: std::sync::Arc<Slot>,
}

impl Stream for Subscription {
    type Item = Wakeup;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Wakeup>> {
        let mut state = self.slot.state.lock();
        if let Some(wakeup) = state.pending.take() {
            return std::task::Poll::Ready(Some(wakeup));
        }
        if state.closed {
            return std::task::Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll(stream: &mut WakeupStream) -> Poll<Option<Wakeup>> {
        stream.as_mut().poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn wake_ups_coalesce_per_subscriber_and_streams_end_with_the_hub() {
        let hub = WakeupHub::new();
        let mut first = hub.subscribe();
        assert_eq!(poll(&mut first), Poll::Pending);
        hub.notify(["a"]);
        hub.notify(["a", "a"]);
        let mut second = hub.subscribe();
        hub.notify(["b"]);
        assert_eq!(poll(&mut first), Poll::Ready(Some(Wakeup::any())), "a then b coalesce");
        assert_eq!(poll(&mut second), Poll::Ready(Some(Wakeup::queue("b"))));
        assert_eq!(poll(&mut second), Poll::Pending);
        hub.notify(Vec::<&str>::new());
        assert_eq!(poll(&mut second), Poll::Pending, "no queues, no wake-up");
        drop(hub);
        assert_eq!(poll(&mut first), Poll::Ready(None));
        assert_eq!(poll(&mut second), Poll::Ready(None));
    }
}
