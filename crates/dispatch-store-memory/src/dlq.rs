//! [`DlqStore`] for [`MemoryStore`].

use std::ops::Bound;

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, Page, PageRequest, Replay, Result,
    transition,
};

use crate::MemoryStore;

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
        let job = transition::replay(entry, now);
        let queue = job.queue.clone();
        let job_id = state.insert(job, None);
        if let Some(entry) = state.dlq.get_mut(&id) {
            entry.replayed_as = Some(job_id);
            entry.replayed_at = Some(now);
        }
        drop(state);
        self.wakeups.notify([queue.as_str()]);
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
        let again = store.replay_dlq(dlq_id).await.unwrap();
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

        let err = store.replay_dlq(DlqId::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    /// Eight replays of one entry racing on the multi-threaded runtime.
    async fn replay_concurrently(store: &MemoryStore, id: DlqId) -> Vec<Replay> {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.replay_dlq(id).await })
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
        store.replay_dlq(replayed).await.unwrap();
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

        let purge = DlqPurge { failed_before: Some(clock.now()), ..DlqPurge::default() };
        assert_eq!(store.purge_dlq(&purge).await.unwrap(), 1);
        assert_eq!(store.get_dlq(old).await.unwrap(), None);
        let purge = DlqPurge { replayed: Some(true), ..DlqPurge::default() };
        assert_eq!(store.purge_dlq(&purge).await.unwrap(), 1);
        assert_eq!(store.purge_dlq(&DlqPurge::default()).await.unwrap(), 1);
        assert!(store.get_dlq(other).await.unwrap().is_none());
    }
}
