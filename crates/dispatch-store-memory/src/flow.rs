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

/// The gates `job` took a slot in when `admission` admitted it: its queue's and tenant's when
/// the queue has a config, its key's when it has one.
fn passed_gates(admission: &Admission, job: &Candidate) -> Vec<String> {
    let mut gates = Vec::with_capacity(3);
    if admission.config(&job.queue).is_some() {
        gates.push(flow::queue_gate(&job.queue));
        gates.extend(job.tenant.as_deref().map(|t| flow::tenant_gate(&job.queue, t)));
    }
    gates.extend(job.key.as_ref().map(|k| flow::key_gate(&k.key)));
    gates
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
    /// Answers each admitted job's index key with the gates it took a slot in.
    pub(crate) fn claim_gated(
        &mut self,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Vec<(Key, Vec<String>)> {
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
                admitted.push((candidate.id, passed_gates(&admission, &candidate)));
            }
        }
        for (gate, state) in admission.changed() {
            self.flow.gates.insert(gate.to_owned(), state);
        }
        admitted.into_iter().filter_map(|(id, held)| Some((self.key_of(id)?, held))).collect()
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

    /// Record the gates job `id` holds a slot in (it was just claimed through the gated path).
    pub(crate) fn hold(&mut self, id: dispatch_core::JobId, held: Vec<String>) {
        if let Some(row) = self.jobs.get_mut(&id) {
            row.held = held;
        }
    }

    /// Give back job `id`'s running slots once it is no longer running.
    pub(crate) fn release_gates(&mut self, id: dispatch_core::JobId) {
        let Some(row) = self.jobs.get_mut(&id) else { return };
        if row.job.state == JobState::Running {
            return;
        }
        for gate in std::mem::take(&mut row.held) {
            if let Some(state) = self.flow.gates.get_mut(&gate) {
                state.running = state.running.saturating_sub(1);
            }
        }
    }

    /// Count the running jobs of `queue` in its gates (it just got its first config): each
    /// takes the queue's slot, and its tenant's, unless it holds them already.
    fn count_running(&mut self, queue: &str) {
        let gate = flow::queue_gate(queue);
        let ids: Vec<_> = self
            .jobs
            .values()
            .filter(|row| row.job.queue == queue && row.job.state == JobState::Running)
            .filter(|row| !row.held.contains(&gate))
            .map(|row| row.job.id)
            .collect();
        for id in ids {
            let Some(row) = self.jobs.get_mut(&id) else { continue };
            let mut gates = vec![gate.clone()];
            gates.extend(row.job.scope.tenant.as_deref().map(|t| flow::tenant_gate(queue, t)));
            for held in &gates {
                self.flow.gates.entry(held.clone()).or_default().running += 1;
            }
            row.held.extend(gates);
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
