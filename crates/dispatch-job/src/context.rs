//! What a handler knows about its attempt: [`JobContext`], its [`CancelToken`], and the task-local
//! tenant scope.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dispatch_core::{JobId, Scope};
use tokio_util::sync::CancellationToken;

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
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    inner: Arc<TokenInner>,
}

#[derive(Debug, Default)]
struct TokenInner {
    token: CancellationToken,
    reason: OnceLock<CancelReason>,
}

impl CancelToken {
    /// A token that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire with `reason`. Only the first reason sticks; firing again does nothing.
    pub fn cancel(&self, reason: CancelReason) {
        if self.inner.reason.set(reason).is_ok() {
            self.inner.token.cancel();
        }
    }

    /// Why it fired, or `None` while it has not.
    pub fn reason(&self) -> Option<CancelReason> {
        self.inner.reason.get().copied()
    }

    /// Whether it has fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Wait until it fires; returns the reason.
    pub async fn cancelled(&self) -> CancelReason {
        self.inner.token.cancelled().await;
        self.reason().unwrap_or(CancelReason::CancelRequested)
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) name: Arc<str>,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) scope: Scope,
    pub(crate) cancel: CancelToken,
}

impl JobContext {
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
