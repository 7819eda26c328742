//! [`DlqStore`] for [`MemoryStore`].

use std::ops::Bound;

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, Job, JobId, JobState, Page, PageRequest,
    Replay, Result,
};

use crate::{MemoryStore, Row};

#[async_trait]
impl DlqStore for MemoryStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        let start = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.state.lock();
        let items = state
            .dlq
            .range((start, Bound::Unbounded))
            .map(|(_, entry)| entry)
            .filter(|e| {
                filter.queue.as_ref().is_none_or(|q| *q == e.queue)
                    && filter.name.as_ref().is_none_or(|n| *n == e.name)
                    && filter.replayed.is_none_or(|r| r == e.replayed_as.is_some())
            })
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |entry| entry.id))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        Ok(self.state.lock().dlq.get(&id).cloned())
    }

    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let entry =
            state.dlq.get(&id).ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
        if let Some(job_id) = entry.replayed_as {
            return Ok(Replay::AlreadyReplayed(job_id));
        }
        let job = Job {
            id: JobId::new(),
            name: entry.name.clone(),
            queue: entry.queue.clone(),
            payload: entry.payload.clone(),
            priority: entry.priority,
            state: JobState::Available,
            attempt: 0,
            max_attempts: entry.max_attempts,
            timeout: entry.timeout,
            run_at: now,
            created_at: now,
            finished_at: None,
            unique_key: None,
            scope: entry.scope.clone(),
            lease: None,
            cancel_requested: false,
            errors: Vec::new(),
            dlq_id: None,
        };
        let job_id = job.id;
        let seq = state.next_seq();
        state.jobs.insert(job_id, Row { job, seq, last_finish: None, unique_until: None });
        state.make_available(job_id, now);
        if let Some(entry) = state.dlq.get_mut(&id) {
            entry.replayed_as = Some(job_id);
            entry.replayed_at = Some(now);
        }
        Ok(Replay::Replayed(job_id))
    }

    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        let mut state = self.state.lock();
        let before = state.dlq.len();
        state.dlq.retain(|_, e| {
            let matches = filter.queue.as_ref().is_none_or(|q| *q == e.queue)
                && filter.name.as_ref().is_none_or(|n| *n == e.name)
                && filter.failed_before.is_none_or(|t| e.failed_at < t)
                && filter.replayed.is_none_or(|r| r == e.replayed_as.is_some());
            !matches
        });
        Ok((before - state.dlq.len()) as u64)
    }
}
