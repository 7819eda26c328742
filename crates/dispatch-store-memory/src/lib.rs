//! The in-process Dispatch store: every store contract, kept in memory.
//!
//! Use it for tests, demos and single-process tools, and as the reference the other stores are
//! compared against: it passes the whole `dispatch-store-tests` suite. It is not durable: what
//! it holds is gone when the process ends. All state sits behind one mutex that is never held
//! across an `.await`, so every call is atomic, as the contracts require of a transaction.
//!
//! ```
//! use dispatch_store_memory::MemoryStore;
//! let store = MemoryStore::new();
//! # let _ = store;
//! ```

mod claim;
mod cluster;
mod cron;
mod dlq;
mod enqueue;
mod events;
mod finish;
mod flow;
mod index;
mod job;
mod retention;
mod rewind;
mod run;
#[cfg(test)]
mod testing;
mod workflow;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{
    DlqEntry, DlqId, Job, JobId, JobState, LeaseToken, SharedClock, SystemClock, Timestamp,
};
use parking_lot::Mutex;

use index::AvailableIndex;

/// The in-process store. Cheap to clone: clones share the same jobs.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: SharedClock,
    max_payload_bytes: usize,
    /// Wakes subscribed workers after calls that make jobs available.
    wakeups: dispatch_core::WakeupHub,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store reading time from `clock` (tests inject a manual clock).
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            clock,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            wakeups: dispatch_core::WakeupHub::new(),
        }
    }

    /// Reject payloads larger than `bytes` (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }
}

/// One stored job and the bookkeeping around it.
#[derive(Debug)]
struct Row {
    job: Job,
    /// Enqueue order, for FIFO within a priority.
    seq: u64,
    /// The token of the last finish applied, to answer a repeated finish with "already applied".
    last_finish: Option<LeaseToken>,
    /// When a unique window was given: the key stays held until then.
    unique_until: Option<Timestamp>,
    /// Whether it holds a running slot in its flow gates (see `dispatch_core::flow`).
    counted: bool,
}

impl Row {
    fn holds_unique_key(&self, now: Timestamp) -> bool {
        matches!(self.job.state, JobState::Available | JobState::Running)
            || self.unique_until.is_some_and(|until| now < until)
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<JobId, Row>,
    available: AvailableIndex,
    /// Running jobs by lease expiry, for rescue.
    expiries: BTreeSet<(Timestamp, JobId)>,
    /// (job name, key) → the job that last took the key.
    unique: HashMap<(String, String), JobId>,
    dlq: BTreeMap<DlqId, DlqEntry>,
    /// Workflow runs, checkpoints, waits and kept events.
    runs: run::Runs,
    /// The worker registry and leadership terms.
    cluster: cluster::Cluster,
    /// Cron entries.
    cron: cron::Crons,
    /// Queue configs and gate states.
    flow: flow::Flow,
    next_seq: u64,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Put a job (already in `jobs`) into the available state at `run_at`.
    fn make_available(&mut self, id: JobId, run_at: Timestamp) {
        let Some(row) = self.jobs.get_mut(&id) else { return };
        row.job.state = JobState::Available;
        row.job.run_at = run_at;
        self.index(id);
    }

    /// Put a job into the claim index when its record says it is available (a transition may
    /// have just made it so).
    fn index(&mut self, id: JobId) {
        let Some(row) = self.jobs.get(&id) else { return };
        if row.job.state == JobState::Available {
            let key = index::key(row.job.priority, row.job.run_at, row.seq, id);
            let tenant = row.job.scope.tenant.as_deref();
            self.available.insert(&row.job.queue, &row.job.name, tenant, key);
        }
    }

    /// Take a job out of the available index (it is about to change state).
    fn unindex(&mut self, id: JobId) {
        let Some(row) = self.jobs.get(&id) else { return };
        if row.job.state == JobState::Available {
            let key = index::key(row.job.priority, row.job.run_at, row.seq, id);
            let tenant = row.job.scope.tenant.as_deref();
            self.available.remove(&row.job.queue, &row.job.name, tenant, &key);
        }
    }

    /// Drop a running job's lease and its expiry entry.
    fn clear_lease(&mut self, id: JobId) {
        let Some(row) = self.jobs.get_mut(&id) else { return };
        if let Some(lease) = row.job.lease.take() {
            self.expiries.remove(&(lease.expires_at, id));
        }
        row.job.cancel_requested = false;
    }
}
