//! The records of a cluster of workers sharing one store: the worker registry
//! ([`MembershipStore`](crate::MembershipStore)) and leader election
//! ([`LeadershipStore`](crate::LeadershipStore)), with the leadership rules as plain functions
//! (as [`transition`](crate::transition) is for jobs), so every store decides the same way.
//!
//! A worker's liveness comes from its registry heartbeat; a leader's right to act from its
//! term. A term is *valid* exactly while it is the leadership's current term and its lease has
//! not expired by the store's clock; every leader write checks that in the same store
//! operation, so a leader paused past its lease can do nothing after it resumes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::WorkerId;
use crate::job::RescueReport;
use crate::time::Timestamp;

/// Where a registered worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Heartbeating and claiming.
    Active,
    /// Told to drain: it claims nothing new, finishes or releases its work, then deregisters.
    Draining,
    /// Marked gone by the leader after its heartbeat stopped; its leases were rescued. A gone
    /// worker that heartbeats again (it was only paused) registers again.
    Gone,
}

impl WorkerState {
    /// The stable lowercase name stores persist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Gone => "gone",
        }
    }

    /// The state named by [`as_str`](Self::as_str), or `None`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "draining" => Some(Self::Draining),
            "gone" => Some(Self::Gone),
            _ => None,
        }
    }
}

/// What a worker says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// The worker's ID: the lease owner of every job it claims.
    pub id: WorkerId,
    /// The host it runs on.
    pub host: String,
    /// Its operating-system process ID.
    pub pid: u32,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub concurrency: u32,
    /// The application's (or Dispatch's) version, for rolling deploys.
    pub version: String,
}

/// A worker as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// What the worker registered.
    pub registration: WorkerRegistration,
    /// Its state.
    pub state: WorkerState,
    /// When it first registered (store time).
    pub started_at: Timestamp,
    /// Its last heartbeat (store time).
    pub last_seen: Timestamp,
}

/// The answer to a worker's heartbeat: its state in the registry and its leases' report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHeartbeat {
    /// The worker's state after the heartbeat: [`WorkerState::Draining`] tells it to drain;
    /// [`WorkerState::Gone`] says it had been marked gone (its leases were rescued and show as
    /// lost) or is not registered: it should register again.
    pub state: WorkerState,
    /// The leases' renewal, as [`JobStore::heartbeat`](crate::JobStore::heartbeat) reports it.
    pub leases: crate::job::HeartbeatReport,
}

/// What one sweep of the registry did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Workers marked gone by this sweep.
    pub gone: Vec<WorkerId>,
    /// The running jobs of gone workers this sweep reclaimed.
    pub rescue: RescueReport,
}

/// A leadership term: who leads `name`, under which term, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// What is led (one leadership per name; Dispatch's own work uses
    /// [`DEFAULT_LEADERSHIP`]).
    pub name: String,
    /// The holder.
    pub holder: WorkerId,
    /// The term: it only grows, by one per new holding (the fencing token).
    pub term: u64,
    /// When the term began (store time).
    pub elected_at: Timestamp,
    /// When the lease ends unless renewed (store time).
    pub expires_at: Timestamp,
}

/// The leadership name Dispatch's own leader work (dead-worker sweeps, retention, cron) runs
/// under.
pub const DEFAULT_LEADERSHIP: &str = "dispatch";

/// One write the store accepted under a leader term, as the store records it: the record from
/// which an operator (or a test) checks that no two terms ever wrote in the same period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderWrite {
    /// The leadership.
    pub name: String,
    /// The term the write was made under.
    pub term: u64,
    /// When the store accepted it (store time).
    pub at: Timestamp,
    /// What it was (`sweep`, later `retention`, `cron`).
    pub action: String,
}

/// How many accepted leader writes a store keeps per leadership (the oldest go first).
pub const LEADER_WRITES_KEPT: usize = 1000;

/// The outcome of an attempt to take leadership `name` for `holder` at `now` with a lease of
/// `ttl` ([`LeadershipStore::acquire_leadership`](crate::LeadershipStore::acquire_leadership)):
/// a valid term of the same holder is renewed (same term); a free or expired leadership is
/// taken under the next term; a valid term of another holder stays, and `None` is answered.
pub fn acquire(
    current: Option<&Leader>,
    name: &str,
    holder: WorkerId,
    now: Timestamp,
    ttl: Duration,
) -> Option<Leader> {
    match current {
        Some(leader) if is_valid(leader, now) => {
            (leader.holder == holder).then(|| renewed(leader, now, ttl))
        }
        _ => Some(take(current, name, holder, now, ttl)),
    }
}

/// The next term for `holder`, whoever holds the leadership now (an external election, such as
/// a Kubernetes Lease, decided: see
/// [`LeadershipStore::take_leadership`](crate::LeadershipStore::take_leadership)).
pub fn take(
    current: Option<&Leader>,
    name: &str,
    holder: WorkerId,
    now: Timestamp,
    ttl: Duration,
) -> Leader {
    Leader {
        name: name.to_owned(),
        holder,
        term: current.map_or(1, |leader| leader.term + 1),
        elected_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

/// The renewal of `term` at `now`: the leader with its lease extended to `now + ttl`, or
/// `None` when `term` is no longer valid (a newer term, or its lease expired: the holder must
/// acquire again and gets a new term).
pub fn renew(
    current: Option<&Leader>,
    term: &Leader,
    now: Timestamp,
    ttl: Duration,
) -> Option<Leader> {
    let leader = current?;
    (holds(leader, term, now)).then(|| renewed(leader, now, ttl))
}

/// Whether `term` may act at `now` while `current` is the stored leadership: it is the current
/// term of the same holder and its lease has not expired. Every leader write checks this in
/// its own store operation.
pub fn holds(current: &Leader, term: &Leader, now: Timestamp) -> bool {
    current.term == term.term && current.holder == term.holder && is_valid(current, now)
}

fn is_valid(leader: &Leader, now: Timestamp) -> bool {
    now < leader.expires_at
}

fn renewed(leader: &Leader, now: Timestamp, ttl: Duration) -> Leader {
    Leader { expires_at: now.saturating_add(ttl), ..leader.clone() }
}

/// Whether a worker last seen at `last_seen` is overdue at `now` with heartbeat timeout
/// `timeout` (the sweep marks it gone).
pub fn is_overdue(last_seen: Timestamp, now: Timestamp, timeout: Duration) -> bool {
    last_seen.saturating_add(timeout) < now
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_900_000_000_000_000 + secs * 1_000_000)
    }

    #[test]
    fn acquire_renew_and_takeover() {
        let (a, b) = (WorkerId::new(), WorkerId::new());
        let first = acquire(None, "x", a, at(0), TTL).unwrap();
        assert_eq!((first.term, first.holder), (1, a));
        assert_eq!(acquire(Some(&first), "x", b, at(5), TTL), None, "held by a");
        let again = acquire(Some(&first), "x", a, at(5), TTL).unwrap();
        assert_eq!((again.term, again.expires_at), (1, at(15)), "same holder renews");
        let taken = acquire(Some(&again), "x", b, at(15), TTL).unwrap();
        assert_eq!((taken.term, taken.holder), (2, b), "expired: next term");
        assert_eq!(renew(Some(&taken), &again, at(16), TTL), None, "old term can not renew");
        assert!(renew(Some(&taken), &taken, at(16), TTL).is_some());
        assert_eq!(renew(Some(&taken), &taken, at(25), TTL), None, "expired term can not renew");
        let lapsed = acquire(Some(&taken), "x", b, at(25), TTL).unwrap();
        assert_eq!(lapsed.term, 3, "re-acquiring after expiry is a new term");
        assert_eq!(take(Some(&lapsed), "x", a, at(26), TTL).term, 4);
    }

    #[test]
    fn holds_needs_current_term_and_live_lease() {
        let a = WorkerId::new();
        let leader = acquire(None, "x", a, at(0), TTL).unwrap();
        assert!(holds(&leader, &leader, at(9)));
        assert!(!holds(&leader, &leader, at(10)));
        let old = Leader { term: 0, ..leader.clone() };
        assert!(!holds(&leader, &old, at(1)));
    }

    #[test]
    fn overdue() {
        assert!(!is_overdue(at(0), at(5), Duration::from_secs(5)));
        assert!(is_overdue(at(0), at(6), Duration::from_secs(5)));
    }
}
