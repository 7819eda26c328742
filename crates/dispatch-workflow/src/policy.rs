//! [`StepPolicy`]: how a step is retried.

use std::time::Duration;

use dispatch_core::Backoff;

/// How a step is retried: attempts (the first included) and the backoff between them. A retry is
/// durable: the run suspends for the backoff and holds no worker slot.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPolicy {
    /// Attempts, the first included (at least 1).
    pub attempts: u32,
    /// The wait before attempt `n + 1` after attempt `n` failed.
    pub backoff: Backoff,
}

impl Default for StepPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
        }
    }
}
