//! Claims for [`MemoryStore`](crate::MemoryStore): the best due jobs from the claim index,
//! leased, and how long until the next one is due.

use std::time::Duration;

use dispatch_core::{ClaimRequest, ClaimedJob, JobId, Lease, Timestamp, transition};

use crate::State;

impl State {
    /// Lease up to `request.limit` due jobs, in claim order.
    /// A queue with a flow config makes the whole claim gated (see `flow.rs`); its jobs are
    /// counted in their gates.
    pub(crate) fn claim(&mut self, request: &ClaimRequest, now: Timestamp) -> Vec<ClaimedJob> {
        let gated = self.gated(&request.queues);
        let keys = if gated {
            self.claim_gated(request, now)
        } else {
            self.available.best_due(&request.queues, &request.names, now, request.limit)
        };
        let expires_at = now + request.lease_ttl;
        let claimed: Vec<ClaimedJob> =
            keys.into_iter().filter_map(|key| self.claim_one(key.3, request, expires_at)).collect();
        if gated {
            claimed.iter().for_each(|c| self.mark_counted(c.job.id));
        }
        claimed
    }

    fn claim_one(
        &mut self,
        id: JobId,
        request: &ClaimRequest,
        expires_at: Timestamp,
    ) -> Option<ClaimedJob> {
        self.unindex(id);
        let row = self.jobs.get_mut(&id)?;
        let lease = Lease { owner: request.worker, token: request.token, expires_at };
        transition::claim(&mut row.job, lease);
        self.expiries.insert((expires_at, id));
        Some(ClaimedJob { job: row.job.clone(), lease })
    }

    /// How long until the earliest available job of `queues` and `names` is due.
    pub(crate) fn next_due(
        &self,
        queues: &[String],
        names: &[String],
        now: Timestamp,
    ) -> Option<Duration> {
        let names: Vec<String> = names.to_vec();
        let earliest = queues
            .iter()
            .filter_map(|queue| {
                let open: Vec<String> =
                    names.iter().filter(|n| self.flow_claimable(queue, n)).cloned().collect();
                self.available.earliest(std::slice::from_ref(queue), &open)
            })
            .min();
        earliest.map(|run_at| run_at.duration_since(now))
    }
}
