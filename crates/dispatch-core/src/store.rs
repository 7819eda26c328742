//! The aggregate [`Store`]: what the job runtime holds.

use std::sync::Arc;

use crate::dlq::DlqStore;
use crate::job::JobStore;
use crate::workflow::WorkflowStore;

/// Everything the engine needs from a store: jobs, their dead letter queue, and workflow runs.
/// Implemented for every type that implements the three traits.
pub trait Store: JobStore + DlqStore + WorkflowStore {}

impl<T: JobStore + DlqStore + WorkflowStore> Store for T {}

/// A store as the engine holds it.
pub type DynStore = Arc<dyn Store>;
