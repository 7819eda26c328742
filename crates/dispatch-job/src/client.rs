//! Enqueueing and managing jobs without running them: [`JobClient`].

use std::sync::Arc;

use dispatch_core::{
    DlqId, Enqueued, Event, JobCancel, JobId, JobInfo, JobStore, NewJob, Replay, Result,
};
use tokio::sync::Notify;

use crate::definition::{EnqueueOptions, JobDefinition, JobInput};
use crate::hooks::HookBus;

/// Enqueues typed jobs into a store, wakes the local worker and emits `JobEnqueued` hooks.
/// Cheap to clone. A [`Worker`](crate::Worker) hands out one that shares its wake-up and hooks.
#[derive(Clone)]
pub struct JobClient {
    store: Arc<dyn JobStore>,
    wake: Arc<Notify>,
    hooks: HookBus,
}

impl std::fmt::Debug for JobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobClient").field("hooks", &self.hooks.is_enabled()).finish_non_exhaustive()
    }
}

impl JobClient {
    /// A client with no local worker to wake and no hooks.
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        Self::with_parts(store, Arc::new(Notify::new()), HookBus::disabled())
    }

    pub(crate) fn with_parts(store: Arc<dyn JobStore>, wake: Arc<Notify>, hooks: HookBus) -> Self {
        Self { store, wake, hooks }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// Enqueue `input` for `definition` with its defaults.
    pub async fn enqueue<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
    ) -> Result<Enqueued> {
        self.enqueue_with(definition, input, EnqueueOptions::new()).await
    }

    /// Enqueue `input` for `definition` with per-call overrides.
    pub async fn enqueue_with<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        input: I,
        options: EnqueueOptions,
    ) -> Result<Enqueued> {
        let job = definition.new_job(&input, options)?;
        let mut results = self.enqueue_jobs(vec![job]).await?;
        results.pop().ok_or_else(|| dispatch_core::Error::internal("store returned no result"))
    }

    /// Enqueue many inputs of one definition in one store call, all with `options` (an ID set in
    /// `options` is ignored: each job gets its own).
    pub async fn enqueue_many<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I>,
        options: EnqueueOptions,
    ) -> Result<Vec<Enqueued>> {
        let jobs = inputs
            .into_iter()
            .map(|input| {
                let mut job = definition.new_job(&input, options.clone())?;
                job.id = JobId::new();
                Ok(job)
            })
            .collect::<Result<Vec<_>>>()?;
        self.enqueue_jobs(jobs).await
    }

    /// Enqueue jobs built elsewhere (for example by [`JobDefinition::new_job`]) in one store call.
    pub async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let infos: Vec<JobInfo> =
            if self.hooks.is_enabled() { jobs.iter().map(info_of).collect() } else { Vec::new() };
        let results = self.store.enqueue(jobs).await?;
        // Hooks before the wake-up, so the local worker's "started" rarely overtakes "enqueued".
        for (info, result) in infos.into_iter().zip(&results) {
            let job = JobInfo { id: result.id(), ..info };
            self.hooks.emit(|| Event::JobEnqueued { job, duplicate: result.is_duplicate() });
        }
        if results.iter().any(|r| !r.is_duplicate()) {
            self.wake.notify_one();
        }
        Ok(results)
    }

    /// Ask for a job to be cancelled (see [`JobStore::request_job_cancel`]).
    pub async fn cancel(&self, id: JobId) -> Result<JobCancel> {
        self.store.request_job_cancel(id).await
    }

    /// Replay a DLQ entry as a new job (at most once per entry) and wake the local worker.
    pub async fn replay(&self, id: DlqId) -> Result<Replay> {
        let replay = self.store.replay_dlq(id).await?;
        if matches!(replay, Replay::Replayed(_)) {
            self.wake.notify_one();
        }
        Ok(replay)
    }
}

fn info_of(job: &NewJob) -> JobInfo {
    JobInfo {
        id: job.id,
        name: job.name.clone(),
        queue: job.queue.clone(),
        scope: job.scope.clone(),
    }
}
