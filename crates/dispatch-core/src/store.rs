//! The aggregate [`Store`]: what the job runtime holds.

use std::sync::Arc;

use crate::dlq::DlqStore;
use crate::job::JobStore;

/// Everything the job runtime needs from a store: jobs and their dead letter queue. Implemented
/// for every type that implements both traits.
pub trait Store: JobStore + DlqStore {}

impl<T: JobStore + DlqStore> Store for T {}

/// A store as the engine holds it.
pub type DynStore = Arc<dyn Store>;
