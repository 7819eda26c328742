//! Progress reports a handler makes ([`JobContext::progress`](crate::JobContext::progress)),
//! kept here, latest per job, until the worker writes them (see the worker's heartbeat).

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_core::{JobId, LeaseRef, ProgressUpdate};
use parking_lot::Mutex;

/// The reports not yet written, latest per job.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgressSink {
    pending: Arc<Mutex<HashMap<JobId, ProgressUpdate>>>,
}

impl ProgressSink {
    /// Keep `progress` as the latest report of the attempt under `lease`.
    pub(crate) fn report(&self, lease: LeaseRef, progress: serde_json::Value) {
        self.pending.lock().insert(lease.job_id, ProgressUpdate { lease, progress });
    }

    /// The latest report waiting for `job`, if any (tests of handlers read it).
    pub(crate) fn latest(&self, job: JobId) -> Option<serde_json::Value> {
        self.pending.lock().get(&job).map(|u| u.progress.clone())
    }

    pub(crate) fn take_all(&self) -> Vec<ProgressUpdate> {
        self.pending.lock().drain().map(|(_, update)| update).collect()
    }

    pub(crate) fn take(&self, job: JobId) -> Option<ProgressUpdate> {
        self.pending.lock().remove(&job)
    }
}
