//! [`RunWaitError`]: why waiting for a run's output ([`Workflows::wait_for_output`]) gave no
//! output, in one type a caller matches on, or passes on with `?` as a
//! [`dispatch_core::Error`].
//!
//! [`Workflows::wait_for_output`]: crate::Workflows::wait_for_output

use std::time::Duration;

use dispatch_core::{Error, ErrorKind, Run, RunId, RunState};
use serde::de::DeserializeOwned;

/// Why [`Workflows::wait_for_output`](crate::Workflows::wait_for_output) has no output for the
/// run. The variants that saw the run carry it, so the caller can read its error, its
/// checkpoints' run ID, or what it still waits for ([`Run::waiting`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunWaitError {
    /// The run ended failed.
    #[error("run {} failed: {error}", run.id)]
    Failed {
        /// Its error.
        error: String,
        /// The run as it ended.
        run: Box<Run>,
    },
    /// The run ended cancelled.
    #[error("run {} was cancelled: {reason}", run.id)]
    Cancelled {
        /// Why.
        reason: String,
        /// The run as it ended.
        run: Box<Run>,
    },
    /// The run did not end within the timeout; it goes on.
    #[error("run {} did not end within {timeout:?} (it is {})", run.id, run.state)]
    TimedOut {
        /// The timeout given.
        timeout: Duration,
        /// The run as last read: its state, and what it waits for when suspended.
        run: Box<Run>,
    },
    /// No run has this ID.
    #[error("no run {0}")]
    NotFound(RunId),
    /// The run completed, but its output does not decode as the type asked for.
    #[error("the output of run {} does not decode: {source}", run.id)]
    Decode {
        /// The source of the decoding error.
        #[source]
        source: serde_json::Error,
        /// The completed run.
        run: Box<Run>,
    },
    /// A store call failed.
    #[error("could not read the run: {0}")]
    Store(#[source] Error),
}

impl RunWaitError {
    /// The run, when the wait saw it.
    pub fn run(&self) -> Option<&Run> {
        match self {
            Self::Failed { run, .. }
            | Self::Cancelled { run, .. }
            | Self::TimedOut { run, .. }
            | Self::Decode { run, .. } => Some(run),
            Self::NotFound(_) | Self::Store(_) => None,
        }
    }

    /// The kind of the [`dispatch_core::Error`] it converts into: a failed or cancelled run is
    /// `Conflict` (the run's state rules out an output), a wait that ran out `Timeout`, and a
    /// store failure keeps its own kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Failed { .. } | Self::Cancelled { .. } => ErrorKind::Conflict,
            Self::TimedOut { .. } => ErrorKind::Timeout,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Decode { .. } => ErrorKind::Codec,
            Self::Store(error) => error.kind(),
        }
    }
}

/// A store failure is passed on as it is; every other reason becomes an error of its
/// [`kind`](RunWaitError::kind) with the `RunWaitError` as its source (downcast it to get the
/// run back).
impl From<RunWaitError> for Error {
    fn from(error: RunWaitError) -> Self {
        match error {
            RunWaitError::Store(error) => error,
            other => Error::new(other.kind(), other.to_string()).with_source(other),
        }
    }
}

/// The output of `run` once it has ended: decoded when it completed, else why there is none.
pub(crate) fn output_of<O: DeserializeOwned>(run: Run) -> Result<O, RunWaitError> {
    let run = Box::new(run);
    match run.state {
        RunState::Completed => {
            let output = run.output.as_deref().unwrap_or_default();
            serde_json::from_slice(output).map_err(|source| RunWaitError::Decode { source, run })
        }
        RunState::Cancelled => {
            Err(RunWaitError::Cancelled { reason: run.error.clone().unwrap_or_default(), run })
        }
        _ => Err(RunWaitError::Failed { error: run.error.clone().unwrap_or_default(), run }),
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::{JobId, Scope, Timestamp};

    use super::*;

    fn ended(state: RunState, output: Option<&str>, error: Option<&str>) -> Run {
        Run {
            id: RunId::new(),
            name: "order".into(),
            version: 1,
            state,
            input: b"7".to_vec(),
            output: output.map(|o| o.as_bytes().to_vec()),
            error: error.map(str::to_owned),
            scope: Scope::default(),
            idempotency_key: None,
            parent: None,
            drive_job: JobId::new(),
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            finished_at: Some(Timestamp::EPOCH),
            cancel_requested: None,
            waiting: Vec::new(),
        }
    }

    #[test]
    fn an_ended_run_answers_its_output_or_why_there_is_none() {
        assert_eq!(output_of::<u32>(ended(RunState::Completed, Some("5"), None)).unwrap(), 5);
        let failed = output_of::<u32>(ended(RunState::Failed, None, Some("boom")));
        assert!(matches!(&failed, Err(RunWaitError::Failed { error, .. }) if error == "boom"));
        let cancelled = output_of::<u32>(ended(RunState::Cancelled, None, Some("enough")));
        assert!(
            matches!(&cancelled, Err(RunWaitError::Cancelled { reason, .. }) if reason == "enough")
        );
        let garbled = output_of::<u32>(ended(RunState::Completed, Some("\"five\""), None));
        assert_eq!(garbled.unwrap_err().kind(), ErrorKind::Codec);
    }

    #[test]
    fn it_converts_into_a_dispatch_error_that_keeps_the_run() {
        let run = ended(RunState::Failed, None, Some("boom"));
        let id = run.id;
        let error = Error::from(output_of::<u32>(run).unwrap_err());
        assert_eq!(error.kind(), ErrorKind::Conflict);
        let source = std::error::Error::source(&error).expect("the wait error");
        let wait = source.downcast_ref::<RunWaitError>().expect("a RunWaitError");
        assert_eq!(wait.run().map(|r| r.id), Some(id));

        let store = Error::unavailable("down");
        let error = Error::from(RunWaitError::Store(store));
        assert_eq!((error.kind(), error.message()), (ErrorKind::Unavailable, "down"));
        assert_eq!(Error::from(RunWaitError::NotFound(id)).kind(), ErrorKind::NotFound);
    }
}
