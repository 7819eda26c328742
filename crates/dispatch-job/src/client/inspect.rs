//! Looking jobs up and managing the DLQ through a [`JobClient`]: plain forwards to the store's
//! reads and DLQ calls.

use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, Job, JobFilter, JobId, Page, PageRequest, Replay, ReplayOptions,
    Result,
};

use super::{JobClient, JobCounts};

impl JobClient {
    /// One job by ID, `None` when the store has no such job.
    pub async fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.store.get_job(id).await
    }

    /// One page of the jobs matching `filter`, in ID order (creation order), after the page's
    /// cursor. Ask for the next page with [`PageRequest::next_of`].
    pub async fn list(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        self.store.list_jobs(filter, page).await
    }

    /// How many jobs there are per queue and state, now.
    pub async fn counts(&self) -> Result<JobCounts> {
        Ok(JobCounts::from(self.store.count_jobs().await?))
    }

    /// One page of the DLQ entries matching `filter`, in ID order (the order the jobs died).
    pub async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        self.store.list_dlq(filter, page).await
    }

    /// One DLQ entry by ID (a dead job carries its entry's ID in [`Job::dlq_id`]).
    pub async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.store.get_dlq(id).await
    }

    /// Replay a DLQ entry: enqueue its job again as a new job, at most once per entry, and wake
    /// the local worker. Fails with [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound)
    /// for an unknown entry.
    pub async fn replay(&self, id: DlqId) -> Result<Replay> {
        let replay = self.store.replay_dlq(id, &ReplayOptions::default()).await?;
        if matches!(replay, Replay::Replayed(_)) {
            self.wake.notify_one();
        }
        Ok(replay)
    }

    /// Delete the DLQ entries matching `filter` (an all-unset filter deletes every entry), in
    /// batches of [`DLQ_BATCH`](dispatch_core::dlq::DLQ_BATCH); answers how many were deleted.
    pub async fn purge_dlq(&self, filter: &DlqFilter) -> Result<u64> {
        let batch = dispatch_core::dlq::DLQ_BATCH;
        let mut purged = 0;
        loop {
            let deleted = self.store.purge_dlq(filter, batch).await?;
            purged += deleted;
            if deleted < batch as u64 {
                return Ok(purged);
            }
        }
    }
}
