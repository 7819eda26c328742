//! [`CronStore`] for [`MemoryStore`]: entries in a map by ID with an index by `(scope, name)`;
//! a fire is applied under the store's one lock, so it is atomic with the jobs it enqueues.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use async_trait::async_trait;
use dispatch_core::{
    CronEntry, CronFilter, CronFire, CronFireOutcome, CronId, CronRecord, CronStore, DueCron,
    Error, JobState, Leader, Page, PageRequest, Result, Scope, Timestamp, cron,
};

use crate::enqueue::validate_batch;
use crate::{MemoryStore, State};

/// The cron entries of a store.
#[derive(Debug, Default)]
pub(crate) struct Crons {
    entries: BTreeMap<CronId, CronRecord>,
    by_name: HashMap<(Scope, String), CronId>,
}

impl Crons {
    /// Insert or update `entry` by its `(scope, name)`, per [`cron::saved`].
    fn save(
        &mut self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
        now: Timestamp,
    ) -> CronRecord {
        let key = (entry.scope.clone(), entry.name.clone());
        let stored = self.by_name.get(&key).and_then(|id| self.entries.get(id)).cloned();
        let record = cron::saved(stored, entry, next_fire, now);
        self.by_name.insert(key, record.id);
        self.entries.insert(record.id, record.clone());
        record
    }
}

#[async_trait]
impl CronStore for MemoryStore {
    async fn save_cron(
        &self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let now = self.clock.now();
        Ok(self.state.lock().cron.save(entry, next_fire, now))
    }

    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>> {
        Ok(self.state.lock().cron.entries.get(&id).cloned())
    }

    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        let state = self.state.lock();
        let id = state.cron.by_name.get(&(scope.clone(), name.to_owned()));
        Ok(id.and_then(|id| state.cron.entries.get(id)).cloned())
    }

    async fn list_cron(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        let limit = page.effective_limit();
        let start = page.after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.state.lock();
        let items = state
            .cron
            .entries
            .range((start, Bound::Unbounded))
            .map(|(_, record)| record)
            .filter(|r| filter.matches(r))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |record| record.id))
    }

    async fn set_cron_enabled(
        &self,
        id: CronId,
        enabled: bool,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let record = state
            .cron
            .entries
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("no cron entry {id}")))?;
        cron::set_enabled(record, enabled, next_fire, now);
        Ok(record.clone())
    }

    async fn delete_cron(&self, id: CronId) -> Result<bool> {
        let mut state = self.state.lock();
        let Some(record) = state.cron.entries.remove(&id) else { return Ok(false) };
        state.cron.by_name.remove(&(record.entry.scope, record.entry.name));
        Ok(true)
    }

    async fn due_cron(&self, limit: usize) -> Result<DueCron> {
        let now = self.clock.now();
        let state = self.state.lock();
        let mut due: Vec<&CronRecord> = state
            .cron
            .entries
            .values()
            .filter(|r| r.entry.enabled && r.next_fire.is_some_and(|at| at <= now))
            .collect();
        due.sort_by_key(|r| (r.next_fire, r.id));
        let entries = due.into_iter().take(limit).cloned().collect();
        Ok(DueCron { now, entries })
    }

    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>> {
        for fire in &fires {
            validate_batch(&fire.jobs, self.max_payload_bytes)?;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        state.cluster.fence(term, "cron", now)?;
        let mut woken = Vec::new();
        let outcomes = fires
            .into_iter()
            .map(|fire| state.fire(fire, now, &mut woken))
            .collect::<Result<Vec<_>>>()?;
        drop(state);
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(outcomes)
    }
}

impl State {
    /// Apply one fire, per [`CronStore::fire_cron`]; queues to wake go to `woken`.
    fn fire(
        &mut self,
        fire: CronFire,
        now: Timestamp,
        woken: &mut Vec<String>,
    ) -> Result<CronFireOutcome> {
        let Some(record) = self.cron.entries.get(&fire.id) else {
            return Ok(CronFireOutcome::Stale);
        };
        if !record.entry.enabled || record.next_fire != Some(fire.expected_next) {
            return Ok(CronFireOutcome::Stale);
        }
        let unfinished = record.last_job.filter(|id| {
            self.jobs
                .get(id)
                .is_some_and(|row| matches!(row.job.state, JobState::Available | JobState::Running))
        });
        let outcome = match unfinished {
            Some(previous) if fire.skip_if_running => CronFireOutcome::Overlapped { previous },
            _ => {
                let (enqueued, queues) = self.enqueue_batch(fire.jobs, now)?;
                woken.extend(queues);
                CronFireOutcome::Fired(enqueued)
            }
        };
        if let Some(record) = self.cron.entries.get_mut(&fire.id) {
            record.next_fire = fire.next_fire;
            if let CronFireOutcome::Fired(enqueued) = &outcome
                && let Some(last) = enqueued.last()
            {
                record.last_fired = fire.fired;
                record.last_job = Some(last.id());
            }
        }
        Ok(outcome)
    }
}
