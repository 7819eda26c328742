//! Worker settings and their defaults.

use std::time::Duration;

/// How a worker runs. Every field has a default; see [`WorkerConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Most attempts running at once (default 10).
    pub concurrency: usize,
    /// Queues to claim from; `None` means `"default"` plus the default queues of the registered
    /// definitions.
    pub queues: Option<Vec<String>>,
    /// How often an idle worker polls the store, the safety net behind wake-ups (default 1 s).
    pub poll_interval: Duration,
    /// How long a claim's lease lasts without a heartbeat (default 30 s).
    pub lease_ttl: Duration,
    /// How often running leases are renewed, all in one store call (default 10 s).
    pub heartbeat_interval: Duration,
    /// How often expired leases are rescued (default 15 s).
    pub rescue_interval: Duration,
    /// How long in-flight attempts may run after stop is asked (default 30 s).
    pub shutdown_timeout: Duration,
    /// The longest a single store call may take before it counts as failed (default 10 s).
    pub store_timeout: Duration,
    /// The most finishes written in one store call (default 1,000).
    pub finish_batch: usize,
    /// The longest [`WorkerHandle::ready`](super::WorkerHandle::ready) waits for the worker to
    /// be ready before it answers an error (default 30 s). The worker itself keeps running and
    /// retrying past it; `ready` may be called again.
    pub ready_timeout: Duration,
    /// How many hook events may wait for delivery (default 10,000). When hooks fall further
    /// behind, new events are dropped and counted rather than slowing jobs down; see
    /// [`ShutdownReport::hook_events_dropped`](super::ShutdownReport::hook_events_dropped).
    pub hook_buffer: usize,
    /// Local slot limits per queue: a queue named here gets at most this many of the worker's
    /// slots at once (default none: every queue shares all of them). Each must be between 1 and
    /// `concurrency`.
    pub queue_slots: std::collections::BTreeMap<String, usize>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 10,
            queues: None,
            poll_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            rescue_interval: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(30),
            store_timeout: Duration::from_secs(10),
            finish_batch: 1000,
            ready_timeout: Duration::from_secs(30),
            hook_buffer: crate::hooks::DEFAULT_HOOK_BUFFER,
            queue_slots: std::collections::BTreeMap::new(),
        }
    }
}

impl WorkerConfig {
    /// Check the settings make sense together.
    pub fn validate(&self) -> dispatch_core::Result<()> {
        let invalid = |m: &str| Err(dispatch_core::Error::invalid_input(m.to_owned()));
        if self.concurrency == 0 || self.concurrency > u32::MAX as usize >> 4 {
            return invalid("concurrency must be between 1 and 2^28");
        }
        if self.heartbeat_interval >= self.lease_ttl {
            return invalid("heartbeat_interval must be shorter than lease_ttl");
        }
        if self.poll_interval.is_zero() || self.rescue_interval.is_zero() {
            return invalid("poll_interval and rescue_interval must be positive");
        }
        if self.finish_batch == 0 || self.hook_buffer == 0 {
            return invalid("finish_batch and hook_buffer must be at least 1");
        }
        if self.queue_slots.values().any(|&n| n == 0 || n > self.concurrency) {
            return invalid("queue_slots must be between 1 and concurrency");
        }
        if self.queues.as_ref().is_some_and(Vec::is_empty) {
            return invalid("queues must not be empty");
        }
        Ok(())
    }
}
