//! Rewinding a run of [`MemoryStore`](crate::MemoryStore) to a checkpoint
//! ([`WorkflowStore::rewind_run`]) and moving it to another version
//! ([`WorkflowStore::migrate_run`]): the run made running again and its drive job re-armed, in
//! one step under the store's lock.

#[cfg(doc)]
use dispatch_core::WorkflowStore;
use dispatch_core::{Error, ErrorKind, JobId, JobState, Result, RunId, RunState, Timestamp};

use crate::State;
use crate::run::reopen;

impl State {
    /// Rewind run `id` to its checkpoint `key`; the queue of its re-armed drive job, to wake.
    pub(crate) fn rewind(
        &mut self,
        id: RunId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<String>> {
        let drive = self.rearmable(id, false)?;
        let row = self.runs.get_mut(id)?;
        let at = row
            .checkpoints
            .iter()
            .position(|c| c.key == key)
            .ok_or_else(|| Error::not_found(format!("run {id} has no checkpoint {key:?}")))?;
        row.checkpoints.truncate(at + 1);
        reopen(&mut row.run, now);
        self.runs.waits.retain(|_, w| w.run != id);
        Ok(self.rearm(drive, None, now))
    }

    /// Move run `id` to `version`, its drive job renamed; the drive job's queue, to wake.
    pub(crate) fn migrate(
        &mut self,
        id: RunId,
        version: u32,
        drive_job_name: &str,
        now: Timestamp,
    ) -> Result<Option<String>> {
        let drive = self.rearmable(id, true)?;
        let row = self.runs.get_mut(id)?;
        row.run.version = version;
        row.run.updated_at = now;
        if row.run.state.is_final() {
            reopen(&mut row.run, now);
        }
        // A waiting drive job keeps its wake time; an ended one is due now.
        let run_at = self
            .jobs
            .get(&drive)
            .filter(|job| job.job.state == JobState::Available)
            .map_or(now, |job| job.job.run_at);
        Ok(self.rearm(drive, Some(drive_job_name), run_at))
    }

    /// The drive job of run `id`, when no drive holds it (and, for a migration, the run has not
    /// completed).
    fn rearmable(&self, id: RunId, migrating: bool) -> Result<JobId> {
        let row =
            self.runs.runs.get(&id).ok_or_else(|| Error::not_found(format!("no run {id}")))?;
        let drive = row.run.drive_job;
        if self.jobs.get(&drive).is_some_and(|job| job.job.state == JobState::Running) {
            return Err(Error::new(ErrorKind::Conflict, format!("a drive holds run {id}")));
        }
        if migrating && row.run.state == RunState::Completed {
            return Err(Error::new(ErrorKind::Conflict, format!("run {id} has completed")));
        }
        Ok(drive)
    }

    /// Re-arm drive job `id` (renamed to `name` when given): available at `run_at`, attempts
    /// reset, no lease. Its queue, for the wake-up.
    fn rearm(&mut self, id: JobId, name: Option<&str>, run_at: Timestamp) -> Option<String> {
        self.unindex(id);
        self.clear_lease(id);
        let row = self.jobs.get_mut(&id)?;
        row.job.attempt = 0;
        row.job.finished_at = None;
        if let Some(name) = name {
            row.job.name = name.to_owned();
        }
        let queue = row.job.queue.clone();
        self.make_available(id, run_at);
        Some(queue)
    }
}
