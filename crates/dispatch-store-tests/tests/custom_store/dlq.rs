//! [`DlqStore`] for [`VecStore`]: entries are written by the job transitions (see `job.rs`);
//! here they are read, replayed (the new job from `transition::replay`) and purged.

use std::collections::BTreeMap;

use async_trait::async_trait;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, DlqStore, Error, JobId, Page, PageRequest, Replay,
    ReplayOptions, Result, Timestamp, transition,
};

use crate::store::{Tables, VecStore, keyset_page};

#[async_trait]
impl DlqStore for VecStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let tables = self.tables.lock();
        let matching = tables.dlq.values().filter(|entry| filter.matches(entry));
        Ok(keyset_page(matching, |entry| entry.id, page))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        Ok(self.tables.lock().dlq.get(&id).cloned())
    }

    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        let tables = self.tables.lock();
        let mut counts = BTreeMap::<(String, String), u64>::new();
        for entry in tables.dlq.values().filter(|entry| filter.matches(entry)) {
            *counts.entry((entry.queue.clone(), entry.name.clone())).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((queue, name), count)| DlqCount { queue, name, count })
            .collect())
    }

    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        let entry =
            tables.dlq.get(&id).ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
        // Once per entry: the mutex makes the check and the write one step.
        if let Some(job_id) = entry.replayed_as {
            return Ok(Replay::AlreadyReplayed(job_id));
        }
        Ok(Replay::Replayed(replay(&mut tables, id, options, now)))
    }

    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        let now = self.clock.now();
        let filter = filter.unreplayed();
        let mut tables = self.tables.lock();
        let picked: Vec<DlqId> =
            tables.dlq.values().filter(|e| filter.matches(e)).take(limit).map(|e| e.id).collect();
        Ok(picked.into_iter().map(|id| (id, replay(&mut tables, id, options, now))).collect())
    }

    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64> {
        let mut tables = self.tables.lock();
        let doomed: Vec<DlqId> =
            tables.dlq.values().filter(|e| filter.matches(e)).take(limit).map(|e| e.id).collect();
        for id in &doomed {
            tables.dlq.remove(id);
        }
        Ok(doomed.len() as u64)
    }
}

/// Enqueue the replay of stored entry `id` and mark the entry; the new job's ID.
fn replay(tables: &mut Tables, id: DlqId, options: &ReplayOptions, now: Timestamp) -> JobId {
    let job = transition::replay(&tables.dlq[&id], options, now);
    let job_id = job.id;
    if let Some(entry) = tables.dlq.get_mut(&id) {
        entry.replayed_as = Some(job_id);
        entry.replayed_at = Some(now);
    }
    tables.jobs.insert(job, None);
    job_id
}
