//! Cron entries as the store keeps them, and the records of a fire, for the
//! [`CronStore`](crate::CronStore) contract.
//!
//! The store is the single source of truth for every entry: its schedule, its job template and
//! the scheduled time it fires next. Schedule arithmetic (parsing, time zones, catch-up) lives
//! in `dispatch-cron`, which computes each fire; the store applies a fire as one fenced
//! compare-and-set: the entry's next fire must still be the one the leader read, and the jobs
//! it enqueues carry a unique key of (entry, scheduled time), so neither a leader change nor a
//! crash between two steps can fire a scheduled time twice or skip it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{CronId, JobId};
use crate::job::{Enqueued, NewJob};
use crate::scope::Scope;
use crate::time::Timestamp;

/// What an entry does after downtime, when scheduled times older than its grace were missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum CatchUp {
    /// Skip the missed times; fire again at the next scheduled time (or at a missed time still
    /// within the grace).
    #[default]
    Skip,
    /// Fire once, for the most recent missed time, and skip the others.
    Once,
    /// Fire each missed time, the most recent `limit` of them, oldest first.
    Each {
        /// How many missed times at most.
        limit: u32,
    },
}

/// What a fire does while the entry's previous job has not finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Enqueue anyway.
    #[default]
    Allow,
    /// Skip the fire while the previous job is available or running (its schedule still
    /// advances).
    Skip,
}

/// The job an entry enqueues at each fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJob {
    /// The job name: which handler runs it.
    pub name: String,
    /// The queue.
    pub queue: String,
    /// The encoded input, the same at every fire.
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts allowed, the first included.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout: Option<Duration>,
}

/// A cron entry as registered: what fires, when, in which time zone, and for whom. Entries are
/// identified by `(scope, name)`: registering the same pair again updates the entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronEntry {
    /// The entry's name, unique within its scope.
    pub name: String,
    /// Tenant scope, carried into every job the entry enqueues.
    pub scope: Scope,
    /// The cron expression as given (five or six fields, or a descriptor such as `@hourly`).
    pub schedule: String,
    /// The IANA time zone the expression is read in (`UTC` by default).
    pub timezone: String,
    /// The job enqueued at each fire.
    pub job: CronJob,
    /// What to do about times missed during downtime.
    pub catch_up: CatchUp,
    /// How late a fire may be and still count as on time rather than missed.
    pub grace: Duration,
    /// What to do while the previous job is unfinished.
    pub overlap: Overlap,
    /// The most a fire's job is delayed after its scheduled time, spread evenly (and the same
    /// for the same entry and time), so a fleet of entries on one schedule does not start at
    /// one instant. Zero disables it.
    pub jitter: Duration,
    /// Whether it fires.
    pub enabled: bool,
}

impl CronEntry {
    /// Whether `other` fires at different times than `self` (its schedule or time zone
    /// differ): the store takes a new next fire time for such an update, and keeps its own
    /// otherwise.
    pub fn schedule_differs(&self, other: &Self) -> bool {
        self.schedule != other.schedule || self.timezone != other.timezone
    }
}

/// An entry as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRecord {
    /// The entry's ID, given when it was first saved.
    pub id: CronId,
    /// The entry.
    pub entry: CronEntry,
    /// The scheduled time it fires next; `None` when its schedule has no further time.
    pub next_fire: Option<Timestamp>,
    /// The scheduled time of its last fire.
    pub last_fired: Option<Timestamp>,
    /// The job of its last fire (the overlap policy looks at it).
    pub last_job: Option<JobId>,
    /// When it was first saved (store clock).
    pub created_at: Timestamp,
    /// When it was last saved (store clock).
    pub updated_at: Timestamp,
}

/// Which entries a listing returns. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CronFilter {
    /// Only entries of this scope.
    pub scope: Option<Scope>,
    /// Only enabled (`true`) or disabled (`false`) entries.
    pub enabled: Option<bool>,
}

impl CronFilter {
    /// Whether `record` matches.
    pub fn matches(&self, record: &CronRecord) -> bool {
        self.scope.as_ref().is_none_or(|s| *s == record.entry.scope)
            && self.enabled.is_none_or(|e| e == record.entry.enabled)
    }
}

/// The entries due at the store's clock, and that clock's reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueCron {
    /// The store's clock when it read them.
    pub now: Timestamp,
    /// Enabled entries whose next fire is at or before `now`, soonest first.
    pub entries: Vec<CronRecord>,
}

/// One fire, as the leader computed it from an entry it read as due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronFire {
    /// The entry.
    pub id: CronId,
    /// The entry's next fire as the leader read it: the store applies the fire only while it
    /// is unchanged (and the entry enabled), else answers [`CronFireOutcome::Stale`].
    pub expected_next: Timestamp,
    /// One job per scheduled time it fires, oldest first, each with the unique key
    /// [`fire_key`] of its time (empty when every missed time is skipped).
    pub jobs: Vec<NewJob>,
    /// The scheduled time of the last job in `jobs`; `None` when `jobs` is empty.
    pub fired: Option<Timestamp>,
    /// The next scheduled time after this fire.
    pub next_fire: Option<Timestamp>,
    /// Skip the jobs (still advancing `next_fire`) while the entry's last job is available
    /// or running ([`Overlap::Skip`]).
    pub skip_if_running: bool,
}

/// What the store did with one [`CronFire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CronFireOutcome {
    /// The jobs were enqueued (a duplicate says its time's job already existed) and the entry
    /// advanced.
    Fired(Vec<Enqueued>),
    /// The previous job was still unfinished: nothing was enqueued, and the entry advanced.
    Overlapped {
        /// The unfinished job.
        previous: JobId,
    },
    /// The entry changed since it was read (a newer fire, an update, disabled or deleted):
    /// nothing changed.
    Stale,
}

/// The record [`CronStore::save_cron`](crate::CronStore::save_cron) leaves at `now`: `stored`
/// (the entry of the same `(scope, name)`, if any) updated by `entry`, taking `next_fire` when
/// the schedule or time zone differ or the save enables a disabled entry and keeping its own
/// otherwise; or a new record taking `next_fire`. The rule every store applies, in its own
/// language where it has one.
pub fn saved(
    stored: Option<CronRecord>,
    entry: CronEntry,
    next_fire: Option<Timestamp>,
    now: Timestamp,
) -> CronRecord {
    match stored {
        Some(mut record) => {
            let enabling = entry.enabled && !record.entry.enabled;
            if enabling || record.entry.schedule_differs(&entry) {
                record.next_fire = next_fire;
            }
            record.entry = entry;
            record.updated_at = now;
            record
        }
        None => CronRecord {
            id: CronId::new(),
            entry,
            next_fire,
            last_fired: None,
            last_job: None,
            created_at: now,
            updated_at: now,
        },
    }
}

/// `record` enabled or disabled at `now`, per
/// [`CronStore::set_cron_enabled`](crate::CronStore::set_cron_enabled): enabling a disabled
/// entry takes `next_fire` (the disabled times are not caught up); the next fire is kept
/// otherwise.
pub fn set_enabled(
    record: &mut CronRecord,
    enabled: bool,
    next_fire: Option<Timestamp>,
    now: Timestamp,
) {
    if enabled && !record.entry.enabled {
        record.next_fire = next_fire;
    }
    record.entry.enabled = enabled;
    record.updated_at = now;
}

/// The unique key of the job entry `id` enqueues for scheduled time `at`: the same on every
/// process, so a second fire of one time finds the first one's job.
pub fn fire_key(id: CronId, at: Timestamp) -> String {
    format!("cron:{id}:{}", at.as_unix_micros())
}
