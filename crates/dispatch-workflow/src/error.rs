//! Errors of workflow code and of steps.

use std::fmt;

/// Why a step attempt failed. Any `std::error::Error` converts into a retryable one with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    message: String,
    permanent: bool,
}

impl StepError {
    /// A failure worth another attempt (while the step's policy allows).
    pub fn retry(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false }
    }

    /// A failure no retry can fix: the step fails at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether it is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(error: E) -> Self {
        Self::retry(error.to_string())
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why workflow code failed: the run ends failed with this error's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowError {
    /// A step ran out of attempts (or failed permanently).
    Step {
        /// The step's checkpoint key.
        key: String,
        /// Its last error.
        error: String,
    },
    /// The input, an output or a step result could not be encoded or decoded.
    Codec(String),
    /// The workflow code gave up with this message.
    Failed(String),
    /// The run's timeout passed.
    TimedOut,
    /// The run was cancelled, for this reason.
    Cancelled(String),
}

impl WorkflowError {
    /// Fail the run with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Step { key, error } => write!(f, "step {key} failed: {error}"),
            Self::Codec(message) => write!(f, "codec: {message}"),
            Self::Failed(message) => f.write_str(message),
            Self::TimedOut => f.write_str("timeout: the run did not finish within its timeout"),
            Self::Cancelled(reason) => write!(f, "cancelled: {reason}"),
        }
    }
}

impl std::error::Error for WorkflowError {}
