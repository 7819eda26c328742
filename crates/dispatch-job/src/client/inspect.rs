//! Looking jobs up through a [`JobClient`]: plain forwards to the store's reads. The dead
//! letter queue has its own service (`dispatch_dlq::Dlq`), which loops its bulk calls in
//! bounded batches and emits its hooks.

use dispatch_core::{Job, JobFilter, JobId, Page, PageRequest, Result};

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
}
