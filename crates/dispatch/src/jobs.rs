//! The dispatcher's job calls: enqueue, wait for outcomes, inspect, cancel, and reading the
//! dead letter queue. Job calls forward to the dispatcher's
//! [`JobClient`](dispatch_job::JobClient), which shares the worker's hooks and wake-ups and
//! answers waits for jobs this worker ends at once; replaying and purging dead jobs is
//! [`Dispatcher::dlq`]'s.

use std::time::Duration;

use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, Enqueued, Job, JobCancel, JobFilter, JobId, Page, PageRequest,
    Result,
};
use dispatch_job::{EnqueueOptions, JobCounts, JobDefinition, JobInput, JobWaitError};

use crate::Dispatcher;

impl Dispatcher {
    /// Enqueue `input` for `definition` with its defaults.
    pub async fn enqueue<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
    ) -> Result<Enqueued> {
        self.client.enqueue(definition, input).await
    }

    /// Enqueue `input` for `definition` with per-call overrides (delay, priority, unique key…).
    pub async fn enqueue_with<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
        options: EnqueueOptions,
    ) -> Result<Enqueued> {
        self.client.enqueue_with(definition, input, options).await
    }

    /// Enqueue many inputs of one definition with its defaults, in one store call.
    pub async fn enqueue_many<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I>,
    ) -> Result<Vec<Enqueued>> {
        self.client.enqueue_many(definition, inputs).await
    }

    /// Enqueue many inputs of one definition, all with `options`, in one store call.
    pub async fn enqueue_many_with<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I>,
        options: EnqueueOptions,
    ) -> Result<Vec<Enqueued>> {
        self.client.enqueue_many_with(definition, inputs, options).await
    }

    /// Wait until job `id` ends: its record when it completed, else a [`JobWaitError`] that
    /// says why not (dead, cancelled, still running at the timeout, no such job). See
    /// [`JobClient::wait`](dispatch_job::JobClient::wait).
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Job, JobWaitError> {
        self.client.wait(id, timeout).await
    }

    /// Wait until every job of `ids` ends, whatever its final state; their records in the
    /// order asked. Fails on the timeout (for all of them together) or an unknown ID.
    pub async fn wait_all(
        &self,
        ids: impl IntoIterator<Item = JobId>,
        timeout: Duration,
    ) -> Result<Vec<Job>, JobWaitError> {
        self.client.wait_all(ids, timeout).await
    }

    /// One job by ID.
    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.client.get(id).await
    }

    /// Jobs matching `filter` (state, queue, name), a page at a time in creation order.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        self.client.list(filter, page).await
    }

    /// How many jobs there are, per queue and state, with sums.
    pub async fn counts(&self) -> Result<JobCounts> {
        self.client.counts().await
    }

    /// Ask for a job to be cancelled: at once when it waits, through its worker when it runs.
    pub async fn cancel(&self, id: JobId) -> Result<JobCancel> {
        self.client.cancel(id).await
    }

    /// Dead letter queue entries matching `filter`, a page at a time (a shorthand of
    /// `dlq().list`; replays, counts and purges are on the DLQ service).
    pub async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        self.services.jobs.list_dlq(filter, page).await
    }

    /// One dead letter queue entry: the job's payload and every attempt's error (a shorthand
    /// of `dlq().get`).
    pub async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.services.jobs.get_dlq(id).await
    }

    /// Flow control at run time: queue configs (fleet-wide limits, fairness), pause and resume
    /// of a queue or one of its job names; changes apply at the next claim of every worker.
    /// Pauses and resumes reach the dispatcher's hooks
    /// ([`Event::QueuePaused`](dispatch_core::Event::QueuePaused),
    /// [`Event::QueueResumed`](dispatch_core::Event::QueueResumed)). Fails with
    /// `InvalidInput` on a store that keeps no flow control.
    pub fn queues(&self) -> Result<dispatch_job::Queues> {
        self.services.queues()
    }

    /// The dead letter queue: list, count, replay and purge dead jobs; its replays and purges
    /// reach the dispatcher's hooks ([`Event::DlqReplayed`](dispatch_core::Event::DlqReplayed),
    /// [`Event::DlqPurged`](dispatch_core::Event::DlqPurged)).
    #[cfg(feature = "dlq")]
    pub fn dlq(&self) -> dispatch_dlq::Dlq {
        dispatch_dlq::Dlq::new(self.services.jobs.clone())
            .hooks(self.services.hooks.clone())
            .clock(self.services.clock.clone())
    }
}
