//! The handler stack as a [`tower::Service`]: [`JobRequest`] in, `()` or a [`JobError`] out.
//!
//! The worker builds one stack and calls a clone of it per attempt. Built-in layers, outermost
//! first: [`RecoverLayer`](crate::layer::RecoverLayer) ► [`TraceLayer`](crate::layer::TraceLayer)
//! ► [`ScopeLayer`](crate::layer::ScopeLayer) ► [`TimeoutLayer`](crate::layer::TimeoutLayer) ►
//! user layers ► the handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::context::JobContext;
use crate::error::JobError;
use crate::registry::Registry;

/// One attempt of one job, as it travels down the stack.
#[derive(Debug)]
pub struct JobRequest {
    /// The attempt's context (cloned into the handler).
    pub ctx: JobContext,
    /// The encoded input.
    pub payload: Vec<u8>,
}

/// The type-erased stack the worker calls.
pub type JobService = BoxCloneSyncService<JobRequest, (), JobError>;

/// The innermost service: finds the job's handler in the registry, decodes, runs it.
#[derive(Clone, Debug)]
pub struct HandlerService {
    registry: Arc<Registry>,
}

impl HandlerService {
    /// A service running the handlers of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Service<JobRequest> for HandlerService {
    type Response = ();
    type Error = JobError;
    type Future = BoxFuture<'static, Result<(), JobError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        match self.registry.get(request.ctx.name()) {
            Some(job) => job.call(request.ctx, &request.payload),
            None => {
                let message = format!("no handler registered for job {:?}", request.ctx.name());
                Box::pin(std::future::ready(Err(JobError::retry(message))))
            }
        }
    }
}
