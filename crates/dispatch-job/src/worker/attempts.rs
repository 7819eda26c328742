//! The attempts a worker has in flight, each known by its lease.
//!
//! An attempt is tracked from its claim until its finish is recorded by the store (or its lease is
//! known to be lost): the heartbeat renews exactly these leases. Every change names the lease it
//! is about, and applies only while that lease is still the one tracked for its job: the cleanup
//! of an earlier attempt of the same job (its finish written, its lease rescued) can never touch a
//! later one. There is at most one attempt per job, because a store only leases a job anew once
//! the earlier lease is over (finished, or expired and rescued); so a new claim of a job whose
//! earlier attempt is still tracked drops that earlier attempt as lost.

use std::collections::HashMap;

use dispatch_core::{HeartbeatReport, JobId, LeaseRef};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::context::{CancelReason, CancelToken};

/// One attempt in flight.
struct InFlight {
    lease: LeaseRef,
    /// Fired with a reason; aborted (the handler's future dropped) when the lease is lost or
    /// shutdown ran out of time.
    cancel: CancelToken,
    /// When the lease expires at the latest, as far as this worker knows: measured from before
    /// the call that wrote it (claim or heartbeat), so never later than the store's expiry.
    expires: Instant,
}

/// The attempts in flight, by lease.
#[derive(Default)]
pub(crate) struct Attempts {
    by_job: Mutex<HashMap<JobId, InFlight>>,
}

impl Attempts {
    /// Track a new attempt under `lease`, which the store wrote no earlier than `expires`
    /// minus the lease's time to live.
    pub(crate) fn begin(&self, lease: LeaseRef, cancel: CancelToken, expires: Instant) {
        let earlier = self.by_job.lock().insert(lease.job_id, InFlight { lease, cancel, expires });
        if let Some(earlier) = earlier.filter(|e| e.lease != lease) {
            tracing::info!(job.id = %lease.job_id, "claimed again; the earlier attempt's lease is gone");
            earlier.cancel.abort(CancelReason::LeaseLost);
        }
    }

    /// Stop tracking the attempt under `lease` (its finish is recorded, or it can not be). Does
    /// nothing when a later attempt of the job is tracked.
    pub(crate) fn end(&self, lease: LeaseRef) {
        let mut by_job = self.by_job.lock();
        if by_job.get(&lease.job_id).is_some_and(|f| f.lease == lease) {
            by_job.remove(&lease.job_id);
        }
    }

    /// When `lease` expires at the latest, while it is tracked.
    pub(crate) fn expires(&self, lease: LeaseRef) -> Option<Instant> {
        self.by_job.lock().get(&lease.job_id).filter(|f| f.lease == lease).map(|f| f.expires)
    }

    /// Every tracked lease.
    pub(crate) fn leases(&self) -> Vec<LeaseRef> {
        self.by_job.lock().values().map(|f| f.lease).collect()
    }

    /// How many attempts are tracked.
    pub(crate) fn len(&self) -> usize {
        self.by_job.lock().len()
    }

    /// Apply a heartbeat's report about `sent` (renewed no earlier than `expires` minus the
    /// time to live): renewed leases get their new expiry, lost ones are dropped and their
    /// handlers aborted, cancel requests fire tokens. A report about a lease that is no longer
    /// tracked (the attempt ended, or the job was claimed again meanwhile) changes nothing.
    pub(crate) fn apply_heartbeat(
        &self,
        sent: &[LeaseRef],
        report: &HeartbeatReport,
        expires: Instant,
    ) {
        let sent: HashMap<JobId, LeaseRef> = sent.iter().map(|l| (l.job_id, *l)).collect();
        self.renew(&sent, &report.renewed, expires);
        for id in &report.cancel_requested {
            self.with(&sent, id, |f| f.cancel.cancel(CancelReason::CancelRequested));
        }
        for id in &report.lost {
            if let Some(lost) = self.take(&sent, id) {
                tracing::warn!(job.id = %id, "lease lost; dropping the attempt");
                lost.cancel.abort(CancelReason::LeaseLost);
            }
        }
    }

    fn renew(&self, sent: &HashMap<JobId, LeaseRef>, renewed: &[JobId], expires: Instant) {
        for id in renewed {
            self.with(sent, id, |f| f.expires = f.expires.max(expires));
        }
    }

    /// Run `change` on the attempt of `id` if it is still under the lease that was sent.
    fn with(
        &self,
        sent: &HashMap<JobId, LeaseRef>,
        id: &JobId,
        change: impl FnOnce(&mut InFlight),
    ) {
        let Some(lease) = sent.get(id) else { return };
        if let Some(in_flight) = self.by_job.lock().get_mut(id).filter(|f| f.lease == *lease) {
            change(in_flight);
        }
    }

    /// Remove the attempt of `id` if it is still under the lease that was sent.
    fn take(&self, sent: &HashMap<JobId, LeaseRef>, id: &JobId) -> Option<InFlight> {
        let lease = sent.get(id)?;
        let mut by_job = self.by_job.lock();
        by_job.get(id).is_some_and(|f| f.lease == *lease).then(|| by_job.remove(id)).flatten()
    }

    /// Fire every attempt's token with `reason` and drop its handler's future.
    pub(crate) fn abort_all(&self, reason: CancelReason) {
        for in_flight in self.by_job.lock().values() {
            in_flight.cancel.abort(reason);
        }
    }

    /// Stop tracking everything; returns the leases that were tracked.
    pub(crate) fn take_all(&self) -> Vec<LeaseRef> {
        self.by_job.lock().drain().map(|(_, f)| f.lease).collect()
    }
}
