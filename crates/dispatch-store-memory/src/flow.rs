//! Flow control for [`MemoryStore`](crate::MemoryStore): queue configs and gate states under
//! the store's one lock, the gated claim (`dispatch_core::flow::Admission` over candidates read
//! from the claim index and its tenant lanes), gates released when a counted job leaves running,
//! and progress reports.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use dispatch_core::flow::{self, Admission, Candidate, ClaimOrder, GateState, LANE_SCAN_LIMIT};
use dispatch_core::{
    ClaimRequest, FlowStore, JobState, ProgressUpdate, QueueConfig, QueueFlow, Result, Timestamp,
};

use crate::index::{Key, collect_due_where};
use crate::{MemoryStore, State};

/// Queue configs and the state of every gate.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    configs: BTreeMap<String, QueueConfig>,
    gates: HashMap<String, GateState>,
}

impl Flow {
    fn queue_flow(&self, config: &QueueConfig) -> QueueFlow {
        let running = self.gates.get(&flow::queue_gate(&config.queue)).map_or(0, |g| g.running);
        QueueFlow { config: config.clone(), running }
    }

    /// Whether jobs of `name` in `queue` may be claimed (no config, or not paused).
    pub(crate) fn claimable(&self, queue: &str, name: &str) -> bool {
        self.configs.get(queue).is_none_or(|config| config.claimable(name))
    }
}

impl State {
    /// Whether jobs of `name` in `queue` may be claimed (paused ones are left out of next-due).
    pub(crate) fn flow_claimable(&self, queue: &str, name: &str) -> bool {
        self.flow.claimable(queue, name)
    }

    /// Whether a claim of `queues` takes the gated path: one of them has a config.
    pub(crate) fn gated(&self, queues: &[String]) -> bool {
        queues.iter().any(|queue| self.flow.configs.contains_key(queue))
    }

    /// Give `queue` a default config when it has none (a job with a concurrency key arrived).
    pub(crate) fn ensure_config(&mut self, queue: &str) {
        if !self.flow.configs.contains_key(queue) {
            self.flow.configs.insert(queue.to_owned(), QueueConfig::new(queue));
        }
    }

    /// The gated claim: candidates per (queue, name) pair, merged, admitted one by one.
    pub(crate) fn claim_gated(&mut self, request: &ClaimRequest, now: Timestamp) -> Vec<Key> {
        let configs = request.queues.iter().filter_map(|q| self.flow.configs.get(q)).cloned();
        let mut admission = Admission::new(now, configs, self.flow.gates.clone());
        let mut sequences = Vec::new();
        for queue in &request.queues {
            for name in &request.names {
                if self.flow.claimable(queue, name) {
                    sequences.push(self.pair_candidates(
                        queue,
                        name,
                        request.limit,
                        &admission,
                        now,
                    ));
                }
            }
        }
        let mut admitted = Vec::new();
        for candidate in flow::merge(sequences) {
            if admitted.len() == request.limit {
                break;
            }
            if admission.admit(&candidate) {
                admitted.push(candidate.id);
            }
        }
        for (gate, state) in admission.changed() {
            self.flow.gates.insert(gate.to_owned(), state);
        }
        admitted.into_iter().filter_map(|id| self.key_of(id)).collect()
    }

    /// One pair's candidates: its tenant lanes round-robin when the queue is read in lanes,
    /// else its due jobs in claim order; jobs whose key gate is full are skipped.
    fn pair_candidates(
        &self,
        queue: &str,
        name: &str,
        limit: usize,
        admission: &Admission,
        now: Timestamp,
    ) -> Vec<Candidate> {
        let in_lanes = admission.config(queue).is_some_and(QueueConfig::in_lanes);
        if !in_lanes {
            let Some(set) = self.available.pair(queue, name) else { return Vec::new() };
            return self.due_candidates(set, limit, admission, now);
        }
        let Some(lanes) = self.available.lanes(queue, name) else { return Vec::new() };
        let lanes = lanes
            .iter()
            .filter(|(tenant, _)| admission.lane_open(queue, tenant.as_deref()))
            .map(|(_, set)| self.due_candidates(set, limit, admission, now))
            .collect();
        flow::round_robin(lanes)
    }

    fn due_candidates(
        &self,
        set: &std::collections::BTreeSet<Key>,
        limit: usize,
        admission: &Admission,
        now: Timestamp,
    ) -> Vec<Candidate> {
        let key_open = |key: &Key| {
            let job = self.jobs.get(&key.3).and_then(|row| row.job.concurrency.as_ref());
            job.is_none_or(|k| admission.key_open(k))
        };
        let mut keys = Vec::new();
        collect_due_where(set, now, limit, LANE_SCAN_LIMIT, key_open, &mut keys);
        keys.iter().filter_map(|key| self.candidate(key)).collect()
    }

    fn candidate(&self, key: &Key) -> Option<Candidate> {
        let job = &self.jobs.get(&key.3)?.job;
        let seq = i64::try_from(key.2).unwrap_or(i64::MAX);
        Some(Candidate {
            id: job.id,
            queue: job.queue.clone(),
            name: job.name.clone(),
            tenant: job.scope.tenant.clone(),
            key: job.concurrency.clone(),
            order: ClaimOrder::new(job.priority, job.run_at, seq),
        })
    }

    fn key_of(&self, id: dispatch_core::JobId) -> Option<Key> {
        let row = self.jobs.get(&id)?;
        Some(crate::index::key(row.job.priority, row.job.run_at, row.seq, id))
    }

    /// Count job `id` in its gates (it was just claimed through the gated path).
    pub(crate) fn mark_counted(&mut self, id: dispatch_core::JobId) {
        if let Some(row) = self.jobs.get_mut(&id) {
            row.counted = true;
        }
    }

    /// Give back job `id`'s running slots when it is counted and no longer running.
    pub(crate) fn release_gates(&mut self, id: dispatch_core::JobId) {
        let Some(row) = self.jobs.get_mut(&id) else { return };
        if !row.counted || row.job.state == JobState::Running {
            return;
        }
        row.counted = false;
        let job = &row.job;
        let key = job.concurrency.as_ref().map(|k| k.key.as_str());
        for gate in flow::held_gates(&job.queue, job.scope.tenant.as_deref(), key) {
            if let Some(state) = self.flow.gates.get_mut(&gate) {
                state.running = state.running.saturating_sub(1);
            }
        }
    }

    /// Count the running, uncounted jobs of `queue` (it just got its first config).
    fn count_running(&mut self, queue: &str) {
        let ids: Vec<_> = self
            .jobs
            .values()
            .filter(|row| row.job.queue == queue && row.job.state == JobState::Running)
            .filter(|row| !row.counted)
            .map(|row| row.job.id)
            .collect();
        for id in ids {
            let Some(row) = self.jobs.get_mut(&id) else { continue };
            row.counted = true;
            let job = &row.job;
            let key = job.concurrency.as_ref().map(|k| k.key.as_str());
            for gate in flow::held_gates(&job.queue, job.scope.tenant.as_deref(), key) {
                self.flow.gates.entry(gate).or_default().running += 1;
            }
        }
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow> {
        config.validate()?;
        let mut state = self.state.lock();
        let first = !state.flow.configs.contains_key(&config.queue);
        state.flow.configs.insert(config.queue.clone(), config.clone());
        if first {
            state.count_running(&config.queue);
        }
        Ok(state.flow.queue_flow(config))
    }

    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>> {
        let state = self.state.lock();
        Ok(state.flow.configs.get(queue).map(|config| state.flow.queue_flow(config)))
    }

    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>> {
        let state = self.state.lock();
        Ok(state.flow.configs.values().map(|config| state.flow.queue_flow(config)).collect())
    }

    async fn delete_queue_config(&self, queue: &str) -> Result<bool> {
        Ok(self.state.lock().flow.configs.remove(queue).is_some())
    }

    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        QueueConfig::new(queue).validate()?;
        let mut state = self.state.lock();
        if !state.flow.configs.contains_key(queue) {
            state.ensure_config(queue);
            state.count_running(queue);
        }
        let Some(config) = state.flow.configs.get_mut(queue) else { return Ok(false) };
        let changed = match name {
            None => std::mem::replace(&mut config.paused, paused) != paused,
            Some(name) if paused => config.paused_names.insert(name.to_owned()),
            Some(name) => config.paused_names.remove(name),
        };
        if changed && !paused {
            drop(state);
            self.wakeups.notify([queue]);
        }
        Ok(changed)
    }

    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>> {
        let mut state = self.state.lock();
        let written = updates
            .iter()
            .map(|update| {
                let Some(row) = state.jobs.get_mut(&update.lease.job_id) else { return false };
                let holds = row.job.state == JobState::Running
                    && row.job.lease.is_some_and(|lease| lease.token == update.lease.token);
                if holds {
                    row.job.progress = Some(update.progress.clone());
                }
                holds
            })
            .collect();
        Ok(written)
    }
}
