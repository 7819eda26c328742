//! [`DlqStore`] for [`VecStore`]: entries are written by the job transitions (see `job.rs`);
//! here they are read, replayed (the new job from `transition::replay`) and purged.

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, Page, PageRequest, Replay, Result,
    transition,
};

use crate::store::{VecStore, keyset_page};

#[async_trait]
impl DlqStore for VecStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let tables = self.tables.lock();
        let matching = tables.dlq.values().filter(|entry| {
            filter.queue.as_ref().is_none_or(|queue| entry.queue == *queue)
                && filter.name.as_ref().is_none_or(|name| entry.name == *name)
                && filter.replayed.is_none_or(|replayed| entry.replayed_as.is_some() == replayed)
        });
        Ok(keyset_page(matching, |entry| entry.id, page))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        Ok(self.tables.lock().dlq.get(&id).cloned())
    }

    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        let tables = &mut *tables;
        let entry = tables
            .dlq
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
        // Once per entry: the mutex makes the check and the write one step.
        if let Some(job_id) = entry.replayed_as {
            return Ok(Replay::AlreadyReplayed(job_id));
        }
        let job = transition::replay(entry, now);
        entry.replayed_as = Some(job.id);
        entry.replayed_at = Some(now);
        let job_id = job.id;
        tables.jobs.insert(job, None);
        Ok(Replay::Replayed(job_id))
    }

    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        let mut tables = self.tables.lock();
        let before = tables.dlq.len();
        tables.dlq.retain(|_, entry| {
            let purged = filter.queue.as_ref().is_none_or(|queue| entry.queue == *queue)
                && filter.name.as_ref().is_none_or(|name| entry.name == *name)
                && filter.failed_before.is_none_or(|before| entry.failed_at < before)
                && filter.replayed.is_none_or(|replayed| entry.replayed_as.is_some() == replayed);
            !purged
        });
        Ok((before - tables.dlq.len()) as u64)
    }
}
