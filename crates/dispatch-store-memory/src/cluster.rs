//! [`MembershipStore`] and [`LeadershipStore`] for [`MemoryStore`]: the worker registry, the
//! leader's sweep of silent workers, and leadership terms with their record of accepted writes,
//! decided by [`dispatch_core::cluster`] and [`dispatch_core::transition`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::cluster::{self, LEADER_WRITES_KEPT};
use dispatch_core::{
    Error, ErrorKind, HeartbeatReport, JobId, Leader, LeaderWrite, LeadershipStore, LeaseRef,
    MembershipStore, RescueReport, Result, SweepReport, Timestamp, WorkerHeartbeat, WorkerId,
    WorkerRecord, WorkerRegistration, WorkerState, transition,
};

use crate::{MemoryStore, State};

/// The cluster's part of the store's state.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    pub(crate) workers: BTreeMap<WorkerId, WorkerRecord>,
    leaders: HashMap<String, Leader>,
    writes: HashMap<String, VecDeque<LeaderWrite>>,
}

impl Cluster {
    /// Whether `term` may write now; the write recorded when it may (`NotLeader` otherwise).
    pub(crate) fn fence(&mut self, term: &Leader, action: &str, now: Timestamp) -> Result<()> {
        let current = self.leaders.get(&term.name);
        if !current.is_some_and(|current| cluster::holds(current, term, now)) {
            return Err(not_leader(term));
        }
        let writes = self.writes.entry(term.name.clone()).or_default();
        if writes.len() == LEADER_WRITES_KEPT {
            writes.pop_front();
        }
        let write = LeaderWrite {
            name: term.name.clone(),
            term: term.term,
            at: now,
            action: action.into(),
        };
        writes.push_back(write);
        Ok(())
    }

    /// Mark every active or draining worker silent past `timeout` gone; their IDs.
    fn mark_silent_gone(&mut self, timeout: Duration, now: Timestamp) -> Vec<WorkerId> {
        let mut gone = Vec::new();
        for (id, record) in &mut self.workers {
            if record.state != WorkerState::Gone
                && cluster::is_overdue(record.last_seen, now, timeout)
            {
                record.state = WorkerState::Gone;
                gone.push(*id);
            }
        }
        gone
    }

    fn gone_workers(&self) -> HashSet<WorkerId> {
        let gone = self.workers.iter().filter(|(_, w)| w.state == WorkerState::Gone);
        gone.map(|(&id, _)| id).collect()
    }
}

fn not_leader(term: &Leader) -> Error {
    Error::new(
        ErrorKind::NotLeader,
        format!("term {} of leadership {:?} is no longer valid", term.term, term.name),
    )
}

impl State {
    /// Reclaim up to `limit` running jobs leased by `gone` workers, oldest lease expiry first.
    fn rescue_lost(
        &mut self,
        gone: &HashSet<WorkerId>,
        limit: usize,
        now: Timestamp,
    ) -> RescueReport {
        let lost: Vec<JobId> = self
            .expiries
            .iter()
            .filter(|(_, id)| {
                let owner = self.jobs.get(id).and_then(|row| row.job.lease).map(|l| l.owner);
                owner.is_some_and(|owner| gone.contains(&owner))
            })
            .take(limit)
            .map(|&(_, id)| id)
            .collect();
        let mut report = RescueReport::default();
        for id in lost {
            let Some(row) = self.jobs.get_mut(&id) else { continue };
            let lease = row.job.lease;
            let dlq = transition::rescue_from_lost_worker(&mut row.job, now, &mut report);
            self.left_running(id, lease, dlq, now);
        }
        report
    }
}

#[async_trait]
impl MembershipStore for MemoryStore {
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let started_at = state.cluster.workers.get(&worker.id).map_or(now, |w| w.started_at);
        let record = WorkerRecord {
            registration: worker.clone(),
            state: WorkerState::Active,
            started_at,
            last_seen: now,
        };
        state.cluster.workers.insert(worker.id, record.clone());
        Ok(record)
    }

    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let worker_state = match state.cluster.workers.get_mut(&worker) {
            Some(record) if record.state != WorkerState::Gone => {
                record.last_seen = now;
                record.state
            }
            _ => WorkerState::Gone,
        };
        let leases = if leases.is_empty() {
            HeartbeatReport::default()
        } else {
            state.heartbeat(leases, now + lease_ttl)
        };
        Ok(WorkerHeartbeat { state: worker_state, leases })
    }

    async fn drain_worker(&self, worker: WorkerId) -> Result<()> {
        let mut state = self.state.lock();
        let Some(record) = state.cluster.workers.get_mut(&worker) else {
            return Err(Error::new(ErrorKind::NotFound, format!("no worker {worker}")));
        };
        if record.state == WorkerState::Active {
            record.state = WorkerState::Draining;
        }
        Ok(())
    }

    async fn deregister_worker(&self, worker: WorkerId) -> Result<()> {
        self.state.lock().cluster.workers.remove(&worker);
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.state.lock().cluster.workers.values().cloned().collect())
    }

    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        state.cluster.fence(term, "sweep", now)?;
        let gone = state.cluster.mark_silent_gone(timeout, now);
        let all_gone = state.cluster.gone_workers();
        let rescue = state.rescue_lost(&all_gone, limit, now);
        drop(state);
        if !rescue.rescued.is_empty() {
            self.wakeups.send(&dispatch_core::Wakeup::any());
        }
        Ok(SweepReport { gone, rescue })
    }
}

#[async_trait]
impl LeadershipStore for MemoryStore {
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let leaders = &mut state.cluster.leaders;
        let next = cluster::acquire(leaders.get(name), name, holder, now, ttl);
        if let Some(leader) = &next {
            leaders.insert(name.to_owned(), leader.clone());
        }
        Ok(next)
    }

    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let leaders = &mut state.cluster.leaders;
        let next = cluster::renew(leaders.get(&term.name), term, now, ttl);
        if let Some(leader) = &next {
            leaders.insert(term.name.clone(), leader.clone());
        }
        Ok(next)
    }

    async fn resign_leadership(&self, term: &Leader) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if let Some(current) = state.cluster.leaders.get_mut(&term.name)
            && cluster::holds(current, term, now)
        {
            current.expires_at = now;
        }
        Ok(())
    }

    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let leaders = &mut state.cluster.leaders;
        let leader = cluster::take(leaders.get(name), name, holder, now, ttl);
        leaders.insert(name.to_owned(), leader.clone());
        Ok(leader)
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(self.state.lock().cluster.leaders.get(name).cloned())
    }

    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>> {
        let state = self.state.lock();
        let Some(writes) = state.cluster.writes.get(name) else { return Ok(Vec::new()) };
        let limit = limit.min(LEADER_WRITES_KEPT);
        Ok(writes.iter().skip(writes.len().saturating_sub(limit)).cloned().collect())
    }
}
