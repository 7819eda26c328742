//! Push wake-ups: the store's subscription to its wake channel, shared by every
//! [`wakeups`](dispatch_core::JobStore::wakeups) stream of the store.

/// The wake-up side of a store (shared by its clones).
#[derive(Clone)]
pub(crate) struct Wake {
    #[allow(dead_code)]
    client: redis::Client,
    #[allow(dead_code)]
    channel: String,
}

impl Wake {
    pub(crate) fn new(client: redis::Client, channel: String) -> Self {
        Self { client, channel }
    }
}
