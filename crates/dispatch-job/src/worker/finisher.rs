//! Batched finishes: attempts end one by one, the store hears about them in batches.
//!
//! One task gathers every finish waiting in its channel (up to the batch size) into one
//! `JobStore::finish` call. Under load a batch forms while the previous call is in flight; at
//! rest a lone finish goes out at once, so batching adds no latency. After the call the finisher
//! does what follows a finish: it forgets the lease (so heartbeats stop renewing it) and emits
//! the hooks. A call that fails transiently is retried with backoff for as long as the leases may
//! hold (finishes are idempotent: a repeat answers "already applied"); the heartbeat renews them
//! meanwhile, so a store outage shorter than the lease loses no finished attempt.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    Event, Finish, FinishResult, JobInfo, JobState, LeaseRef, Outcome, Result, RunAt,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::health::Operation;

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

/// The first pause before a failed finish call is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

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
        let results = write(&shared, &finishes, &halt).await;
        after_finish(&shared, &finishes, hooks.drain(..), results);
        finishes.clear();
    }
}

/// Write `finishes` and return one result per finish. A finish that could not be recorded (its
/// lease reported lost by a heartbeat meanwhile, or given up) answers
/// [`FinishResult::LeaseLost`]: nothing follows from it.
async fn write(
    shared: &Shared,
    finishes: &[Finish],
    halt: &CancellationToken,
) -> Vec<FinishResult> {
    match write_while_held(shared, finishes, halt).await {
        Ok(results) => results,
        // Not worth retrying as a batch: one item may be what the store refuses, so each is
        // written on its own, and only the one that fails alone is given up.
        Err(error) if finishes.len() > 1 => {
            tracing::warn!(%error, count = finishes.len(), "finish batch refused; writing one by one");
            shared.health.error(Operation::Finish, &error);
            let mut results = Vec::with_capacity(finishes.len());
            for finish in finishes {
                let alone = write_while_held(shared, std::slice::from_ref(finish), halt).await;
                results
                    .push(alone.map_or_else(|e| give_up(shared, finish, &e), |mut r| r.remove(0)));
            }
            results
        }
        Err(error) => vec![give_up(shared, &finishes[0], &error)],
    }
}

fn give_up(shared: &Shared, finish: &Finish, error: &dispatch_core::Error) -> FinishResult {
    shared.health.error(Operation::Finish, error);
    tracing::error!(%error, job.id = %finish.lease.job_id, "could not record the attempt; its lease will expire and be rescued");
    FinishResult::LeaseLost
}

/// Write `finishes`, retrying transient failures for as long as a lease among them may still be
/// held: a finish is dropped from the retries only when a heartbeat reported its lease lost, or,
/// once the worker is stopping, when its lease has expired (the store will rescue the job). The
/// heartbeat keeps renewing the leases meanwhile, so an outage shorter than the lease never sends
/// a finished job round again. Finishes are idempotent by token: a retry of a call that was
/// applied answers "already applied". Fails only with a non-transient error.
async fn write_while_held(
    shared: &Shared,
    finishes: &[Finish],
    halt: &CancellationToken,
) -> Result<Vec<FinishResult>> {
    let mut error = match call(shared, finishes).await {
        Ok(results) => return Ok(results),
        Err(error) => error,
    };
    let mut results = vec![FinishResult::LeaseLost; finishes.len()];
    let mut pending: Vec<usize> = (0..finishes.len()).collect();
    let mut delay = RETRY_START;
    let mut retries = 0u32;
    loop {
        if !error.kind().is_transient() {
            return Err(error);
        }
        pending.retain(|&i| worth_writing(shared, finishes[i].lease, halt));
        if pending.is_empty() {
            return Ok(results);
        }
        retries += 1;
        if retries == 1 || retries.is_multiple_of(20) {
            tracing::warn!(%error, retries, count = pending.len(), "finish failed; retrying while the leases hold");
            shared.health.error(Operation::Finish, &error);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
        let batch: Vec<Finish> = pending.iter().map(|&i| finishes[i].clone()).collect();
        match call(shared, &batch).await {
            Ok(answers) => {
                for (&i, answer) in pending.iter().zip(answers) {
                    results[i] = answer;
                }
                return Ok(results);
            }
            Err(next) => error = next,
        }
    }
}

/// Whether a finish under `lease` may still be recorded: its lease is not known to be lost, and
/// the worker is not stopping past the lease's expiry.
fn worth_writing(shared: &Shared, lease: LeaseRef, halt: &CancellationToken) -> bool {
    match shared.attempts.expires(lease) {
        None => false,
        Some(expires) => !halt.is_cancelled() || tokio::time::Instant::now() < expires,
    }
}

/// One finish call under the store timeout.
async fn call(shared: &Shared, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
    let call = tokio::time::timeout(shared.config.store_timeout, shared.store.finish(finishes));
    match call.await {
        Ok(Ok(results)) if results.len() == finishes.len() => Ok(results),
        Ok(Ok(_)) => {
            Err(dispatch_core::Error::internal("store returned the wrong number of results"))
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            Err(dispatch_core::Error::new(dispatch_core::ErrorKind::Timeout, "finish timed out"))
        }
    }
}

fn after_finish(
    shared: &Shared,
    finishes: &[Finish],
    hooks: impl Iterator<Item = Option<HookInfo>>,
    results: Vec<FinishResult>,
) {
    for finish in finishes {
        shared.attempts.end(finish.lease);
    }
    shared.waiters.reached_final(finishes.iter().zip(&results).filter_map(|(finish, result)| {
        let done = match result {
            FinishResult::Applied { state, .. } => state.is_final(),
            FinishResult::AlreadyApplied => true, // maybe final: a spurious notice costs one read
            FinishResult::LeaseLost => false,
        };
        done.then_some(finish.lease.job_id)
    }));
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
