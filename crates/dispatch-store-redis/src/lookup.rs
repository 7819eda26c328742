//! Listings and counts (being built).

use std::time::Duration;

use dispatch_core::{Job, JobFilter, JobId, Page, PageRequest, QueueCount, Result};

use crate::RedisStore;
use crate::error::internal;

impl RedisStore {
    pub(crate) async fn list_job_page(
        &self,
        _filter: &JobFilter,
        _page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        Err(internal("being built"))
    }

    pub(crate) async fn queue_counts(&self) -> Result<Vec<QueueCount>> {
        Err(internal("being built"))
    }

    pub(crate) async fn next_due_in(
        &self,
        _queues: &[String],
        _names: &[String],
    ) -> Result<Option<Duration>> {
        Ok(None)
    }
}
