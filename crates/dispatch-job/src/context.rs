//! What a handler knows about its attempt: [`JobContext`], its [`CancelToken`], and the task-local
//! tenant scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::progress::ProgressSink;
use dispatch_core::{JobId, LeaseRef, LeaseToken, Scope};
use tokio::sync::Notify;

/// Why an attempt was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// Someone asked for the job to be cancelled.
    CancelRequested,
    /// The worker is shutting down and the shutdown timeout has passed.
    Shutdown,
    /// The attempt ran past its timeout.
    Timeout,
    /// The worker lost the job's lease (it expired and the job was rescued); a result would be
    /// refused.
    LeaseLost,
}

/// Fires once, with a reason. Cheap to clone; every clone sees the same firing.
///
/// Hand-rolled on an atomic and a [`Notify`] rather than a `CancellationToken`, because one is made
/// per attempt on the hot path and this costs one allocation. The worker also uses it to *abort*
/// an attempt (drop its future), which only a lost lease or a shutdown does.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    inner: Arc<TokenInner>,
}

#[derive(Debug, Default)]
struct TokenInner {
    /// 0 while not fired, else a `CancelReason` code.
    reason: AtomicU8,
    /// 0 while not aborted, else the `CancelReason` code of the abort.
    aborted: AtomicU8,
    notify: Notify,
}

impl CancelReason {
    fn code(self) -> u8 {
        match self {
            Self::CancelRequested => 1,
            Self::Shutdown => 2,
            Self::Timeout => 3,
            Self::LeaseLost => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::CancelRequested),
            2 => Some(Self::Shutdown),
            3 => Some(Self::Timeout),
            4 => Some(Self::LeaseLost),
            _ => None,
        }
    }
}

impl CancelToken {
    /// A token that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire with `reason`. Only the first reason sticks; firing again does nothing.
    pub fn cancel(&self, reason: CancelReason) {
        let fired = self.inner.reason.compare_exchange(
            0,
            reason.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if fired.is_ok() {
            self.inner.notify.notify_waiters();
        }
    }

    /// Fire with `reason` (if not fired yet) and mark the attempt aborted.
    pub(crate) fn abort(&self, reason: CancelReason) {
        self.inner.aborted.store(reason.code(), Ordering::Release);
        self.cancel(reason);
        self.inner.notify.notify_waiters();
    }

    /// Why it fired, or `None` while it has not.
    pub fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_code(self.inner.reason.load(Ordering::Acquire))
    }

    /// Whether it has fired.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Wait until it fires; returns the reason.
    pub async fn cancelled(&self) -> CancelReason {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// Why the attempt was aborted, if it was.
    pub(crate) fn abort_reason(&self) -> Option<CancelReason> {
        CancelReason::from_code(self.inner.aborted.load(Ordering::Acquire))
    }

    /// Wait until the attempt is aborted; returns why.
    pub(crate) async fn aborted(&self) -> CancelReason {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.abort_reason() {
                return reason;
            }
            notified.await;
        }
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) scope: Scope,
    pub(crate) cancel: CancelToken,
    pub(crate) token: LeaseToken,
    pub(crate) progress: ProgressSink,
    pub(crate) saved_progress: Option<serde_json::Value>,
}

impl JobContext {
    /// This attempt's lease: the fence for store writes made on behalf of the attempt (a
    /// workflow drive's checkpoints). Writes with it are refused once the lease is lost.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef { job_id: self.id, token: self.token }
    }

    /// The job's ID.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// The job name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue it was claimed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this is the last attempt the job gets.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The attempt's time limit.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The job's tenant scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The token that fires when the attempt should stop; its reason says why.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Wait until the attempt is asked to stop; returns why.
    pub async fn cancelled(&self) -> CancelReason {
        self.cancel.cancelled().await
    }

    /// Whether the attempt has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Report the attempt's progress (any value that serializes to JSON, e.g. `json!({"done":
    /// 40, "of": 100})`). The latest report is written at the worker's next heartbeat (reports
    /// in between replace each other) and when the attempt ends; it shows on the job record
    /// ([`Job::progress`](dispatch_core::Job::progress)) and is kept across retries, so a retry
    /// can resume from it. Needs a store that keeps flow control (every built-in store); with
    /// another, reports are dropped. Fails only when the value does not serialize.
    pub fn progress(&self, progress: impl serde::Serialize) -> dispatch_core::Result<()> {
        let value = serde_json::to_value(progress).map_err(|e| {
            dispatch_core::Error::invalid_input(format!("progress does not serialize: {e}"))
        })?;
        self.progress.report(self.lease(), value);
        Ok(())
    }

    /// The progress stored on the job when this attempt began: what an earlier attempt
    /// reported last, so a retry can resume where it stopped.
    pub fn saved_progress(&self) -> Option<&serde_json::Value> {
        self.saved_progress.as_ref()
    }

    /// The latest progress this attempt reported and the worker has not written yet (for tests
    /// of handlers run with [`for_test`](Self::for_test), where nothing is written).
    pub fn pending_progress(&self) -> Option<serde_json::Value> {
        self.progress.latest(self.id)
    }

    /// A context for calling a handler directly (unit tests of handlers): attempt 1 of 1.
    pub fn for_test(name: &str) -> Self {
        Self {
            id: JobId::new(),
            name: name.into(),
            queue: dispatch_core::job::DEFAULT_QUEUE.into(),
            attempt: 1,
            max_attempts: 1,
            timeout: None,
            scope: Scope::default(),
            cancel: CancelToken::new(),
            token: LeaseToken::new(),
            progress: ProgressSink::default(),
            saved_progress: None,
        }
    }
}

tokio::task_local! {
    static CURRENT_SCOPE: Scope;
}

/// The tenant scope of the job running on this task, if any. Enqueues made from inside a handler
/// inherit it when they name no scope of their own.
pub fn current_scope() -> Option<Scope> {
    CURRENT_SCOPE.try_with(Clone::clone).ok()
}

/// Run `future` with `scope` as the task's current scope.
pub async fn with_scope<F: std::future::Future>(scope: Scope, future: F) -> F::Output {
    CURRENT_SCOPE.scope(scope, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_sticks_and_waiters_wake() {
        let token = CancelToken::new();
        let waiter = tokio::spawn({
            let token = token.clone();
            async move { token.cancelled().await }
        });
        tokio::task::yield_now().await;
        token.cancel(CancelReason::CancelRequested);
        token.cancel(CancelReason::Timeout);
        assert_eq!(waiter.await.unwrap(), CancelReason::CancelRequested);
        assert_eq!(token.reason(), Some(CancelReason::CancelRequested));
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn abort_after_a_cancel_request_keeps_both_reasons() {
        let token = CancelToken::new();
        token.cancel(CancelReason::CancelRequested);
        assert_eq!(token.abort_reason(), None);
        token.abort(CancelReason::Shutdown);
        assert_eq!(token.aborted().await, CancelReason::Shutdown);
        assert_eq!(token.reason(), Some(CancelReason::CancelRequested));
    }
}
