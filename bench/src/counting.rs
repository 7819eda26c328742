//! A store interceptor that tells when a number of jobs have been durably finished: the drain
//! ends when the store has applied the last finish, not when the last handler returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use dispatch::core::{
    Call, CallKind, FinishResult, Intercepted, Interceptor, Reply, Result, WorkflowStore,
};
use tokio::sync::Notify;

/// Counts applied finishes and wakes a waiter when `target` is reached.
pub struct FinishCounter {
    applied: AtomicUsize,
    target: usize,
    done: Notify,
    /// Claim calls answered.
    pub claims: AtomicUsize,
    /// Jobs those calls returned.
    pub claimed: AtomicUsize,
    /// Finish calls made.
    pub finish_calls: AtomicUsize,
}

impl FinishCounter {
    /// Wrap `inner`, waiting for `target` applied finishes.
    pub fn wrap(
        inner: Arc<dyn WorkflowStore>,
        target: usize,
    ) -> Arc<Intercepted<dyn WorkflowStore, Self>> {
        let counter = Self {
            applied: AtomicUsize::new(0),
            target,
            done: Notify::new(),
            claims: AtomicUsize::new(0),
            claimed: AtomicUsize::new(0),
            finish_calls: AtomicUsize::new(0),
        };
        Arc::new(Intercepted::new(inner, counter))
    }

    /// Wait until `target` finishes have been applied.
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.applied.load(Ordering::SeqCst) >= self.target {
                return;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Interceptor for FinishCounter {
    async fn before(&self, call: Call) -> Result<()> {
        if call.kind == CallKind::Finish {
            self.finish_calls.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn after(&self, _call: Call, reply: Reply<'_>) -> Result<()> {
        match reply {
            Reply::Claimed(jobs) => {
                self.claims.fetch_add(1, Ordering::Relaxed);
                self.claimed.fetch_add(jobs.len(), Ordering::Relaxed);
            }
            Reply::Finished(results) => {
                let applied =
                    results.iter().filter(|r| matches!(r, FinishResult::Applied { .. })).count();
                if self.applied.fetch_add(applied, Ordering::SeqCst) + applied >= self.target {
                    self.done.notify_waiters();
                }
            }
            _ => {}
        }
        Ok(())
    }
}
