//! [`RetentionStore`] for [`MemoryStore`]: pruning by the rules of
//! [`dispatch_core::retention`], under the leader's term, in one lock per call. The memory
//! store scans its maps (it holds what fits in memory), oldest first by ID.

use async_trait::async_trait;
use dispatch_core::retention::{self, Cutoffs};
use dispatch_core::{
    JobId, Leader, PruneReport, Result, RetentionPolicy, RetentionStore, RunId, WorkerState,
};

use crate::{MemoryStore, State};

#[async_trait]
impl RetentionStore for MemoryStore {
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport> {
        let now = self.clock.now();
        let cutoffs = policy.cutoffs(now);
        let mut state = self.state.lock();
        state.cluster.fence(term, "prune", now)?;
        let mut report = PruneReport::default();
        state.prune_runs(&cutoffs, limit, &mut report);
        state.prune_jobs(&cutoffs, limit, &mut report);
        state.prune_dlq(&cutoffs, limit, &mut report);
        state.prune_events(&cutoffs, limit, &mut report);
        state.prune_workers(&cutoffs, limit, &mut report);
        Ok(report)
    }
}

impl State {
    /// Ended runs old enough, with their checkpoints and drive job.
    fn prune_runs(&mut self, cutoffs: &Cutoffs, limit: usize, report: &mut PruneReport) {
        let runs = &self.runs.runs;
        let doomed: Vec<RunId> = runs
            .values()
            .filter(|row| {
                let run = &row.run;
                let parent = run.parent.and_then(|p| runs.get(&p)).map(|p| p.run.state);
                let drive = self.jobs.get(&run.drive_job).map(|j| j.job.state);
                retention::run_prunable(cutoffs, run.state, run.finished_at, parent, drive)
            })
            .take(limit)
            .map(|row| row.run.id)
            .collect();
        report.more |= doomed.len() == limit;
        for id in doomed {
            let Some(row) = self.runs.runs.remove(&id) else { continue };
            let run = row.run;
            if let Some(key) = run.idempotency_key {
                self.runs.by_key.remove(&(run.name, key));
            }
            self.runs.by_drive.remove(&run.drive_job);
            if self.remove_job(run.drive_job) {
                report.jobs += 1;
            }
            report.runs += 1;
            report.checkpoints += row.checkpoints.len() as u64;
        }
    }

    /// Finished jobs old enough, outside their unique window and driving no stored run.
    fn prune_jobs(&mut self, cutoffs: &Cutoffs, limit: usize, report: &mut PruneReport) {
        let doomed: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, row)| {
                let drives = self.runs.by_drive.contains_key(id);
                retention::job_prunable(cutoffs, &row.job, row.unique_until, drives)
            })
            .take(limit)
            .map(|(&id, _)| id)
            .collect();
        report.more |= doomed.len() == limit;
        for id in doomed {
            if self.remove_job(id) {
                report.jobs += 1;
            }
        }
    }

    /// Remove a job that is not available or running, with its unique-key entry; whether it
    /// was there.
    fn remove_job(&mut self, id: JobId) -> bool {
        let Some(row) = self.jobs.remove(&id) else { return false };
        if let Some(key) = row.job.unique_key {
            let entry = (row.job.name, key);
            if self.unique.get(&entry) == Some(&id) {
                self.unique.remove(&entry);
            }
        }
        true
    }

    /// DLQ entries whose job died long enough ago.
    fn prune_dlq(&mut self, cutoffs: &Cutoffs, limit: usize, report: &mut PruneReport) {
        let Some(cutoff) = cutoffs.dead else { return };
        let doomed: Vec<_> = self
            .dlq
            .iter()
            .filter(|(_, entry)| entry.failed_at <= cutoff)
            .take(limit)
            .map(|(&id, _)| id)
            .collect();
        report.more |= doomed.len() == limit;
        for id in doomed {
            self.dlq.remove(&id);
            report.dlq += 1;
        }
    }

    /// Kept events past their keep-until.
    fn prune_events(&mut self, cutoffs: &Cutoffs, limit: usize, report: &mut PruneReport) {
        let kept = &mut self.runs.kept;
        let doomed: Vec<u64> = kept
            .iter()
            .filter(|(_, event)| event.keep_until <= cutoffs.now)
            .take(limit)
            .map(|(&seq, _)| seq)
            .collect();
        report.more |= doomed.len() == limit;
        for seq in doomed {
            kept.remove(&seq);
            report.events += 1;
        }
    }

    /// Gone workers last seen long enough ago.
    fn prune_workers(&mut self, cutoffs: &Cutoffs, limit: usize, report: &mut PruneReport) {
        let Some(cutoff) = cutoffs.gone_workers else { return };
        let workers = &mut self.cluster.workers;
        let doomed: Vec<_> = workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Gone && w.last_seen <= cutoff)
            .take(limit)
            .map(|(&id, _)| id)
            .collect();
        report.more |= doomed.len() == limit;
        for id in doomed {
            workers.remove(&id);
            report.workers += 1;
        }
    }
}
