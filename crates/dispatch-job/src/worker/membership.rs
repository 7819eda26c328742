//! The worker in a cluster's registry ([`MembershipStore`]): registering before the first claim,
//! one heartbeat per interval that renews the worker and all its leases together, draining when
//! the registry says so, registering again after being marked gone, and deregistering at stop.
//!
//! Without a registry the worker keeps lease-TTL liveness (`lease.rs`); with one, its liveness
//! is this heartbeat, so its leases may be long.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dispatch_core::{MembershipStore, WorkerRegistration, WorkerState};

use super::Shared;
use super::health::{Operation, timed_out};

/// A worker's place in the registry: the store, and what it registers.
pub(crate) struct Membership {
    pub(crate) store: Arc<dyn MembershipStore>,
    pub(crate) host: String,
    pub(crate) version: String,
}

impl Membership {
    fn registration(&self, shared: &Shared) -> WorkerRegistration {
        WorkerRegistration {
            id: shared.id,
            host: self.host.clone(),
            pid: std::process::id(),
            queues: shared.queues.clone(),
            concurrency: u32::try_from(shared.config.concurrency).unwrap_or(u32::MAX),
            version: self.version.clone(),
        }
    }
}

/// This machine's host name, as the registry shows it (`HOSTNAME`, else the kernel's, else
/// "unknown").
pub(crate) fn host_name() -> String {
    if let Ok(host) = std::env::var("HOSTNAME")
        && !host.is_empty()
    {
        return host;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Register (again) when not registered; true when registered afterwards.
pub(crate) async fn ensure_registered(shared: &Shared, membership: &Membership) -> bool {
    if shared.registered.load(Ordering::Acquire) {
        return true;
    }
    let registration = membership.registration(shared);
    let call = membership.store.register_worker(&registration);
    match tokio::time::timeout(shared.config.store_timeout, call).await {
        Ok(Ok(_)) => {
            shared.registered.store(true, Ordering::Release);
            shared.first_registration.cancel();
            tracing::info!(worker = %shared.id, "registered in the worker registry");
            true
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "registering the worker failed");
            shared.health.error(Operation::Heartbeat, &error);
            false
        }
        Err(_) => {
            tracing::warn!("registering the worker timed out");
            shared.health.error(Operation::Heartbeat, &timed_out("register"));
            false
        }
    }
}

/// One registry heartbeat: the worker and every lease it holds, in one store call.
pub(crate) async fn heartbeat(shared: &Shared, membership: &Membership) {
    if !ensure_registered(shared, membership).await {
        return;
    }
    let leases = shared.attempts.leases();
    let ttl = shared.config.lease_ttl;
    let expires = tokio::time::Instant::now() + ttl;
    let call = membership.store.heartbeat_worker(shared.id, &leases, ttl);
    let beat = match tokio::time::timeout(shared.config.store_timeout, call).await {
        Ok(Ok(beat)) => beat,
        Ok(Err(error)) => {
            tracing::warn!(%error, "worker heartbeat failed");
            return shared.health.error(Operation::Heartbeat, &error);
        }
        Err(_) => {
            tracing::warn!("worker heartbeat timed out");
            return shared.health.error(Operation::Heartbeat, &timed_out("heartbeat"));
        }
    };
    shared.health.heartbeat();
    shared.attempts.apply_heartbeat(&leases, &beat.leases, expires);
    match beat.state {
        WorkerState::Active => {}
        WorkerState::Draining => {
            if !shared.drain.is_cancelled() {
                tracing::info!(worker = %shared.id, "told to drain: claiming stops");
            }
            // Claiming ends before the drain shows (in health, in `drain_requested`).
            shared.claiming.cancel();
            shared.drain.cancel();
        }
        WorkerState::Gone => {
            // Marked gone while alive (a pause past the worker timeout): its leases were
            // rescued (the report above showed them lost); register again and go on.
            tracing::warn!(worker = %shared.id, "the registry had marked this worker gone");
            shared.registered.store(false, Ordering::Release);
            ensure_registered(shared, membership).await;
        }
    }
}

/// Leave the registry at stop (best effort: a worker that can not deregister is marked gone
/// by the leader's next sweeps, having no leases left to rescue).
pub(crate) async fn deregister(shared: &Shared, membership: &Membership) {
    let call = membership.store.deregister_worker(shared.id);
    match tokio::time::timeout(shared.config.store_timeout, call).await {
        Ok(Ok(())) => tracing::info!(worker = %shared.id, "deregistered"),
        Ok(Err(error)) => tracing::warn!(%error, "deregistering the worker failed"),
        Err(_) => tracing::warn!("deregistering the worker timed out"),
    }
}
