//! Keeping leases alive and reclaiming the expired ones.
//!
//! Heartbeat: one store call per interval renews every lease the worker holds, whatever their
//! number; the report tells which handlers lost their lease (their futures are dropped) and
//! which have a cancel request (their tokens fire). Rescue: every worker periodically reclaims
//! expired leases of any worker; the store does it atomically, so concurrent rescuers are safe.

use std::sync::Arc;

use dispatch_core::{Event, Failure, FailureKind, JobId, JobInfo};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::health::{Operation, timed_out};

const RESCUE_BATCH: usize = 1000;

pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, halt: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A worker in a registry registers at once (its fetch loop waits for that); a plain
    // worker has nothing to renew yet.
    if shared.membership.is_none() {
        tick.tick().await;
    }
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tick.tick() => heartbeat(&shared).await,
        }
    }
}

async fn heartbeat(shared: &Shared) {
    match &shared.membership {
        Some(membership) => super::membership::heartbeat(shared, membership).await,
        None => renew(shared).await,
    }
    super::progress::flush(shared).await;
}

/// Renew every lease this worker holds (a worker outside a registry).
async fn renew(shared: &Shared) {
    let leases = shared.attempts.leases();
    if leases.is_empty() {
        return;
    }
    let ttl = shared.config.lease_ttl;
    let expires = tokio::time::Instant::now() + ttl;
    let call =
        tokio::time::timeout(shared.config.store_timeout, shared.store.heartbeat(&leases, ttl));
    match call.await {
        Ok(Ok(report)) => {
            shared.health.heartbeat();
            shared.attempts.apply_heartbeat(&leases, &report, expires);
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "heartbeat failed");
            shared.health.error(Operation::Heartbeat, &error);
        }
        Err(_) => {
            tracing::warn!("heartbeat timed out");
            shared.health.error(Operation::Heartbeat, &timed_out("heartbeat"));
        }
    }
}

pub(crate) async fn rescue_loop(shared: Arc<Shared>, halt: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.rescue_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tick.tick() => rescue(&shared).await,
        }
    }
}

async fn rescue(shared: &Shared) {
    loop {
        let call = tokio::time::timeout(
            shared.config.store_timeout,
            shared.store.rescue_expired(RESCUE_BATCH),
        );
        let report = match call.await {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => {
                shared.health.error(Operation::Rescue, &error);
                return tracing::warn!(%error, "rescue failed");
            }
            Err(_) => {
                shared.health.error(Operation::Rescue, &timed_out("rescue"));
                return tracing::warn!("rescue timed out");
            }
        };
        shared.health.rescued();
        let total = report.rescued.len() + report.promoted.len() + report.cancelled.len();
        if !report.rescued.is_empty() {
            tracing::info!(count = report.rescued.len(), "rescued jobs with expired leases");
            shared.wake.notify_one();
        }
        let ended =
            report.promoted.iter().map(|&(id, _)| id).chain(report.cancelled.iter().copied());
        shared.waiters.reached_final(ended);
        if shared.hooks.is_enabled() {
            emit_rescue_hooks(shared, &report.promoted, &report.cancelled).await;
        }
        if total < RESCUE_BATCH {
            return;
        }
    }
}

async fn emit_rescue_hooks(
    shared: &Shared,
    promoted: &[(JobId, dispatch_core::DlqId)],
    cancelled: &[JobId],
) {
    for &(id, dlq_id) in promoted {
        if let Some((job, attempt)) = job_info(shared, id).await {
            let failure =
                Failure::new(FailureKind::LeaseExpired, "lease expired on the last attempt");
            let failed = job.clone();
            shared.hooks.emit(|| Event::JobFailed { job: failed, attempt, failure });
            shared.hooks.emit(|| Event::JobPromoted { job, dlq_id });
        }
    }
    for &id in cancelled {
        if let Some((job, attempt)) = job_info(shared, id).await {
            shared.hooks.emit(|| Event::JobCancelled { job, attempt });
        }
    }
}

/// The job's identity and its last attempt, read back for a hook.
async fn job_info(shared: &Shared, id: JobId) -> Option<(JobInfo, u32)> {
    let job = shared.store.get_job(id).await.ok()??;
    Some((JobInfo { id, name: job.name, queue: job.queue, scope: job.scope }, job.attempt))
}
