//! The waits of this process for jobs to end, and the notice that answers them at once.
//!
//! A [`JobClient`](crate::JobClient) waiting for a job registers here before it reads the job;
//! whatever in this process makes a job final (the worker's finisher, its rescue loop, a cancel
//! through a client) tells the registry after the store call returned, and the wait reads the job
//! again at once instead of at its next poll. Registering before reading is what makes the notice
//! safe: a finish either lands before the read (the read sees it) or its notice finds the wait
//! registered. With nobody waiting, a notice costs one atomic load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dispatch_core::JobId;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The registry of waits, shared by a worker and the clients it hands out. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Waiters {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// How many waits are registered; the notice reads only this when it is zero.
    waiting: AtomicUsize,
    /// One notify per job someone waits for, shared by that job's waits.
    by_job: Mutex<HashMap<JobId, Arc<Notify>>>,
}

impl Waiters {
    /// Tell the waits for any of `ids` that their job reached a final state. Call it after the
    /// store call that made them final returned.
    pub(crate) fn reached_final(&self, ids: impl IntoIterator<Item = JobId>) {
        if self.inner.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let by_job = self.inner.by_job.lock();
        for id in ids {
            if let Some(notify) = by_job.get(&id) {
                notify.notify_waiters();
            }
        }
    }

    /// Register a wait for `id`; it stays registered until the returned watch is dropped.
    pub(crate) fn watch(&self, id: JobId) -> Watch {
        let notify = self.inner.by_job.lock().entry(id).or_default().clone();
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        Watch { inner: self.inner.clone(), id, notify }
    }
}

/// One registered wait for one job.
pub(crate) struct Watch {
    inner: Arc<Inner>,
    id: JobId,
    notify: Arc<Notify>,
}

impl Watch {
    /// A future that resolves at the next notice for this job. It catches every notice given
    /// after it was created, polled or not: create it before reading the job.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut by_job = self.inner.by_job.lock();
        // New watches clone the notify only under this lock, so the count is exact here: the map
        // and this watch hold the last two references.
        if Arc::strong_count(&self.notify) == 2 {
            by_job.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notice_wakes_a_watch_created_before_it_and_the_last_watch_cleans_up() {
        let waiters = Waiters::default();
        let (id, other) = (JobId::new(), JobId::new());
        let first = waiters.watch(id);
        let second = waiters.watch(id);
        let notified = first.notified();
        waiters.reached_final([other, id]);
        notified.await; // would hang if the notice were lost before the first poll
        drop(first);
        assert_eq!(waiters.inner.by_job.lock().len(), 1, "the second watch still holds the entry");
        drop(second);
        assert!(waiters.inner.by_job.lock().is_empty());
        assert_eq!(waiters.inner.waiting.load(Ordering::SeqCst), 0);
    }
}
