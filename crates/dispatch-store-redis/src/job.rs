//! `impl JobStore`: short methods forwarding to the files that do the work; lookups.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    ClaimRequest, ClaimedJob, Enqueued, Finish, FinishResult, HeartbeatReport, Job, JobCancel,
    JobFilter, JobId, JobStore, LeaseRef, LeaseToken, ListenerState, NewJob, Page, PageRequest,
    QueueCount, RescueReport, Result, WakeupStream,
};

use crate::RedisStore;
use crate::keys::hex;
use crate::row::{Fields, job};

#[async_trait]
impl JobStore for RedisStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.enqueue_jobs(jobs).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_jobs(request).await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        self.finish_jobs(finishes).await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        self.heartbeat_leases(leases, ttl).await
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        self.cancel_job(id).await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        self.rescue_leases(limit).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.job_key(&hex(id.uuid())))).await?;
        Fields::parse(reply)?.map(job).transpose()
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        self.list_job_page(filter, page).await
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.queue_counts().await
    }

    async fn release_claim(&self, token: LeaseToken) -> Result<usize> {
        self.release_claimed(token).await
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        self.next_due_in(queues, names).await
    }

    fn wakeups(&self) -> Option<WakeupStream> {
        self.inner.wake.subscribe()
    }

    fn listener_state(&self) -> Option<ListenerState> {
        Some(self.inner.wake.state())
    }
}
