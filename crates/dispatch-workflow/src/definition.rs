//! Workflow definitions: a name, a version, typed input and output, and the async function that
//! runs the workflow over a [`WorkflowContext`]; and what a definition makes of a new run (its
//! drive job).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Error, NewJob, NewRun, RunId, RunInfo, Scope};
use dispatch_job::{EnqueueOptions, JobDefinition};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::WorkflowContext;
use crate::error::WorkflowError;
use crate::policy::StepPolicy;

/// The type-erased body of a workflow: encoded input in, encoded output out.
pub(crate) type Body = Arc<
    dyn Fn(WorkflowContext, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, WorkflowError>>
        + Send
        + Sync,
>;

/// A workflow: `name` at `version`, from input `I` to output `O`.
pub struct WorkflowDefinition<I, O> {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) policy: StepPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) body: Body,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for WorkflowDefinition<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            version: self.version,
            policy: self.policy.clone(),
            timeout: self.timeout,
            body: self.body.clone(),
            _types: PhantomData,
        }
    }
}

impl<I, O> std::fmt::Debug for WorkflowDefinition<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<I, O> WorkflowDefinition<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// Version 1 of workflow `name`, running `body`.
    pub fn new<F, Fut>(name: impl Into<String>, body: F) -> Self
    where
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, WorkflowError>> + Send + 'static,
    {
        let body: Body =
            Arc::new(move |ctx, input: Vec<u8>| match serde_json::from_slice(&input) {
                Ok(input) => body(ctx, input)
                    .map(|out| {
                        let out = out?;
                        serde_json::to_vec(&out).map_err(|e| WorkflowError::Codec(e.to_string()))
                    })
                    .boxed(),
                Err(e) => {
                    let error = WorkflowError::Codec(format!("input does not decode: {e}"));
                    async move { Err(error) }.boxed()
                }
            });
        Self {
            name: name.into(),
            version: 1,
            policy: StepPolicy::default(),
            timeout: None,
            body,
            _types: PhantomData,
        }
    }

    /// This definition as `version` (several versions of one name can be registered; a run stays
    /// on the version it started with).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The retry policy of steps that do not set their own.
    pub fn step_policy(mut self, policy: StepPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Fail runs that have not finished `timeout` after their first drive: they stop at their
    /// next step, sleep or wait (a suspended run wakes for it), run their compensations, and end
    /// failed with a timeout error.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The workflow name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of this version's drive jobs: workers claim them by it, so a worker without this
    /// version never drives its runs.
    pub fn drive_job_name(&self) -> String {
        drive_job_name(&self.name, self.version)
    }
}

/// Attempts of a drive job: spent only when a drive crashes or loses its lease (a suspension
/// gives its attempt back), so a run whose drive kills its worker this often ends failed.
pub const DRIVE_ATTEMPTS: u32 = 10;

/// The drive job name of `name` at `version`.
pub(crate) fn drive_job_name(name: &str, version: u32) -> String {
    format!("workflow:{name}:v{version}")
}

/// The first drive job of `run`.
pub(crate) fn drive_job(run: &NewRun, scope: Scope) -> Result<NewJob, Error> {
    let definition =
        JobDefinition::new(drive_job_name(&run.name, run.version), |_, _: RunId| async { Ok(()) })
            .max_attempts(DRIVE_ATTEMPTS);
    let options = EnqueueOptions::new().scope(scope);
    definition.new_job(&run.id, options)
}

/// What hooks are told of the new run `run`.
pub(crate) fn run_info_of(run: &NewRun) -> RunInfo {
    RunInfo { id: run.id, name: run.name.clone(), version: run.version, scope: run.scope.clone() }
}
