//! Waiting for a job's outcome: [`JobClient::wait`], [`JobClient::wait_all`], [`JobWaitError`].
//!
//! A wait reads the job, and while it is not final sleeps until a notice or its next poll, then
//! reads again. Jobs ended in this process (by the worker that handed out the client, or
//! cancelled through the client) answer at once: the wait registers for their notice before each
//! read, so a finish between the read and the sleep is never missed. Jobs ended by other
//! processes are seen by polling: first after 10 ms, each pause twice the last, capped at 1 s.

use std::time::Duration;

use dispatch_core::{ErrorKind, Job, JobId, JobState};
use tokio::time::Instant;

use super::JobClient;

/// How a wait polls the store between notices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Poll {
    /// The pause after the first read of a job that is not final.
    pub(crate) first: Duration,
    /// The longest pause; each pause doubles the last up to this.
    pub(crate) max: Duration,
}

impl Poll {
    pub(crate) const DEFAULT: Self =
        Self { first: Duration::from_millis(10), max: Duration::from_secs(1) };
}

/// Why a wait did not end with a completed job. Converts into [`dispatch_core::Error`], so `?`
/// works in functions returning it.
#[derive(Debug, thiserror::Error)]
pub enum JobWaitError {
    /// The job failed for good; its DLQ entry's ID is [`Job::dlq_id`].
    #[error("job {} is dead", .0.id)]
    Dead(Box<Job>),
    /// The job was cancelled.
    #[error("job {} was cancelled", .0.id)]
    Cancelled(Box<Job>),
    /// The job was not final when the wait's time was up; this is the job as last read.
    #[error("job {} did not end in time (still {} after {} attempt(s))", .0.id, .0.state, .0.attempt)]
    TimedOut(Box<Job>),
    /// The store has no job with this ID.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// Reading the job failed.
    #[error("reading the job failed")]
    Store(#[from] dispatch_core::Error),
}

impl JobWaitError {
    /// The kind of the [`dispatch_core::Error`] this becomes: `Conflict` for a dead or cancelled
    /// job (it ended, but not completed), `Timeout`, `NotFound`, or the store error's own kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Dead(_) | Self::Cancelled(_) => ErrorKind::Conflict,
            Self::TimedOut(_) => ErrorKind::Timeout,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Store(error) => error.kind(),
        }
    }

    /// The job as the wait last read it, when it was found.
    pub fn job(&self) -> Option<&Job> {
        match self {
            Self::Dead(job) | Self::Cancelled(job) | Self::TimedOut(job) => Some(job),
            Self::NotFound(_) | Self::Store(_) => None,
        }
    }
}

/// A store failure comes back as it was; any other reason becomes an error of its
/// [`kind`](JobWaitError::kind), "waiting for a job", whose
/// [`source`](std::error::Error::source) is the reason (downcast it to get the job back).
impl From<JobWaitError> for dispatch_core::Error {
    fn from(error: JobWaitError) -> Self {
        match error {
            JobWaitError::Store(error) => error,
            other => Self::new(other.kind(), "waiting for a job").with_source(other),
        }
    }
}

impl JobClient {
    /// Wait up to `timeout` for the job to end; `Ok` with its final record when it completed,
    /// otherwise the reason ([`JobWaitError`]: dead, cancelled, timed out, not found, or the
    /// store failed). The job is read at least once, so a zero timeout checks it; the answer
    /// comes within about `timeout` plus one store call. A failed read ends the wait
    /// ([`JobWaitError::Store`]).
    ///
    /// How the wait learns that the job ended: a job ended in this process (by the worker that
    /// handed out this client, or cancelled through this client) answers at once. A job ended
    /// by another process (or another worker of this one) is seen by polling the store: first
    /// after 10 ms, each pause twice the last, at most 1 s, so it is seen up to a second late.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Job, JobWaitError> {
        let job = self.settle(id, deadline_after(timeout)).await?;
        match job.state {
            JobState::Dead => Err(JobWaitError::Dead(Box::new(job))),
            JobState::Cancelled => Err(JobWaitError::Cancelled(Box::new(job))),
            _ => Ok(job),
        }
    }

    /// Wait up to `timeout` (for all of them together) until every job of `ids` is final, and
    /// answer their final records in the order of `ids`, whatever state they ended in (check
    /// [`Job::state`]). Fails when one is not final in time ([`JobWaitError::TimedOut`] with that
    /// job), is not found, or the store fails.
    pub async fn wait_all(
        &self,
        ids: impl IntoIterator<Item = JobId>,
        timeout: Duration,
    ) -> Result<Vec<Job>, JobWaitError> {
        let deadline = deadline_after(timeout);
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(self.settle(id, deadline).await?);
        }
        Ok(jobs)
    }

    /// Read the job until it is final (answered) or `deadline` has passed (timed out).
    async fn settle(&self, id: JobId, deadline: Instant) -> Result<Job, JobWaitError> {
        let watch = self.waiters.watch(id);
        let mut pause = self.poll.first;
        loop {
            // Before the read: a notice given from here on ends the sleep below.
            let notified = watch.notified();
            let job = self.store.get_job(id).await?.ok_or(JobWaitError::NotFound(id))?;
            if job.state.is_final() {
                return Ok(job);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(JobWaitError::TimedOut(Box::new(job)));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(pause.min(deadline - now)) => {}
            }
            pause = (pause * 2).min(self.poll.max);
        }
    }
}

/// `timeout` from now; a timeout too long to add means "never" (in about 30 years).
fn deadline_after(timeout: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    Instant::now() + timeout.min(NEVER)
}

#[cfg(test)]
mod tests;
