//! Batched finishes: attempts end one by one, the store hears about them in batches.
//!
//! One task gathers every finish waiting in its channel (up to the batch size) into one
//! `JobStore::finish` call. Under load a batch forms while the previous call is in flight; at
//! rest a lone finish goes out at once, so batching adds no latency. After the call the finisher
//! does what follows a finish: it forgets the lease (so heartbeats stop renewing it) and emits
//! the hooks. A failed call is retried with backoff: finishes are idempotent (a repeat answers
//! "already applied").

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Event, Finish, FinishResult, JobInfo, JobState, Outcome, Result, RunAt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// One ended attempt on its way to the store.
pub(crate) struct FinishRequest {
    pub(crate) finish: Finish,
    /// What the hooks need, when any hook listens.
    pub(crate) hook: Option<HookInfo>,
}

/// The attempt as the hooks see it.
pub(crate) struct HookInfo {
    pub(crate) job: JobInfo,
    pub(crate) attempt: u32,
    pub(crate) elapsed: Duration,
}

const RETRIES: u32 = 6;

/// Write finishes until `halt`, then write what is still queued and return.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<FinishRequest>,
    halt: CancellationToken,
) {
    let batch = shared.config.finish_batch;
    let mut requests = Vec::with_capacity(batch);
    let mut finishes = Vec::with_capacity(batch);
    let mut hooks = Vec::with_capacity(batch);
    loop {
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut requests, batch) => n,
            _ = halt.cancelled(), if !rx.is_closed() => {
                rx.close(); // what is queued is still written
                continue;
            }
        };
        if received == 0 {
            return;
        }
        for request in requests.drain(..) {
            finishes.push(request.finish);
            hooks.push(request.hook);
        }
        let results = finish_with_retry(&shared, &finishes).await;
        after_finish(&shared, &finishes, hooks.drain(..), results);
        finishes.clear();
    }
}

async fn finish_with_retry(shared: &Shared, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        let call = tokio::time::timeout(shared.config.store_timeout, shared.store.finish(finishes));
        let error = match call.await {
            Ok(Ok(results)) if results.len() == finishes.len() => return Ok(results),
            Ok(Ok(_)) => {
                dispatch_core::Error::internal("store returned the wrong number of results")
            }
            Ok(Err(error)) => error,
            Err(_) => {
                dispatch_core::Error::new(dispatch_core::ErrorKind::Timeout, "finish timed out")
            }
        };
        if attempt >= RETRIES || !error.kind().is_transient() {
            return Err(error);
        }
        tracing::warn!(%error, attempt, "finish failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}

fn after_finish(
    shared: &Shared,
    finishes: &[Finish],
    hooks: impl Iterator<Item = Option<HookInfo>>,
    results: Result<Vec<FinishResult>>,
) {
    {
        let mut running = shared.running.lock();
        for finish in finishes {
            running.remove(&finish.lease.job_id);
        }
    }
    let results = match results {
        Ok(results) => results,
        Err(error) => {
            let count = finishes.len();
            return tracing::error!(%error, count, "could not record attempts; their leases will expire and be rescued");
        }
    };
    // A job back in the queue (retry, snooze, release) may be due before the fetch loop's
    // current sleep ends: wake it to look again.
    if results.iter().any(|r| matches!(r, FinishResult::Applied { state: JobState::Available, .. }))
    {
        shared.wake.notify_one();
    }
    for ((finish, hook), result) in finishes.iter().zip(hooks).zip(results) {
        if let Some(hook) = hook {
            emit(shared, hook, &finish.outcome, result);
        }
    }
}

fn emit(shared: &Shared, hook: HookInfo, outcome: &Outcome, result: FinishResult) {
    let HookInfo { job, attempt, elapsed } = hook;
    let FinishResult::Applied { state, dlq_id } = result else {
        tracing::debug!(job.id = %job.id, ?result, "finish not applied; no hooks");
        return;
    };
    let hooks = &shared.hooks;
    match (state, outcome) {
        (JobState::Completed, _) => hooks.emit(|| Event::JobCompleted { job, attempt, elapsed }),
        (JobState::Cancelled, _) => hooks.emit(|| Event::JobCancelled { job, attempt }),
        (JobState::Available, Outcome::Retry { failure, run_at }) => {
            let delay = relative(*run_at);
            hooks.emit(|| Event::JobRetrying { job, attempt, failure: failure.clone(), delay });
        }
        (JobState::Available, Outcome::Snooze { run_at }) => {
            hooks.emit(|| Event::JobSnoozed { job, delay: relative(*run_at) });
        }
        (JobState::Dead, Outcome::Retry { failure, .. } | Outcome::Fail { failure }) => {
            let failed = job.clone();
            hooks.emit(|| Event::JobFailed { job: failed, attempt, failure: failure.clone() });
            if let Some(dlq_id) = dlq_id {
                hooks.emit(|| Event::JobPromoted { job, dlq_id });
            }
        }
        _ => tracing::debug!(job.id = %job.id, ?state, "no hook for this transition"),
    }
}

fn relative(run_at: RunAt) -> Duration {
    match run_at {
        RunAt::After(delay) => delay,
        RunAt::Now | RunAt::At(_) => Duration::ZERO,
    }
}
