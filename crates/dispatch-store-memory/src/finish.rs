//! Finishes and rescues for [`MemoryStore`](crate::MemoryStore): the transitions out of
//! `running`, decided by [`dispatch_core::transition`] and applied to the store's indexes here
//! (lease expiries, the claim index, the DLQ and the run a dead drive job fails).

use dispatch_core::{
    DlqEntry, Finish, FinishResult, JobId, Lease, RescueReport, Timestamp, transition,
};

use crate::State;

impl State {
    /// Apply one finish.
    pub(crate) fn finish_one(&mut self, finish: &Finish, now: Timestamp) -> FinishResult {
        let id = finish.lease.job_id;
        let Some(row) = self.jobs.get_mut(&id) else { return FinishResult::LeaseLost };
        let lease = row.job.lease;
        let done = transition::finish(&mut row.job, &mut row.last_finish, finish, now);
        if done.applied() {
            self.left_running(id, lease, done.dlq, now);
        }
        done.result
    }

    /// Rescue up to `limit` jobs whose leases expired by `now`, oldest expiry first.
    pub(crate) fn rescue_expired(&mut self, limit: usize, now: Timestamp) -> RescueReport {
        let expired: Vec<JobId> = self
            .expiries
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .take(limit)
            .map(|&(_, id)| id)
            .collect();
        let mut report = RescueReport::default();
        for id in expired {
            let Some(row) = self.jobs.get_mut(&id) else { continue };
            let lease = row.job.lease;
            let dlq = transition::rescue(&mut row.job, now, &mut report);
            self.left_running(id, lease, dlq, now);
        }
        report
    }

    /// Bring the indexes in line with job `id`, which a transition just moved out of running
    /// under `lease`: its expiry dropped, the claim index entry when it is available again, and
    /// its DLQ entry written when it died, in the same step.
    pub(crate) fn left_running(
        &mut self,
        id: JobId,
        lease: Option<Lease>,
        dlq: Option<DlqEntry>,
        now: Timestamp,
    ) {
        if let Some(lease) = lease {
            self.expiries.remove(&(lease.expires_at, id));
        }
        self.release_gates(id);
        self.index(id);
        if let Some(entry) = dlq {
            self.write_dead(entry, now);
        }
    }

    /// Record the death of a job: its DLQ entry and, when it drives a workflow run, the
    /// failure of that run.
    fn write_dead(&mut self, entry: DlqEntry, now: Timestamp) {
        self.runs.fail_driven_by(entry.job_id, transition::driven_run_error(&entry), now);
        self.dlq.insert(entry.id, entry);
    }
}
