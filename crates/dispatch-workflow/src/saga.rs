//! What wraps every workflow body: its run timeout, and its saga. When the body fails (a step
//! out of attempts, an error it returned, the timeout, a cancel), the compensations of the steps
//! that completed run in reverse completion order, each as a checkpointed, retried step (key
//! `c:{step key}`, [`Kind::Compensation`]), so a crash during compensation resumes it and no
//! compensation runs twice. The run's error stays the body's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;
use crate::definition::Body;
use crate::drive::{Compensation, Undo};
use crate::error::{StepError, WorkflowError};
use crate::record::{Key, Kind};

/// The body with its timeout and compensations, as one future.
pub(crate) fn run(
    body: Body,
    timeout: Option<Duration>,
    ctx: WorkflowContext,
    input: Vec<u8>,
) -> BoxFuture<'static, Result<Vec<u8>, WorkflowError>> {
    async move {
        if let Some(timeout) = timeout {
            let proposed = ctx.drive().now() + timeout;
            let deadline = ctx.deadline(Key::run_deadline().render(), proposed).await?;
            ctx.drive().set_deadline(deadline);
        }
        let result = body(ctx.clone(), input).await;
        if result.is_err() {
            compensate(&ctx).await;
        }
        result
    }
    .boxed()
}

/// Run every registered compensation, newest first; one that fails for good is reported (its
/// step-failed hook) and the others still run.
async fn compensate(ctx: &WorkflowContext) {
    let policy = ctx.drive().policy.clone();
    for undo in ctx.drive().start_compensating().into_iter().rev() {
        let Undo { step: key, key: undo_key, compensation } = undo;
        let undone: Result<(), WorkflowError> =
            ctx.step_at(undo_key, &policy, || compensation()).await;
        match undone {
            Ok(()) => ctx.drive().emit(|run| dispatch_core::Event::CompensationRan { run, key }),
            Err(error) => {
                tracing::warn!(run = %ctx.run_id(), step = %key, %error, "compensation failed");
            }
        }
    }
}

impl WorkflowContext {
    /// A step with a compensation: when the run later fails (or times out), `compensate` runs
    /// with this step's result, after the compensations of later steps (see the `saga` module).
    pub async fn step_with_compensation<T, F, Fut, C, CFut>(
        &self,
        name: &str,
        step: F,
        compensate: C,
    ) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
        C: Fn(T) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        let n = self.next(Kind::Step, name);
        let key = self.key(Kind::Step, name, n);
        let policy = self.drive().policy.clone();
        let value = self.step_at(key.clone(), &policy, step).await?;
        let (compensate, done) = (Arc::new(compensate), value.clone());
        let compensation: Compensation = Arc::new(move || compensate(done.clone()).boxed());
        let undo_key = self.key(Kind::Compensation, name, n);
        self.drive().push_compensation(Undo { step: key, key: undo_key, compensation });
        Ok(value)
    }
}
