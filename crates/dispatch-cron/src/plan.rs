//! Planning one fire: from an entry the store read as due and the store's clock, which
//! scheduled times fire, which are skipped, and where the schedule goes next. Pure: no store,
//! no clock, so every catch-up rule is unit-tested with plain values.
//!
//! The due times are the scheduled times `t` with `next_fire <= t <= now`. A time is on time
//! when `now - t <= grace`, missed when older. On-time times always fire; the catch-up policy
//! decides about the missed ones ([`CatchUp`]).
//!
//! Work is bounded whatever the downtime (a per-second entry down for a week has 604,800
//! missed times). The missed times that fire are found by stepping back from the grace
//! boundary (`limit` steps at most, and at most [`MAX_CATCH_UP`]); the missed times are
//! counted by stepping forward from `next_fire` at most [`MAX_COUNTED`] times, so a larger
//! count is reported as that cap; on-time times fire at most [`MAX_ON_TIME`] per plan, and
//! when more are due (a very long grace) the next fire stays at the first one not fired, so
//! the next tick continues from there.

use std::hash::Hasher;

use dispatch_core::cron::fire_key;
use dispatch_core::{
    CatchUp, CronFire, CronId, CronRecord, NewJob, Overlap, RunAt, Timestamp, UniqueKey,
};

use crate::schedule::Schedule;

/// The most missed times one plan fires under [`CatchUp::Each`], whatever its limit.
pub const MAX_CATCH_UP: u32 = 1_000;
/// The most missed times one plan counts; a larger count is reported as this.
pub const MAX_COUNTED: u32 = 100_000;
/// The most on-time times one plan fires.
pub const MAX_ON_TIME: usize = 1_000;

/// Scheduled times an entry skipped because they were missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The first time skipped.
    pub first: Timestamp,
    /// How many (capped at [`MAX_COUNTED`]).
    pub count: u32,
}

/// One entry's fire, with what the hooks report about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The fire to hand to the store.
    pub fire: CronFire,
    /// The scheduled time of each job of the fire, in the same order.
    pub scheduled: Vec<Timestamp>,
    /// The missed times skipped, if any.
    pub skipped: Option<Skipped>,
}

/// Plan the fire of `record` (read as due) at the store's clock `now`. `None` when the record
/// has no next fire (nothing is due).
pub fn plan(record: &CronRecord, schedule: &Schedule, now: Timestamp) -> Option<Plan> {
    let next_fire = record.next_fire?;
    let entry = &record.entry;
    // Times before `boundary` are missed; at or after it, on time.
    let boundary = now - entry.grace;
    let missed = missed_to_fire(schedule, next_fire, boundary, entry.catch_up);
    let skipped = skipped(schedule, next_fire, boundary, missed.len());
    let (on_time, more) = on_time(schedule, next_fire.max(boundary), now);
    let scheduled: Vec<Timestamp> = missed.into_iter().chain(on_time).collect();
    let next = match more {
        Some(first_unfired) => Some(first_unfired),
        None => schedule.next_after(now),
    };
    let jobs = scheduled.iter().map(|&t| job(record, t)).collect();
    let fire = CronFire {
        id: record.id,
        expected_next: next_fire,
        jobs,
        fired: scheduled.last().copied(),
        next_fire: next,
        skip_if_running: entry.overlap == Overlap::Skip,
    };
    Some(Plan { fire, scheduled, skipped })
}

/// The missed times (in `[next_fire, boundary)`) the policy fires, oldest first: none, the
/// most recent one, or the most recent `limit`. Found by stepping back from the boundary.
fn missed_to_fire(
    schedule: &Schedule,
    next_fire: Timestamp,
    boundary: Timestamp,
    catch_up: CatchUp,
) -> Vec<Timestamp> {
    let want = match catch_up {
        CatchUp::Skip => 0,
        CatchUp::Once => 1,
        CatchUp::Each { limit } => limit.min(MAX_CATCH_UP),
    };
    let mut times = Vec::new();
    let mut before = boundary;
    while times.len() < want as usize {
        match schedule.previous_before(before) {
            Some(t) if t >= next_fire => {
                times.push(t);
                before = t;
            }
            _ => break,
        }
    }
    times.reverse();
    times
}

/// The missed times not fired: from `next_fire` (always a scheduled time) up to the boundary,
/// counted with a cap, less the `fired` most recent ones.
fn skipped(
    schedule: &Schedule,
    next_fire: Timestamp,
    boundary: Timestamp,
    fired: usize,
) -> Option<Skipped> {
    if next_fire >= boundary {
        return None;
    }
    let mut count: u32 = 1;
    let mut at = next_fire;
    while count < MAX_COUNTED {
        match schedule.next_after(at) {
            Some(t) if t < boundary => {
                count += 1;
                at = t;
            }
            _ => break,
        }
    }
    let fired = u32::try_from(fired).unwrap_or(u32::MAX);
    let count = count.saturating_sub(fired);
    (count > 0).then_some(Skipped { first: next_fire, count })
}

/// The scheduled times in `[from, now]`, at most [`MAX_ON_TIME`]; with the first time left
/// over when there were more.
fn on_time(
    schedule: &Schedule,
    from: Timestamp,
    now: Timestamp,
) -> (Vec<Timestamp>, Option<Timestamp>) {
    let mut times = Vec::new();
    let mut next = schedule.first_at_or_after(from);
    while let Some(t) = next.filter(|t| *t <= now) {
        if times.len() == MAX_ON_TIME {
            return (times, Some(t));
        }
        times.push(t);
        next = schedule.next_after(t);
    }
    (times, None)
}

/// The job `record` enqueues for scheduled time `at`.
fn job(record: &CronRecord, at: Timestamp) -> NewJob {
    let template = &record.entry.job;
    let mut job = NewJob::new(template.name.clone(), template.payload.clone());
    job.queue = template.queue.clone();
    job.priority = template.priority;
    job.max_attempts = template.max_attempts;
    job.timeout = template.timeout;
    job.scope = record.entry.scope.clone();
    job.run_at = RunAt::At(at.saturating_add(jitter(record.id, at, record.entry.jitter)));
    job.unique = Some(UniqueKey { key: fire_key(record.id, at), window: None });
    job
}

/// The delay of the job of `(id, at)` within `[0, jitter)`: a hash of the pair, so every
/// process (and a retried fire) computes the same delay for the same time.
pub fn jitter(id: CronId, at: Timestamp, jitter: std::time::Duration) -> std::time::Duration {
    let span = u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX);
    if span == 0 {
        return std::time::Duration::ZERO;
    }
    let mut hasher = Fnv1a::default();
    hasher.write(id.to_string().as_bytes());
    hasher.write(&at.as_unix_micros().to_le_bytes());
    std::time::Duration::from_micros(hasher.finish() % span)
}

/// FNV-1a: stable across processes and Rust versions, unlike std's `DefaultHasher`.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        // FNV's low bits mix poorly for short inputs: fold the high half in before the modulo.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
