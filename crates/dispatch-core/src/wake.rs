//! Push wake-ups: how a store tells idle workers that jobs are waiting.
//!
//! Polling is the safety net; a store that can push ([`Capabilities::push_wakeups`]) hands each
//! worker a [`WakeupStream`] so jobs enqueued elsewhere (another client in this process, another
//! process, a database trigger) start at once instead of at the next poll. A wake-up is a hint,
//! never a promise: a worker that wakes claims, and finds nothing when another worker was faster.
//!
//! [`Capabilities::push_wakeups`]: crate::Capabilities::push_wakeups

use std::pin::Pin;

use futures_core::Stream;

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

/// The wake-ups a store pushes to one subscriber. It ends when the store is dropped.
pub type WakeupStream = Pin<Box<dyn Stream<Item = Wakeup> + Send + 'static>>;
