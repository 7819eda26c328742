//! Child workflows: a run started by a workflow, awaited durably (the parent suspends, holding no
//! worker) or left to run on its own.
//!
//! A child call is checkpointed by its own key (`k:{child workflow name}#{n}`, so each call in a
//! loop is its own child), and started idempotently (key `{parent}/{checkpoint key}`), so a crash
//! between the start and its checkpoint starts nothing twice. When a child ends, its drive
//! publishes a `dispatch.run.ended` event correlated by the child's ID; the awaiting parent waits
//! for it, and looks the child up every minute in case the event was lost to a crash.

use std::time::Duration;

use dispatch_core::{NewRun, RunEnd, RunId, RunState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::WorkflowContext;
use crate::definition::{WorkflowDefinition, drive_job, run_info_of};
use crate::error::WorkflowError;
use crate::record::{self, Kind};

/// The event a child's end is published as.
pub(crate) const RUN_ENDED: &str = "dispatch.run.ended";
/// How long an awaiting parent waits for the event before looking the child up.
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// How a child ended, as its parent learns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunEnded {
    state: RunState,
    /// The child's output (JSON, as its workflow encoded it).
    output: Option<serde_json::Value>,
    error: Option<String>,
}

impl RunEnded {
    pub(crate) fn of(end: &RunEnd) -> Self {
        let (output, error) = match end {
            RunEnd::Completed(output) => (Some(json(output)), None),
            RunEnd::Failed(error) | RunEnd::Cancelled(error) => (None, Some(error.clone())),
        };
        Self { state: end.state(), output, error }
    }

    fn output<O: DeserializeOwned>(self, child: RunId) -> Result<O, WorkflowError> {
        match (self.state, self.output) {
            (RunState::Completed, Some(output)) => serde_json::from_value(output)
                .map_err(|e| WorkflowError::Codec(format!("child {child} output: {e}"))),
            (state, _) => Err(WorkflowError::Failed(format!(
                "child run {child} ended {state}: {}",
                self.error.unwrap_or_default()
            ))),
        }
    }
}

/// A run output (JSON bytes, as workflows encode them) as a JSON value.
fn json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).unwrap_or(serde_json::Value::Null)
}

impl WorkflowContext {
    /// Start a child run of `definition` and return its ID without waiting for it. The child
    /// shares this run's tenant scope.
    pub async fn start_child<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        input: &I,
    ) -> Result<RunId, WorkflowError>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let key = self.next_key(Kind::Child, definition.name());
        let drive = self.drive().clone();
        if let Some(data) = drive.checkpoint(&key) {
            return serde_json::from_slice(&data)
                .map_err(|e| WorkflowError::Codec(format!("checkpoint {key}: {e}")));
        }
        drive.check_stop().await?;
        let input = serde_json::to_vec(input)
            .map_err(|e| WorkflowError::Codec(format!("child input: {e}")))?;
        let run = NewRun {
            id: RunId::new(),
            name: definition.name.clone(),
            version: definition.version,
            input,
            scope: drive.run.scope.clone(),
            idempotency_key: Some(format!("{}/{key}", drive.run.id)),
            parent: Some(drive.run.id),
        };
        let info = run_info_of(&run);
        let job = drive_job(&run, run.scope.clone())
            .map_err(|e| WorkflowError::Failed(format!("child drive job: {e}")))?;
        let active = drive.begin();
        let started = drive.store.start_run(run, job).await;
        drop(active);
        let child = match started {
            Ok(started) => started.id(),
            Err(error) => {
                drive.fail(error).await;
                unreachable!("a halted drive never resumes this future")
            }
        };
        drive.emit(|_| dispatch_core::Event::RunStarted { run: info });
        drive.write(key, record::encode(&child)).await;
        Ok(child)
    }

    /// Wait durably for child run `child` to end: its output, or an error when it failed.
    pub async fn join_child<O: DeserializeOwned>(&self, child: RunId) -> Result<O, WorkflowError> {
        let drive = self.drive().clone();
        let key_name = format!("child:{child}");
        loop {
            let active = drive.begin();
            let run = drive.store.get_run(child).await;
            drop(active);
            match run {
                Ok(Some(run)) if run.state.is_final() => {
                    let output = run.output.as_deref().map(json);
                    let ended = RunEnded { state: run.state, output, error: run.error };
                    return ended.output(child);
                }
                Ok(_) => {}
                Err(error) => {
                    drive.fail(error).await;
                    unreachable!("a halted drive never resumes this future")
                }
            }
            let correlation = child.to_string();
            let ended: Option<RunEnded> = self
                .wait_keyed(&key_name, RUN_ENDED, &correlation, LOOK_AGAIN, Some(child))
                .await?;
            if let Some(ended) = ended {
                return ended.output(child);
            }
        }
    }

    /// Start a child run and wait for its output; a failed child fails this call with its error.
    pub async fn child<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        input: &I,
    ) -> Result<O, WorkflowError>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let child = self.start_child(definition, input).await?;
        self.join_child(child).await
    }

    /// One child per input, all started before any is awaited; outputs in input order. The first
    /// failed child (in input order) fails the call.
    pub async fn fan_out<I, O>(
        &self,
        definition: &WorkflowDefinition<I, O>,
        inputs: &[I],
    ) -> Result<Vec<O>, WorkflowError>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut children = Vec::with_capacity(inputs.len());
        for input in inputs {
            children.push(self.start_child(definition, input).await?);
        }
        let mut outputs = Vec::with_capacity(children.len());
        for child in children {
            outputs.push(self.join_child(child).await?);
        }
        Ok(outputs)
    }
}
