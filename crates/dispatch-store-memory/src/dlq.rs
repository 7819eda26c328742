//! [`DlqStore`] for [`MemoryStore`].

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, DlqStore, Error, JobId, Page, PageRequest, Replay,
    ReplayOptions, Result, Timestamp, transition,
};

use crate::{MemoryStore, State};

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
            .filter(|e| filter.matches(e))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |entry| entry.id))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        Ok(self.state.lock().dlq.get(&id).cloned())
    }

    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        let state = self.state.lock();
        let mut counts = BTreeMap::<(&str, &str), u64>::new();
        for entry in state.dlq.values().filter(|e| filter.matches(e)) {
            *counts.entry((&entry.queue, &entry.name)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((queue, name), count)| DlqCount {
                queue: queue.into(),
                name: name.into(),
                count,
            })
            .collect())
    }

    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let entry =
            state.dlq.get(&id).ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
        if let Some(job_id) = entry.replayed_as {
            return Ok(Replay::AlreadyReplayed(job_id));
        }
        let (job_id, queue) = state.replay(id, options, now);
        drop(state);
        self.wakeups.notify([queue.as_str()]);
        Ok(Replay::Replayed(job_id))
    }

    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        let now = self.clock.now();
        let filter = filter.unreplayed();
        let mut state = self.state.lock();
        let picked: Vec<DlqId> =
            state.dlq.values().filter(|e| filter.matches(e)).take(limit).map(|e| e.id).collect();
        let mut replayed = Vec::with_capacity(picked.len());
        let mut queues = Vec::new();
        for id in picked {
            let (job_id, queue) = state.replay(id, options, now);
            replayed.push((id, job_id));
            queues.push(queue);
        }
        drop(state);
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(replayed)
    }

    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64> {
        let mut state = self.state.lock();
        let doomed: Vec<DlqId> =
            state.dlq.values().filter(|e| filter.matches(e)).take(limit).map(|e| e.id).collect();
        for id in &doomed {
            state.dlq.remove(id);
        }
        Ok(doomed.len() as u64)
    }
}

impl State {
    /// Enqueue the replay of entry `id` (stored, not yet replayed) and mark the entry; the new
    /// job's ID and queue.
    fn replay(&mut self, id: DlqId, options: &ReplayOptions, now: Timestamp) -> (JobId, String) {
        let job = transition::replay(&self.dlq[&id], options, now);
        let queue = job.queue.clone();
        let job_id = self.insert(job, None);
        if let Some(entry) = self.dlq.get_mut(&id) {
            entry.replayed_as = Some(job_id);
            entry.replayed_at = Some(now);
        }
        (job_id, queue)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dispatch_core::{
        Clock, ErrorKind, Failure, FailureKind, FinishResult, JobState, JobStore, Outcome, RunAt,
        Scope,
    };

    use super::*;
    use crate::testing::{TTL, claim, claim_one, enqueue, finish, job, lease, store};

    /// A job of `name` that dies on its first failure; its DLQ entry.
    async fn dead(store: &MemoryStore, name: &str) -> DlqId {
        let mut new = job(name, 4);
        new.max_attempts = 1;
        new.timeout = Some(Duration::from_secs(3));
        new.scope = Scope { app: Some("app".into()), tenant: None };
        enqueue(store, vec![new]).await;
        let claimed = claim_one(store, &[name]).await;
        let outcome = Outcome::Fail { failure: Failure::new(FailureKind::Error, "no") };
        match finish(store, lease(&claimed), outcome).await {
            FinishResult::Applied { dlq_id: Some(id), .. } => id,
            other => panic!("expected promotion, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rescue_promotes_after_the_last_attempt_with_every_error() {
        let (store, clock) = store();
        let mut new = job("a", 3);
        new.max_attempts = 3;
        new.timeout = Some(Duration::from_secs(7));
        new.scope = Scope { app: Some("app".into()), tenant: Some("t1".into()) };
        let id = enqueue(&store, vec![new]).await[0];
        for (attempt, kind) in [(1, FailureKind::Error), (2, FailureKind::Timeout)] {
            let claimed = claim_one(&store, &["a"]).await;
            assert_eq!(claimed.job.attempt, attempt);
            let outcome = Outcome::Retry { failure: Failure::new(kind, "x"), run_at: RunAt::Now };
            let result = finish(&store, lease(&claimed), outcome).await;
            assert_eq!(result, FinishResult::Applied { state: JobState::Available, dlq_id: None });
        }
        let claimed = claim_one(&store, &["a"]).await;
        clock.advance(TTL);
        let report = store.rescue_expired(10).await.unwrap();
        assert!(report.rescued.is_empty() && report.cancelled.is_empty());
        let [(promoted, dlq_id)] = report.promoted[..] else { panic!("{report:?}") };
        assert_eq!(promoted, id);
        assert!(claim(&store, &["a"], 1).await.is_empty());

        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.dlq_id, job.finished_at),
            (JobState::Dead, Some(dlq_id), Some(clock.now()))
        );
        let kinds: Vec<_> = job.errors.iter().map(|e| (e.attempt, e.kind)).collect();
        let expected =
            [(1, FailureKind::Error), (2, FailureKind::Timeout), (3, FailureKind::LeaseExpired)];
        assert_eq!(kinds, expected);
        assert!(job.errors[2].message.contains(&claimed.lease.owner.to_string()));
        let entry = store.get_dlq(dlq_id).await.unwrap().unwrap();
        assert_eq!(entry, DlqEntry { id: dlq_id, ..DlqEntry::for_job(&job, clock.now()) });
        assert_eq!((entry.attempts, entry.errors.len()), (3, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_makes_one_job_once() {
        let (store, clock) = store();
        let dlq_id = dead(&store, "a").await;
        clock.advance(Duration::from_secs(1));
        let replays: Vec<Replay> = replay_concurrently(&store, dlq_id).await;
        let new_id = replays[0].job_id();
        assert!(replays.iter().all(|r| r.job_id() == new_id));
        assert_eq!(replays.iter().filter(|r| matches!(r, Replay::Replayed(_))).count(), 1);
        let again = store.replay_dlq(dlq_id, &ReplayOptions::default()).await.unwrap();
        assert_eq!(again, Replay::AlreadyReplayed(new_id));

        let entry = store.get_dlq(dlq_id).await.unwrap().unwrap();
        assert_eq!((entry.replayed_as, entry.replayed_at), (Some(new_id), Some(clock.now())));
        let job = store.get_job(new_id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempt, job.run_at), (JobState::Available, 0, clock.now()));
        assert_eq!((job.max_attempts, job.errors.len(), job.dlq_id), (1, 0, None));
        let kept = (&job.name, &job.queue, &job.payload, job.priority, job.timeout, &job.scope);
        let entry_fields = (
            &entry.name,
            &entry.queue,
            &entry.payload,
            entry.priority,
            entry.timeout,
            &entry.scope,
        );
        assert_eq!(kept, entry_fields);
        assert_eq!(job.unique_key, None);
        assert_eq!(claim_one(&store, &["a"]).await.job.id, new_id);

        let err = store.replay_dlq(DlqId::new(), &ReplayOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    /// Eight replays of one entry racing on the multi-threaded runtime.
    async fn replay_concurrently(store: &MemoryStore, id: DlqId) -> Vec<Replay> {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.replay_dlq(id, &ReplayOptions::default()).await })
            })
            .collect();
        let mut replays = Vec::new();
        for task in tasks {
            replays.push(task.await.unwrap().unwrap());
        }
        replays
    }

    #[tokio::test]
    async fn lists_and_purges_by_filter() {
        let (store, clock) = store();
        let old = dead(&store, "a").await;
        clock.advance(Duration::from_secs(10));
        let replayed = dead(&store, "a").await;
        let other = dead(&store, "b").await;
        store.replay_dlq(replayed, &ReplayOptions::default()).await.unwrap();
        let ids = |page: Page<DlqEntry, DlqId>| page.items.iter().map(|e| e.id).collect::<Vec<_>>();
        let mut all = [old, replayed, other];
        all.sort();
        let page = store.list_dlq(&DlqFilter::default(), &PageRequest::first(2)).await.unwrap();
        let next = PageRequest::next_of(&page, 2).unwrap();
        assert_eq!(ids(page), &all[..2]);
        assert_eq!(ids(store.list_dlq(&DlqFilter::default(), &next).await.unwrap()), &all[2..]);
        let not_replayed =
            DlqFilter { name: Some("a".into()), replayed: Some(false), ..DlqFilter::default() };
        let page = store.list_dlq(&not_replayed, &PageRequest::first(10)).await.unwrap();
        assert_eq!(ids(page), [old]);

        let purge = DlqFilter { failed_before: Some(clock.now()), ..DlqFilter::default() };
        assert_eq!(store.purge_dlq(&purge, 100).await.unwrap(), 1);
        assert_eq!(store.get_dlq(old).await.unwrap(), None);
        let purge = DlqFilter { replayed: Some(true), ..DlqFilter::default() };
        assert_eq!(store.purge_dlq(&purge, 100).await.unwrap(), 1);
        assert_eq!(store.purge_dlq(&DlqFilter::default(), 100).await.unwrap(), 1);
        assert!(store.get_dlq(other).await.unwrap().is_none());
    }
}
