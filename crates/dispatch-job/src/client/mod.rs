//! Enqueueing, inspecting and managing jobs without running them: [`JobClient`].
//!
//! A client reaches the store only through calls meant for users: enqueue, look up, count,
//! cancel and wait (the DLQ has its own service, `dispatch_dlq::Dlq`). The worker's own calls (claim, finish, heartbeat, rescue) are not
//! on it, so a client can not take over a worker's jobs by mistake.

mod counts;
mod inspect;
mod queues;
mod wait;

use std::sync::Arc;

use dispatch_core::{Enqueued, Event, JobCancel, JobId, JobInfo, JobStore, NewJob, Result};
use tokio::sync::Notify;

pub use counts::JobCounts;
pub use queues::Queues;
pub use wait::JobWaitError;

use crate::definition::{EnqueueOptions, JobDefinition, JobInput};
use crate::hooks::HookBus;
use crate::waiters::Waiters;
use wait::Poll;

/// Enqueues typed jobs, looks them up, cancels them and waits for them to end.
/// Cheap to clone.
///
/// Where a client comes from decides what else it does:
///
/// * [`Worker::client`](crate::Worker::client) (or the running handle's): enqueues wake that
///   worker at once and emit its `JobEnqueued` hooks, and
///   [`wait`](Self::wait) learns at once of the jobs that worker ends.
/// * [`JobClient::standalone`]: the store alone (see there).
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use dispatch_core::JobState;
/// # use dispatch_job::{JobContext, JobDefinition, Worker};
/// # use dispatch_store_memory::MemoryStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dispatch_core::Result<()> {
/// let greet = JobDefinition::new("greet", |_ctx: JobContext, name: String| async move {
///     println!("hello, {name}");
///     Ok(())
/// });
/// let worker = Worker::builder(Arc::new(MemoryStore::new())).register(greet.clone()).build()?;
/// let client = worker.client();
/// let handle = worker.start();
///
/// let id = client.enqueue(&greet, "ada".to_owned()).await?.id();
/// let job = client.wait(id, Duration::from_secs(30)).await?; // `Ok` only when it completed
/// assert_eq!(job.state, JobState::Completed);
/// assert_eq!(client.counts().await?.in_state(JobState::Completed), 1);
/// handle.stop().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JobClient {
    store: Arc<dyn JobStore>,
    wake: Arc<Notify>,
    hooks: HookBus,
    waiters: Waiters,
    poll: Poll,
}

impl std::fmt::Debug for JobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobClient").field("hooks", &self.hooks.is_enabled()).finish_non_exhaustive()
    }
}

impl JobClient {
    /// A client of `store` that stands alone, tied to no worker: for a process that enqueues and
    /// inspects but runs no jobs, or whose worker lives elsewhere.
    ///
    /// What it does not do, unlike a worker's [`client`](crate::Worker::client): it emits no
    /// hooks, and it wakes no worker itself. Workers of a store with push wake-ups
    /// ([`JobStore::wakeups`]) are woken by the store anyway; others find new jobs at their next
    /// poll. Its [`wait`](Self::wait) learns of finished jobs by reading the store (it is told at
    /// once only of its own cancels).
    pub fn standalone(store: Arc<dyn JobStore>) -> Self {
        Self::with_parts(store, Arc::new(Notify::new()), HookBus::disabled(), Waiters::default())
    }

    pub(crate) fn with_parts(
        store: Arc<dyn JobStore>,
        wake: Arc<Notify>,
        hooks: HookBus,
        waiters: Waiters,
    ) -> Self {
        Self { store, wake, hooks, waiters, poll: Poll::DEFAULT }
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

    /// Enqueue many inputs of one definition in one store call, each with the definition's
    /// defaults. One result per input, in order.
    pub async fn enqueue_many<I: JobInput>(
        &self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I>,
    ) -> Result<Vec<Enqueued>> {
        self.enqueue_many_with(definition, inputs, EnqueueOptions::new()).await
    }

    /// Enqueue many inputs of one definition in one store call, all with `options` (an ID set in
    /// `options` is ignored: each job gets its own). One result per input, in order.
    pub async fn enqueue_many_with<I: JobInput>(
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

    /// Ask for a job to be cancelled (see [`JobStore::request_job_cancel`]): an available job is
    /// cancelled at once, a running one through its worker at its next heartbeat. Fails with
    /// [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound) for an unknown ID.
    pub async fn cancel(&self, id: JobId) -> Result<JobCancel> {
        let cancel = self.store.request_job_cancel(id).await?;
        if cancel == JobCancel::Cancelled {
            self.waiters.reached_final([id]);
        }
        Ok(cancel)
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
