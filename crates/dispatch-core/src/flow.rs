//! Flow control: fleet-wide limits on what a claim may start, held in the store (see
//! [`FlowStore`](crate::FlowStore)), so they hold whatever the number of workers.
//!
//! # Gates
//!
//! A claim admits a job only through every *gate* the job passes:
//!
//! * its queue's gate ([`QueueConfig::limits`]: at most `max_running` running, at most a
//!   [`Rate`] of starts);
//! * its tenant's gate within the queue, when the job has a tenant ([`QueueConfig::tenant_limits`],
//!   the same limits applied to each tenant of the queue on its own);
//! * its concurrency key's gate, when it was enqueued with a [`ConcurrencyKey`] (at most
//!   `limit` running jobs share the key, in any queue).
//!
//! A gate is state in the store: how many of its jobs are running (counted at claim, released
//! when the job leaves running by any path: finish, rescue, a sweep of a gone worker) and, for a
//! rate, its theoretical arrival time ([`GateState::tat`], GCRA). Queues without a
//! [`QueueConfig`] have no gates and claim as they always did; a queue with one is *gated*, and
//! its claims go through [`Admission`], the rule every store applies in the same operation as
//! the claim (so two workers racing can not overshoot).
//!
//! # Which jobs count
//!
//! A job is *counted* when a claim starts it in a gated queue; it holds one running slot in each
//! of its gates ([`held_gates`]) until it leaves running. Giving a queue its first config counts
//! the jobs already running there, in the same operation, so a limit set at run time holds from
//! the next claim on. Enqueuing a job with a concurrency key into a queue without a config gives
//! the queue a default one (no limits, not paused), because only a gated claim looks at keys.
//!
//! # Fairness
//!
//! A queue with [`QueueConfig::fair`] (or any tenant limit) is read in *lanes*, one per tenant
//! (jobs without a tenant are one more lane): each claim reads each admissible lane's best due
//! jobs and takes them round-robin ([`round_robin`]), the lane whose best job is oldest first. One
//! tenant's backlog of 100,000 then delays another tenant's job by at most one job per lane per
//! claim, not by the backlog. Other queues are read in plain claim order.
//!
//! # Rates
//!
//! A [`Rate`] of `jobs` per `per` with a `burst` is the generic cell rate algorithm: starts are
//! spaced `per / jobs` apart on average, and up to `burst` may start at once from rest. Over any
//! stretch of time `t`, at most `burst + t × jobs / per` start. Time is the store's clock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::JobId;
pub use crate::job::ConcurrencyKey;
use crate::job::{LeaseRef, MAX_NAME_LEN};
use crate::time::Timestamp;

/// How far a claim reads past blocked jobs in one lane before it gives up on the lane for this
/// claim (bounds a claim's cost when most of a lane's jobs wait on full key gates).
pub const LANE_SCAN_LIMIT: usize = 1000;

/// A rate limit: `jobs` starts per `per` on average, up to `burst` at once from rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    /// Starts allowed per period.
    pub jobs: u32,
    /// The period.
    pub per: Duration,
    /// How many may start at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `jobs` per `per`, with a burst of one period's worth (`jobs`).
    pub fn new(jobs: u32, per: Duration) -> Self {
        Self { jobs, per, burst: jobs }
    }

    /// `jobs` per second, with a burst of `jobs`.
    pub fn per_second(jobs: u32) -> Self {
        Self::new(jobs, Duration::from_secs(1))
    }

    /// The same rate with another burst.
    pub fn with_burst(self, burst: u32) -> Self {
        Self { burst, ..self }
    }

    /// The spacing of starts, in microseconds (at least 1).
    pub fn interval_micros(&self) -> i64 {
        let per = i64::try_from(self.per.as_micros()).unwrap_or(i64::MAX);
        (per / i64::from(self.jobs.max(1))).max(1)
    }

    /// How far ahead of now the arrival time may run, in microseconds: `burst − 1` intervals.
    pub fn tolerance_micros(&self) -> i64 {
        self.interval_micros().saturating_mul(i64::from(self.burst.max(1) - 1))
    }

    /// Check the rate is usable: at least one job, a period of at least a millisecond, a burst
    /// of at least one.
    pub fn validate(&self) -> Result<()> {
        if self.jobs == 0 || self.burst == 0 || self.per < Duration::from_millis(1) {
            return Err(Error::invalid_input(format!(
                "rate limit needs jobs ≥ 1, burst ≥ 1 and a period ≥ 1 ms, got {self:?}"
            )));
        }
        Ok(())
    }

    /// One start at `now` against a gate whose arrival time is `tat`: the new arrival time when
    /// it may start, `None` when it must wait.
    pub fn admit(&self, tat: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let from = tat.max(now);
        let ahead = from.as_unix_micros().saturating_sub(now.as_unix_micros());
        (ahead <= self.tolerance_micros())
            .then(|| Timestamp::from_unix_micros(from.as_unix_micros() + self.interval_micros()))
    }

    /// When a gate whose arrival time is `tat` may next admit a start.
    pub fn next_start(&self, tat: Timestamp) -> Timestamp {
        Timestamp::from_unix_micros(tat.as_unix_micros().saturating_sub(self.tolerance_micros()))
    }
}

/// The limits of one gate. Both empty means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// At most this many running at once, fleet-wide.
    pub max_running: Option<u32>,
    /// At most this rate of starts, fleet-wide.
    pub rate: Option<Rate>,
}

impl Limits {
    /// No limit.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether neither limit is set.
    pub fn is_empty(&self) -> bool {
        self.max_running.is_none() && self.rate.is_none()
    }

    fn validate(&self) -> Result<()> {
        self.rate.as_ref().map_or(Ok(()), Rate::validate)
    }
}

/// A queue's flow settings, kept in the store and read by every claim of the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The queue.
    pub queue: String,
    /// Limits on the whole queue.
    pub limits: Limits,
    /// Limits applied to each tenant of the queue separately (jobs without a tenant are not
    /// limited by them).
    pub tenant_limits: Limits,
    /// Read the queue in tenant lanes, round-robin, so no tenant's backlog starves another's
    /// jobs. Implied by tenant limits.
    pub fair: bool,
    /// Paused: nothing of the queue is claimed (enqueue works; running jobs finish).
    pub paused: bool,
    /// Job names of the queue that are paused on their own.
    pub paused_names: BTreeSet<String>,
}

impl QueueConfig {
    /// A config for `queue` with no limits, not fair, not paused.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            limits: Limits::none(),
            tenant_limits: Limits::none(),
            fair: false,
            paused: false,
            paused_names: BTreeSet::new(),
        }
    }

    /// At most `n` of the queue's jobs running at once, fleet-wide.
    pub fn max_running(mut self, n: u32) -> Self {
        self.limits.max_running = Some(n);
        self
    }

    /// At most `rate` starts of the queue's jobs, fleet-wide.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.limits.rate = Some(rate);
        self
    }

    /// At most `n` running jobs of each tenant of the queue.
    pub fn tenant_max_running(mut self, n: u32) -> Self {
        self.tenant_limits.max_running = Some(n);
        self
    }

    /// At most `rate` starts for each tenant of the queue.
    pub fn tenant_rate(mut self, rate: Rate) -> Self {
        self.tenant_limits.rate = Some(rate);
        self
    }

    /// Read the queue in tenant lanes, round-robin.
    pub fn fair(mut self) -> Self {
        self.fair = true;
        self
    }

    /// Whether claims read the queue in tenant lanes.
    pub fn in_lanes(&self) -> bool {
        self.fair || !self.tenant_limits.is_empty()
    }

    /// Whether jobs of `name` in this queue may be claimed now.
    pub fn claimable(&self, name: &str) -> bool {
        !self.paused && !self.paused_names.contains(name)
    }

    /// Check the config before a store keeps it.
    pub fn validate(&self) -> Result<()> {
        if self.queue.is_empty() || self.queue.len() > MAX_NAME_LEN {
            return Err(Error::invalid_input(format!(
                "queue name must be 1 to {MAX_NAME_LEN} bytes, got {} bytes",
                self.queue.len()
            )));
        }
        self.limits.validate()?;
        self.tenant_limits.validate()
    }
}

/// A queue's config as stored, with the live count of its running counted jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueFlow {
    /// The config.
    pub config: QueueConfig,
    /// Counted jobs of the queue running now (see the [module docs](self)).
    pub running: u64,
}

/// A gate's name, as stores key their gate state: `q␟queue`, `t␟queue␟tenant`, `k␟key` (␟ is
/// U+001F, which no queue, tenant or key is expected to contain).
pub fn queue_gate(queue: &str) -> String {
    format!("q\u{1f}{queue}")
}

/// The gate of `tenant` within `queue` (see [`queue_gate`]).
pub fn tenant_gate(queue: &str, tenant: &str) -> String {
    format!("t\u{1f}{queue}\u{1f}{tenant}")
}

/// The gate of a concurrency key (see [`queue_gate`]).
pub fn key_gate(key: &str) -> String {
    format!("k\u{1f}{key}")
}

/// The gates a counted job holds a running slot in while it runs: its queue's, its tenant's
/// within the queue (when it has a tenant) and its key's (when it has one).
pub fn held_gates(queue: &str, tenant: Option<&str>, key: Option<&str>) -> Vec<String> {
    let mut gates = vec![queue_gate(queue)];
    gates.extend(tenant.map(|tenant| tenant_gate(queue, tenant)));
    gates.extend(key.map(key_gate));
    gates
}

/// A gate's state in the store; the default is a gate never passed (nothing running, arrival
/// time at the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// Counted jobs running through the gate.
    pub running: u64,
    /// The rate's theoretical arrival time (the epoch when no start has been admitted).
    pub tat: Timestamp,
}

impl Default for GateState {
    fn default() -> Self {
        Self { running: 0, tat: Timestamp::EPOCH }
    }
}

/// A due job a gated claim may start, read in claim order (or a lane's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The job.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its concurrency key.
    pub key: Option<ConcurrencyKey>,
    /// Its place in claim order: priority (higher first), then run-at, then the store's
    /// enqueue sequence.
    pub order: ClaimOrder,
}

/// A job's place in claim order; sorts best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimOrder {
    /// `Reverse(priority)`: higher priority sorts first.
    pub priority: std::cmp::Reverse<i32>,
    /// Earlier run-at first.
    pub run_at: Timestamp,
    /// The store's enqueue sequence, earlier first.
    pub seq: i64,
}

impl ClaimOrder {
    /// The place of a job of `priority`, due at `run_at`, enqueued `seq`th.
    pub fn new(priority: i32, run_at: Timestamp, seq: i64) -> Self {
        Self { priority: std::cmp::Reverse(priority), run_at, seq }
    }
}

/// Merge sequences of candidates (each in its own order: claim order, or lanes round-robin)
/// into one, always taking next the head that is best in claim order. Each sequence keeps its
/// order; a gated claim offers the result to [`Admission::admit`] in turn.
pub fn merge(sequences: Vec<Vec<Candidate>>) -> Vec<Candidate> {
    let total = sequences.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = sequences.into_iter().map(|s| s.into_iter().peekable()).collect();
    let mut out = Vec::with_capacity(total);
    loop {
        let best = iters
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|c| (c.order, i)))
            .min();
        let Some((_, i)) = best else { return out };
        out.extend(iters[i].next());
    }
}

/// Interleave lanes (each in claim order): the lanes are ordered by their first job's claim
/// order, then the first job of every lane is taken, then the second of every lane, and so on.
pub fn round_robin(mut lanes: Vec<Vec<Candidate>>) -> Vec<Candidate> {
    lanes.retain(|lane| !lane.is_empty());
    lanes.sort_by_key(|lane| lane[0].order);
    let total = lanes.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = lanes.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for lane in &mut iters {
            out.extend(lane.next());
        }
    }
    out
}

/// The admission of one gated claim: the configs of the claimed queues and the state of every
/// gate its candidates pass, at the store's `now`. A store loads these under the claim's lock,
/// offers candidates in order ([`admit`](Self::admit)), claims the admitted ones and writes back
/// [`changed`](Self::changed) gates, all in one operation.
#[derive(Debug)]
pub struct Admission {
    now: Timestamp,
    configs: HashMap<String, QueueConfig>,
    gates: HashMap<String, GateState>,
    changed: BTreeSet<String>,
}

impl Admission {
    /// An admission at `now` over the given queue configs (queues without one are plain: their
    /// candidates pass only key gates) and the gate states known so far (a gate not given starts
    /// at [`GateState::default`]).
    pub fn new(
        now: Timestamp,
        configs: impl IntoIterator<Item = QueueConfig>,
        gates: impl IntoIterator<Item = (String, GateState)>,
    ) -> Self {
        Self {
            now,
            configs: configs.into_iter().map(|c| (c.queue.clone(), c)).collect(),
            gates: gates.into_iter().collect(),
            changed: BTreeSet::new(),
        }
    }

    /// The config of `queue`, if it has one.
    pub fn config(&self, queue: &str) -> Option<&QueueConfig> {
        self.configs.get(queue)
    }

    /// Add a gate's state read after the admission was made (a store may read tenant and key
    /// gates as it meets them); a gate already known keeps its state.
    pub fn know(&mut self, gate: String, state: GateState) {
        self.gates.entry(gate).or_insert(state);
    }

    /// Whether a job of `tenant` in `queue` could pass the queue's and the tenant's gates now
    /// (a lane whose tenant is blocked is not read).
    pub fn lane_open(&self, queue: &str, tenant: Option<&str>) -> bool {
        let Some(config) = self.configs.get(queue) else { return true };
        if config.paused || !self.open(&queue_gate(queue), &config.limits) {
            return false;
        }
        tenant.is_none_or(|t| self.open(&tenant_gate(queue, t), &config.tenant_limits))
    }

    /// Whether a job with `key` could pass its key gate now (full keys are skipped when reading
    /// candidates).
    pub fn key_open(&self, key: &ConcurrencyKey) -> bool {
        self.running(&key_gate(&key.key)) < u64::from(key.limit)
    }

    /// Offer a candidate: true when every gate it passes admits it now, in which case each gate
    /// counts it (a running slot taken, the rate's arrival time advanced).
    pub fn admit(&mut self, job: &Candidate) -> bool {
        let mut steps: Vec<(String, Limits)> = Vec::with_capacity(3);
        if let Some(config) = self.configs.get(&job.queue) {
            if !config.claimable(&job.name) {
                return false;
            }
            steps.push((queue_gate(&job.queue), config.limits));
            if let Some(tenant) = &job.tenant {
                steps.push((tenant_gate(&job.queue, tenant), config.tenant_limits));
            }
        }
        if let Some(key) = &job.key {
            let limits = Limits { max_running: Some(key.limit), rate: None };
            steps.push((key_gate(&key.key), limits));
        }
        let mut next = Vec::with_capacity(steps.len());
        for (gate, limits) in &steps {
            let state = self.gates.get(gate).copied().unwrap_or_default();
            if limits.max_running.is_some_and(|max| state.running >= u64::from(max)) {
                return false;
            }
            let tat = match &limits.rate {
                Some(rate) => match rate.admit(state.tat, self.now) {
                    Some(tat) => tat,
                    None => return false,
                },
                None => state.tat,
            };
            next.push(GateState { running: state.running + 1, tat });
        }
        for ((gate, _), state) in steps.into_iter().zip(next) {
            self.gates.insert(gate.clone(), state);
            self.changed.insert(gate);
        }
        true
    }

    /// The gates whose state this admission changed, with their new state, to write back.
    pub fn changed(&self) -> impl Iterator<Item = (&str, GateState)> {
        self.changed.iter().map(|gate| (gate.as_str(), self.gates[gate]))
    }

    /// When a gated queue blocked only by its rate (or its tenants' rates) may next start a job:
    /// `None` when the queue is paused or at its running limit (a finish frees it, not time).
    pub fn next_start(&self, queue: &str) -> Option<Timestamp> {
        let Some(config) = self.configs.get(queue) else { return Some(self.now) };
        let gate = queue_gate(queue);
        let full = config.limits.max_running.is_some_and(|m| self.running(&gate) >= u64::from(m));
        if config.paused || full {
            return None;
        }
        let tat = self.gates.get(&gate).map_or(Timestamp::EPOCH, |s| s.tat);
        Some(config.limits.rate.map_or(self.now, |rate| rate.next_start(tat).max(self.now)))
    }

    fn running(&self, gate: &str) -> u64 {
        self.gates.get(gate).map_or(0, |s| s.running)
    }

    fn open(&self, gate: &str, limits: &Limits) -> bool {
        let state = self.gates.get(gate).copied().unwrap_or_default();
        if limits.max_running.is_some_and(|max| state.running >= u64::from(max)) {
            return false;
        }
        limits.rate.is_none_or(|rate| rate.admit(state.tat, self.now).is_some())
    }
}

/// A progress report of a running job, written only while `lease` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// The job and the lease its handler runs under.
    pub lease: LeaseRef,
    /// The progress, as the handler gave it (any JSON).
    pub progress: serde_json::Value,
}

#[cfg(test)]
mod tests;
