//! The fetch loop and the life of one attempt.
//!
//! One fetch loop per worker: it waits for free slots, claims as many jobs as there are free
//! slots in one store call, and spawns one task per job. A full batch means more work is waiting,
//! so it claims again at once; a short one means the queues are drained, so it sleeps until a
//! wake-up (a local enqueue, or a push from the store) or the poll interval.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    Backoff, ClaimRequest, ClaimedJob, ErrorKind, Event, Finish, JobInfo, LeaseRef, LeaseToken,
    Outcome, RunAt, WakeupStream,
};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Shared;
use super::finisher::{FinishRequest, HookInfo};
use super::health::Operation;
use crate::context::{CancelReason, CancelToken, JobContext};
use crate::error::{Action, JobError, JobResult};
use crate::service::JobRequest;

/// The first back-off of a fetch loop whose claim came back empty while jobs were due; it
/// doubles up to the poll interval.
const GATED_FIRST_DELAY: Duration = Duration::from_millis(1);

pub(crate) async fn fetch_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut request = ClaimRequest {
        worker: shared.id,
        queues: shared.queues.clone(),
        names: shared.registry.names(),
        limit: 0,
        lease_ttl: shared.config.lease_ttl,
        token: LeaseToken::new(),
    };
    let mut error_delay = shared.config.poll_interval.min(Duration::from_millis(100));
    let mut gated_delay = GATED_FIRST_DELAY;
    if shared.membership.is_some() {
        // Claim nothing the registry could not take over if this process died.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.first_registration.cancelled() => {}
        }
    }
    loop {
        let mut permits = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
        };
        let free = shared.slots.available_permits();
        if let Ok(more) = shared.slots.clone().try_acquire_many_owned(free as u32) {
            permits.merge(more);
        }
        let expires = tokio::time::Instant::now() + request.lease_ttl;
        let (claimed, full, failed) =
            claim_round(&shared, &mut request, permits.num_permits()).await;
        let empty = claimed.is_empty();
        if failed.is_none() {
            shared.health.claimed();
            error_delay = shared.config.poll_interval.min(Duration::from_millis(100));
        }
        for job in claimed {
            let Some(permit) = permits.split(1) else { break };
            shared.queue_slots.started(&job.job.queue);
            let task = run_job(shared.clone(), job, expires, permit);
            shared.tracker.spawn(task);
        }
        drop(permits);
        if let Some(error) = failed {
            tracing::warn!(%error, "claim failed; backing off");
            shared.health.claim_failed(&error);
            if sleep_or_stop(error_delay, &stop).await {
                return;
            }
            error_delay = (error_delay * 2).min(Duration::from_secs(5));
            continue;
        }
        // Let the attempts just spawned take their first step before the next claim counts free
        // slots: a handler that returns at once gives its slot back then, and counted before
        // it ran, every other claim would come back half the size it could be.
        tokio::task::yield_now().await;
        if !full {
            let mut wait = until_next_due(&shared, &shared.queues, &request.names).await;
            // Nothing claimed although jobs are due: flow control's gates are full. Back off
            // (an attempt of this worker ending wakes the loop at once: its slot may be what
            // a gate waits for), instead of claiming again every millisecond.
            let gated = empty && wait <= GATED_FIRST_DELAY;
            shared.gated.store(gated, std::sync::atomic::Ordering::Release);
            if gated {
                wait = gated_delay.min(shared.config.poll_interval);
                gated_delay = (gated_delay * 2).min(shared.config.poll_interval);
            } else {
                gated_delay = GATED_FIRST_DELAY;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// One round of claims for `free` slots: one claim, or one per queue with local slots and one
/// for the rest ([`QueueSlots::plan`](super::slots::QueueSlots::plan)). Answers the jobs
/// claimed, whether every claim came back full, and the error that ended the round early (the
/// leases a failed claim may have written are given back by its token in the background).
async fn claim_round(
    shared: &Arc<Shared>,
    request: &mut ClaimRequest,
    free: usize,
) -> (Vec<ClaimedJob>, bool, Option<dispatch_core::Error>) {
    let mut claimed = Vec::new();
    let mut full = true;
    for (queues, limit) in shared.queue_slots.plan(&shared.queues, free) {
        request.queues = queues;
        request.limit = limit;
        request.token = LeaseToken::new();
        let claim = tokio::time::timeout(shared.config.store_timeout, shared.store.claim(request));
        match claim.await {
            Ok(Ok(jobs)) => {
                full &= jobs.len() == limit;
                claimed.extend(jobs);
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error,
                    _ => dispatch_core::Error::new(ErrorKind::Timeout, "claim timed out"),
                };
                if error.kind() != ErrorKind::InvalidInput {
                    // The store may have written leases whose answer never came back.
                    tokio::spawn(release_lost_claim(shared.clone(), request.token));
                }
                return (claimed, false, Some(error));
            }
        }
    }
    let full = full && !claimed.is_empty();
    (claimed, full, None)
}

/// Give back the leases of a claim whose answer was lost (see
/// [`JobStore::release_claim`](dispatch_core::JobStore::release_claim)), so its jobs run again
/// at once with their attempts returned rather than wait for the leases to expire. Retried on
/// transient errors until the leases would have expired anyway.
async fn release_lost_claim(shared: Arc<Shared>, token: LeaseToken) {
    let give_up = tokio::time::Instant::now() + shared.config.lease_ttl;
    let mut delay = Duration::from_millis(50);
    loop {
        let call = shared.store.release_claim(token);
        let error = match tokio::time::timeout(shared.config.store_timeout, call).await {
            Ok(Ok(0)) => return,
            Ok(Ok(released)) => {
                tracing::info!(released, "released the leases of a claim whose answer was lost");
                return shared.wake.notify_one();
            }
            Ok(Err(error)) => error,
            Err(_) => dispatch_core::Error::new(ErrorKind::Timeout, "release_claim timed out"),
        };
        if !error.kind().is_transient() || tokio::time::Instant::now() + delay >= give_up {
            shared.health.error(Operation::Claim, &error);
            return tracing::warn!(%error, "could not release a lost claim; its leases will expire");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Wake the fetch loop for every store wake-up that concerns this worker's queues, until halted
/// or the store's stream ends (polling goes on either way). A wake-up for any queue is also how
/// a store says its listener (re)connected: readiness looks again.
pub(crate) async fn forward_wakeups(
    shared: Arc<Shared>,
    mut wakeups: WakeupStream,
    halt: CancellationToken,
) {
    loop {
        let wakeup = tokio::select! {
            _ = halt.cancelled() => return,
            next = wakeups.next() => match next {
                Some(wakeup) => wakeup,
                None => return,
            },
        };
        if wakeup.queue.is_none() {
            shared.health.listener_changed(shared.store.listener_state().as_ref());
        }
        if wakeup.concerns(&shared.queues) {
            shared.wake.notify_one();
        }
    }
}

/// How long an idle fetch loop sleeps: until the next job is due, at most a poll interval, at
/// least a millisecond (a job due "now" that the claim missed is picked up on the next turn).
async fn until_next_due(shared: &Shared, queues: &[String], names: &[String]) -> Duration {
    let poll = shared.config.poll_interval;
    let ask = shared.store.next_due(queues, names);
    match tokio::time::timeout(shared.config.store_timeout, ask).await {
        Ok(Ok(Some(due))) => due.clamp(Duration::from_millis(1), poll),
        Ok(Ok(None)) => poll,
        Ok(Err(error)) => {
            tracing::debug!(%error, "next-due failed; sleeping the poll interval");
            shared.health.error(Operation::NextDue, &error);
            poll
        }
        Err(_) => {
            let error = dispatch_core::Error::new(
                dispatch_core::ErrorKind::Timeout,
                "next-due timed out".to_owned(),
            );
            shared.health.error(Operation::NextDue, &error);
            poll
        }
    }
}

/// Sleep for `delay`; true when stop was asked meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Run one claimed attempt whose lease expires no earlier than `expires`, and queue its finish.
async fn run_job(
    shared: Arc<Shared>,
    claimed: ClaimedJob,
    expires: tokio::time::Instant,
    permit: OwnedSemaphorePermit,
) {
    let ClaimedJob { job, lease } = claimed;
    let lease = LeaseRef { job_id: job.id, token: lease.token };
    let cancel = CancelToken::new();
    shared.attempts.begin(lease, cancel.clone(), expires);

    let info = shared.hooks.is_enabled().then(|| JobInfo {
        id: job.id,
        name: job.name.clone(),
        queue: job.queue.clone(),
        scope: job.scope.clone(),
    });
    let attempt = job.attempt;
    if let Some(info) = &info {
        shared.hooks.emit(|| Event::JobStarted { job: info.clone(), attempt });
    }
    let backoff = shared.registry.get(&job.name).map(|j| j.backoff()).unwrap_or_default();
    let queue = job.queue.clone();
    let ctx = JobContext {
        id: job.id,
        name: job.name,
        queue: job.queue,
        attempt,
        max_attempts: job.max_attempts,
        timeout: job.timeout,
        scope: job.scope,
        cancel: cancel.clone(),
        token: lease.token,
        progress: shared.progress.clone(),
        saved_progress: job.progress,
    };
    let started = tokio::time::Instant::now();
    let call = shared.service.clone().oneshot(JobRequest { ctx, payload: job.payload });
    let result = tokio::select! {
        biased;
        reason = cancel.aborted() => Err(reason),
        result = call => Ok(result),
    };
    let elapsed = started.elapsed();
    drop(permit);
    let local_slot_freed = shared.queue_slots.ended(&queue);
    if local_slot_freed || shared.gated.load(std::sync::atomic::Ordering::Acquire) {
        shared.wake.notify_one();
    }
    let result = match result {
        Ok(result) => result,
        // Shutdown: stop releases the lease.
        Err(CancelReason::Shutdown) => return,
        // Lease lost: nothing we write would be accepted.
        Err(_) => return shared.attempts.end(lease),
    };

    super::progress::flush_one(&shared, lease.job_id).await;
    let outcome = decide(result, &cancel, attempt, backoff);
    let hook = info.map(|job| HookInfo { job, attempt, elapsed });
    let request = FinishRequest { finish: Finish { lease, outcome }, hook };
    if shared.finisher.send(request).await.is_err() {
        tracing::error!(job.id = %lease.job_id, "the finisher has stopped; the lease will expire");
        shared.attempts.end(lease);
    }
}

/// How an attempt's result becomes a store outcome.
fn decide(result: JobResult, cancel: &CancelToken, attempt: u32, backoff: Backoff) -> Outcome {
    let error: JobError = match result {
        Ok(()) => return Outcome::Complete,
        Err(error) => error,
    };
    if cancel.reason() == Some(CancelReason::CancelRequested) {
        return Outcome::Cancel;
    }
    match error.action() {
        Action::Snooze(delay) => Outcome::Snooze { run_at: RunAt::After(delay) },
        Action::Permanent => Outcome::Fail { failure: error.to_failure() },
        Action::Retry(after) => {
            let delay = after.unwrap_or_else(|| backoff.delay(attempt));
            Outcome::Retry { failure: error.to_failure(), run_at: RunAt::After(delay) }
        }
    }
}
