//! The built-in layers of the handler stack: panic recovery, tracing, tenant scope, timeout.
//!
//! Each is a plain [`tower::Layer`]; user layers compose with them through the worker builder.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::{CancelReason, with_scope};
use crate::error::JobError;
use crate::service::JobRequest;

type JobFuture = BoxFuture<'static, Result<(), JobError>>;

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

impl<S> Service<JobRequest> for Recover<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = JobFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> JobFuture {
        let name = request.ctx.name.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => {
                Box::pin(AssertUnwindSafe(future).catch_unwind().map(move |r| {
                    r.unwrap_or_else(|panic| Err(panic_error(&name, panic.as_ref())))
                }))
            }
            Err(panic) => Box::pin(std::future::ready(Err(panic_error(&name, panic.as_ref())))),
        }
    }
}

fn panic_error(job: &str, panic: &(dyn std::any::Any + Send)) -> JobError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    JobError::panic(format!("job {job:?} panicked: {message}"))
}

job_layer!(
    /// Runs each attempt in a `tracing` span `dispatch.job` with the job's ID, name, queue and
    /// attempt, and logs the attempt's result.
    TraceLayer,
    Trace
);

impl<S> Service<JobRequest> for Trace<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = JobFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> JobFuture {
        let ctx = &request.ctx;
        let span = tracing::info_span!(
            "dispatch.job",
            job.id = %ctx.id,
            job.name = %ctx.name,
            job.queue = %ctx.queue,
            job.attempt = ctx.attempt,
        );
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = future.await;
                match &result {
                    Ok(()) => tracing::debug!("attempt succeeded"),
                    Err(error) => tracing::warn!(%error, "attempt failed"),
                }
                result
            }
            .instrument(span),
        )
    }
}

job_layer!(
    /// Makes the job's tenant scope the task's current scope
    /// ([`current_scope`](crate::context::current_scope)), so jobs enqueued by the handler
    /// inherit it.
    ScopeLayer,
    ScopeService
);

impl<S> Service<JobRequest> for ScopeService<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = JobFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> JobFuture {
        let scope = request.ctx.scope.clone();
        Box::pin(with_scope(scope, self.inner.call(request)))
    }
}

job_layer!(
    /// Ends an attempt at the job's timeout: fires its cancel token with reason `Timeout`, drops
    /// the handler's future and fails the attempt with kind `timeout` (retried per backoff).
    TimeoutLayer,
    Timeout
);

impl<S> Service<JobRequest> for Timeout<S>
where
    S: Service<JobRequest, Response = (), Error = JobError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = JobError;
    type Future = JobFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: JobRequest) -> JobFuture {
        let Some(limit) = request.ctx.timeout else {
            return Box::pin(self.inner.call(request));
        };
        let token = request.ctx.cancel.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, future).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    token.cancel(CancelReason::Timeout);
                    Err(JobError::timeout(limit))
                }
            }
        })
    }
}
