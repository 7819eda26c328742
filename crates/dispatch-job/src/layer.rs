//! The built-in layers of the handler stack: panic recovery, tracing, tenant scope, timeout.
//!
//! Each is a plain [`tower::Layer`]; user layers compose with them through the worker builder.
//! Their futures are named types (no box per layer per attempt): the stack is boxed once, as a
//! whole, by [`JobService`](crate::service::JobService).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::future::{CatchUnwind, Either, Map, Ready};
use futures::{FutureExt, future};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::context::{CancelReason, with_scope};
use crate::error::JobError;
use crate::service::JobRequest;

type JobResult = Result<(), JobError>;

macro_rules! job_layer {
    ($(#[$meta:meta])* $layer:ident, $service:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $layer;

        impl<S> Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service { inner }
            }
        }

        #[doc = concat!("The service of [`", stringify!($layer), "`].")]
        #[derive(Clone, Debug)]
        pub struct $service<S> {
            inner: S,
        }
    };
}

job_layer!(
    /// Turns a panic anywhere below it into a failed attempt of kind `panic` carrying the
    /// panic message; the worker survives.
    RecoverLayer,
    Recover
);

type Caught = Result<JobResult, Box<dyn Any + Send>>;

/// The future of [`Recover`].
pub type RecoverFuture<F> =
    Either<Map<CatchUnwind<AssertUnwindSafe<F>>, fn(Caught) -> JobResult>, Ready<JobResult>>;

impl<S> Service<JobRequest> for Recover<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
{
    type Response = ();
    type Error = JobError;
    type Future = RecoverFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        let settle: fn(Caught) -> JobResult =
            |caught| caught.unwrap_or_else(|p| Err(panic_error(p)));
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => Either::Left(AssertUnwindSafe(future).catch_unwind().map(settle)),
            Err(panic) => Either::Right(future::ready(Err(panic_error(panic)))),
        }
    }
}

fn panic_error(panic: Box<dyn Any + Send>) -> JobError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    JobError::panic(format!("handler panicked: {message}"))
}

job_layer!(
    /// Runs each attempt in a `tracing` span `dispatch.job` with the job's ID, name, queue and
    /// attempt, and logs the attempt's result.
    TraceLayer,
    Trace
);

/// The future of [`Trace`].
pub type TraceFuture<F> = Instrumented<Map<F, fn(JobResult) -> JobResult>>;

impl<S> Service<JobRequest> for Trace<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
{
    type Response = ();
    type Error = JobError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        let ctx = &request.ctx;
        let span = tracing::info_span!(
            "dispatch.job",
            job.id = %ctx.id,
            job.name = %ctx.name,
            job.queue = %ctx.queue,
            job.attempt = ctx.attempt,
        );
        let log: fn(JobResult) -> JobResult = |result| {
            match &result {
                Ok(()) => tracing::debug!("attempt succeeded"),
                Err(error) => tracing::warn!(%error, "attempt failed"),
            }
            result
        };
        let future = span.in_scope(|| self.inner.call(request));
        future.map(log).instrument(span)
    }
}

job_layer!(
    /// Makes the job's tenant scope the task's current scope
    /// ([`current_scope`](crate::context::current_scope)), so jobs enqueued by the handler
    /// inherit it. Jobs without a scope pass straight through.
    ScopeLayer,
    ScopeService
);

/// The future of [`ScopeService`].
pub type ScopeFuture<F> = Either<F, futures::future::BoxFuture<'static, JobResult>>;

impl<S> Service<JobRequest> for ScopeService<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = ScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        if request.ctx.scope.is_empty() {
            return Either::Left(self.inner.call(request));
        }
        let scope = request.ctx.scope.clone();
        Either::Right(Box::pin(with_scope(scope, self.inner.call(request))))
    }
}

job_layer!(
    /// Ends an attempt at the job's timeout: fires its cancel token with reason `Timeout`, drops
    /// the handler's future and fails the attempt with kind `timeout` (retried per backoff).
    TimeoutLayer,
    Timeout
);

/// The future of [`Timeout`]: the inner future itself when the job has no timeout.
pub type TimeoutFuture<F> = Either<F, futures::future::BoxFuture<'static, JobResult>>;

impl<S> Service<JobRequest> for Timeout<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        let Some(limit) = request.ctx.timeout else {
            return Either::Left(self.inner.call(request));
        };
        let token = request.ctx.cancel.clone();
        let future = self.inner.call(request);
        Either::Right(Box::pin(async move {
            tokio::time::timeout(limit, future).await.unwrap_or_else(|_elapsed| {
                token.cancel(CancelReason::Timeout);
                Err(JobError::timeout(limit))
            })
        }))
    }
}
