//! What a handler returns when an attempt does not succeed: [`JobError`].
//!
//! The error says what should happen next (retry, give up, snooze), so a handler decides its
//! job's fate with an ordinary `Err(..)` and `?` works on any error type.

use std::fmt;
use std::time::Duration;

use dispatch_core::{Failure, FailureKind};

/// Why an attempt did not succeed and what to do about it.
pub struct JobError {
    action: Action,
    kind: FailureKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Retry after the definition's backoff, or after this delay.
    Retry(Option<Duration>),
    /// Do not retry: the job goes to the DLQ at once.
    Permanent,
    /// Run again after this delay, with the attempt given back.
    Snooze(Duration),
}

impl JobError {
    /// A failure worth retrying, after the definition's backoff.
    pub fn retry(error: impl fmt::Display) -> Self {
        Self::new(Action::Retry(None), FailureKind::Error, error)
    }

    /// A failure worth retrying after exactly `delay` (overrides the backoff).
    pub fn retry_after(error: impl fmt::Display, delay: Duration) -> Self {
        Self::new(Action::Retry(Some(delay)), FailureKind::Error, error)
    }

    /// A failure that retrying can not fix: the job goes to the DLQ at once.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self::new(Action::Permanent, FailureKind::Error, error)
    }

    /// Not now: run again after `delay`, without spending an attempt.
    pub fn snooze(delay: Duration) -> Self {
        Self::new(Action::Snooze(delay), FailureKind::Error, format!("snoozed for {delay:?}"))
    }

    /// The handler panicked with `message` (made by the recovery layer).
    pub fn panic(message: impl fmt::Display) -> Self {
        Self::new(Action::Retry(None), FailureKind::Panic, message)
    }

    /// The attempt ran past its timeout (made by the timeout layer).
    pub fn timeout(limit: Duration) -> Self {
        Self::new(Action::Retry(None), FailureKind::Timeout, format!("timed out after {limit:?}"))
    }

    /// The payload did not decode; never retried, since it would fail the same way.
    pub fn decode(error: impl fmt::Display) -> Self {
        Self::new(Action::Permanent, FailureKind::Decode, error)
    }

    fn new(action: Action, kind: FailureKind, message: impl fmt::Display) -> Self {
        Self { action, kind, message: message.to_string() }
    }

    /// Why the attempt failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the job goes to the DLQ without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.action == Action::Permanent
    }

    /// The snooze delay, when this is a snooze.
    pub fn snooze_delay(&self) -> Option<Duration> {
        match self.action {
            Action::Snooze(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn action(&self) -> Action {
        self.action
    }

    /// The failure as the store records it.
    pub fn to_failure(&self) -> Failure {
        Failure::new(self.kind, self.message.clone())
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("action", &self.action)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Any error converts to a retryable `JobError`, so `?` works in handlers. (`JobError` itself
/// does not implement `std::error::Error`, which is what makes this blanket conversion legal.)
impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::retry(error)
    }
}

/// What a handler returns.
pub type JobResult = Result<(), JobError>;
