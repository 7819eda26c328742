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
