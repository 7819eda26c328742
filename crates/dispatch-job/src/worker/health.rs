//! What a worker knows about its own health: readiness, the last successful call of each loop,
//! the store's wake-up listener, and the last errors.
//!
//! The loops record into [`Health`] where they already log (a claim, heartbeat, finish or
//! rescue that failed; a listener error seen through the store's
//! [`listener_state`](dispatch_core::JobStore::listener_state)); [`snapshot`] turns that, the
//! attempts in flight and the hook bus's drop count into a [`WorkerHealth`], a plain value the
//! admin API can serialize. Readiness ([`ready`]) is computed, not stored, so it is the same rule
//! in the snapshot and in [`WorkerHandle::ready`](super::WorkerHandle::ready).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{ErrorKind, ListenerState, Result, SharedClock, Timestamp, WorkerId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Shared;

/// How many errors a worker remembers.
pub const RECENT_ERRORS: usize = 16;

/// How often [`ready`] looks again without being told something changed: a safety net for a
/// store whose listener connects without pushing a wake-up.
const RECHECK: Duration = Duration::from_millis(250);

/// A snapshot of one worker's health, for logs, probes and the admin API. Plain data: every
/// field serializes as a timestamp (µs since the epoch, by the worker's clock), a string or a
/// count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHealth {
    /// The worker (the owner of its leases).
    pub worker_id: WorkerId,
    /// Whether the worker is claiming and listening now: its last claim call succeeded, the
    /// store's wake-up listener (if it has one) is connected, and it is not stopping. The same
    /// rule [`WorkerHandle::ready`](super::WorkerHandle::ready) waits for.
    pub ready: bool,
    /// The last claim call that succeeded (whether it found jobs or not).
    pub last_claim: Option<Timestamp>,
    /// The last heartbeat call that succeeded. Heartbeats are sent only while the worker holds
    /// leases, so an idle worker's stays where it was.
    pub last_heartbeat: Option<Timestamp>,
    /// The last rescue of expired leases that succeeded.
    pub last_rescue: Option<Timestamp>,
    /// The store's wake-up listener; `None` when the store has none that can be lost (see
    /// [`JobStore::listener_state`](dispatch_core::JobStore::listener_state)).
    pub listener: Option<ListenerState>,
    /// Attempts running now (claimed and not yet recorded as finished).
    pub in_flight: usize,
    /// Whether the worker registry told this worker to drain: it claims nothing new (see
    /// [`WorkerBuilder::membership`](super::WorkerBuilder::membership)).
    pub draining: bool,
    /// Hook events dropped so far because hooks fell behind.
    pub hook_events_dropped: u64,
    /// The last errors, at most [`RECENT_ERRORS`], oldest first.
    pub recent_errors: Vec<RecentError>,
}

/// One error a worker met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentError {
    /// When it happened, by the worker's clock (a listener error: by the store's).
    pub at: Timestamp,
    /// What the worker was doing.
    pub operation: Operation,
    /// The error's message.
    pub message: String,
}

/// The worker operation an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Claiming jobs (or giving back the leases of a claim whose answer was lost).
    Claim,
    /// Renewing leases.
    Heartbeat,
    /// Recording ended attempts (or releasing leases at shutdown).
    Finish,
    /// Reclaiming expired leases.
    Rescue,
    /// The store's wake-up listener.
    Listener,
    /// Asking when the next scheduled job is due (while it fails, an idle worker sleeps its
    /// whole poll interval, so scheduled jobs start up to that late).
    NextDue,
}

/// A cheap, cloneable handle on a worker's health, for another task (an HTTP endpoint, a
/// metrics exporter). It stays valid after the worker stopped (then never ready), and keeps
/// the worker's store alive while it lives.
#[derive(Clone)]
pub struct HealthProbe {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for HealthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthProbe").field("worker_id", &self.shared.id).finish()
    }
}

impl HealthProbe {
    /// The worker's health now. Cheap: no store call.
    pub fn health(&self) -> WorkerHealth {
        snapshot(&self.shared)
    }
}

/// What the loops record.
pub(crate) struct Health {
    clock: SharedClock,
    record: Mutex<Record>,
    /// Told when something readiness depends on changed.
    changed: Notify,
}

#[derive(Default)]
struct Record {
    /// Whether the last claim call succeeded.
    claiming: bool,
    stopping: bool,
    last_claim: Option<Timestamp>,
    last_heartbeat: Option<Timestamp>,
    last_rescue: Option<Timestamp>,
    errors: VecDeque<RecentError>,
    /// The time of the last listener error put in `errors`.
    listener_error_seen: Option<Timestamp>,
}

impl Health {
    pub(crate) fn new(clock: SharedClock) -> Self {
        Self { clock, record: Mutex::new(Record::default()), changed: Notify::new() }
    }

    /// A claim call succeeded.
    pub(crate) fn claimed(&self) {
        let now = self.clock.now();
        let mut record = self.record.lock();
        record.last_claim = Some(now);
        let was_claiming = std::mem::replace(&mut record.claiming, true);
        drop(record);
        if !was_claiming {
            self.changed.notify_waiters();
        }
    }

    /// A claim call failed with `error`.
    pub(crate) fn claim_failed(&self, error: &dispatch_core::Error) {
        self.record.lock().claiming = false;
        self.error(Operation::Claim, error);
    }

    /// A heartbeat call succeeded.
    pub(crate) fn heartbeat(&self) {
        self.record.lock().last_heartbeat = Some(self.clock.now());
    }

    /// A rescue call succeeded.
    pub(crate) fn rescued(&self) {
        self.record.lock().last_rescue = Some(self.clock.now());
    }

    /// Remember an error of `operation`.
    pub(crate) fn error(&self, operation: Operation, error: &dispatch_core::Error) {
        let at = self.clock.now();
        self.push(RecentError { at, operation, message: error.to_string() });
    }

    fn push(&self, error: RecentError) {
        let mut record = self.record.lock();
        if record.errors.len() == RECENT_ERRORS {
            record.errors.pop_front();
        }
        record.errors.push_back(error);
    }

    /// Remember the listener's last error, once.
    pub(crate) fn listener_seen(&self, state: Option<&ListenerState>) {
        let Some((at, message)) = state.and_then(|s| s.last_error_at.zip(s.last_error.clone()))
        else {
            return;
        };
        let mut record = self.record.lock();
        if record.listener_error_seen.is_none_or(|seen| seen < at) {
            record.listener_error_seen = Some(at);
            drop(record);
            self.push(RecentError { at, operation: Operation::Listener, message });
        }
    }

    /// The store's listener may have (re)connected (it pushed a wake-up for any queue):
    /// remember its last error and tell readiness waiters to look again.
    pub(crate) fn listener_changed(&self, state: Option<&ListenerState>) {
        self.listener_seen(state);
        self.changed.notify_waiters();
    }

    /// The worker is stopping: never ready again.
    pub(crate) fn stopping(&self) {
        self.record.lock().stopping = true;
        self.changed.notify_waiters();
    }
}

/// Why the worker is not ready, or `None` when it is.
fn not_ready(record: &Record, listener: Option<&ListenerState>) -> Option<String> {
    if record.stopping {
        return Some("the worker is stopping".to_owned());
    }
    if !record.claiming {
        let last = record.errors.iter().rev().find(|e| e.operation == Operation::Claim);
        return Some(match last {
            Some(error) => format!("the last claim failed: {}", error.message),
            None => "no claim has succeeded yet".to_owned(),
        });
    }
    match listener {
        Some(state) if !state.connected => {
            let error = state.last_error.as_deref().unwrap_or("not connected yet");
            Some(format!("the store's wake-up listener is not connected: {error}"))
        }
        _ => None,
    }
}

/// Why `shared`'s worker is not ready now, or `None` when it is.
fn check(shared: &Shared) -> Option<String> {
    let listener = shared.store.listener_state();
    shared.health.listener_seen(listener.as_ref());
    not_ready(&shared.health.record.lock(), listener.as_ref())
}

/// The health of `shared`'s worker now.
pub(crate) fn snapshot(shared: &Shared) -> WorkerHealth {
    let listener = shared.store.listener_state();
    shared.health.listener_seen(listener.as_ref());
    let record = shared.health.record.lock();
    WorkerHealth {
        worker_id: shared.id,
        ready: not_ready(&record, listener.as_ref()).is_none(),
        last_claim: record.last_claim,
        last_heartbeat: record.last_heartbeat,
        last_rescue: record.last_rescue,
        listener,
        in_flight: shared.attempts.len(),
        draining: shared.drain.is_cancelled(),
        hook_events_dropped: shared.hooks.dropped(),
        recent_errors: record.errors.iter().cloned().collect(),
    }
}

/// Wait until `shared`'s worker is ready, at most its `ready_timeout`; then fail with
/// [`ErrorKind::Timeout`], saying what is missing.
pub(crate) async fn ready(shared: &Shared) -> Result<()> {
    let timeout = shared.config.ready_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = shared.health.changed.notified();
        tokio::pin!(changed);
        // Registered before looking, so a change made while we look is not missed.
        changed.as_mut().enable();
        let Some(missing) = check(shared) else { return Ok(()) };
        if tokio::time::Instant::now() >= deadline {
            let message = format!(
                "the worker was not ready within {timeout:?} ({missing}); it keeps retrying"
            );
            return Err(dispatch_core::Error::new(ErrorKind::Timeout, message));
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(RECHECK) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The error a store call that ran past the worker's store timeout is recorded as.
pub(crate) fn timed_out(call: &str) -> dispatch_core::Error {
    dispatch_core::Error::new(dispatch_core::ErrorKind::Timeout, format!("{call} timed out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(Arc::new(dispatch_core::ManualClock::fixed()))
    }

    fn listener(connected: bool, error_at: Option<i64>) -> ListenerState {
        ListenerState {
            connected,
            since: Timestamp::EPOCH,
            last_error: error_at.map(|_| "gone".to_owned()),
            last_error_at: error_at.map(Timestamp::from_unix_micros),
            reconnects: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_errors() {
        let health = health();
        for i in 0..RECENT_ERRORS + 3 {
            health.error(Operation::Finish, &dispatch_core::Error::internal(format!("e{i}")));
        }
        let errors = &health.record.lock().errors;
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert!(errors[0].message.ends_with("e3"), "{:?}", errors[0]);
        assert!(errors[RECENT_ERRORS - 1].message.ends_with(&format!("e{}", RECENT_ERRORS + 2)));
    }

    #[test]
    fn readiness_needs_a_claim_and_a_connected_listener() {
        let health = health();
        let missing =
            |listener: Option<ListenerState>| not_ready(&health.record.lock(), listener.as_ref());
        assert_eq!(missing(None).as_deref(), Some("no claim has succeeded yet"));
        health.claim_failed(&dispatch_core::Error::unavailable("down"));
        assert!(missing(None).is_some_and(|m| m.contains("down")));
        health.claimed();
        assert_eq!(missing(None), None);
        assert!(missing(Some(listener(false, None))).is_some());
        assert_eq!(missing(Some(listener(true, None))), None);
        health.stopping();
        assert_eq!(missing(None).as_deref(), Some("the worker is stopping"));
    }

    #[test]
    fn a_listener_error_is_remembered_once() {
        let health = health();
        health.listener_seen(Some(&listener(true, Some(5))));
        health.listener_seen(Some(&listener(true, Some(5))));
        health.listener_seen(Some(&listener(false, Some(9))));
        let record = health.record.lock();
        let times: Vec<i64> = record.errors.iter().map(|e| e.at.as_unix_micros()).collect();
        assert_eq!(times, [5, 9]);
        assert!(record.errors.iter().all(|e| e.operation == Operation::Listener));
    }
}
