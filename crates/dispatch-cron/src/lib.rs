//! Cron for Dispatch: entries kept in the store that enqueue a job on a schedule, fired by the
//! cluster's leader.
//!
//! What it is for: [`Cron`] registers entries (a [`CronSpec`]: a cron expression in an IANA
//! time zone, a typed job, a scope and policies for downtime, overlap and jitter) and manages
//! them; [`CronScheduler`] is the [`LeaderTask`](dispatch_cluster::LeaderTask) that fires them.
//! [`Schedule`] is the schedule arithmetic (croner for the expression, jiff for time zones and
//! daylight saving time) and [`plan`] turns a due entry into one fire: which scheduled times
//! fire, which are skipped, and the next fire time.
//!
//! What it is not: the store of entries, nor the guarantee against double fires. The store
//! keeps every entry and applies each fire as one compare-and-set fenced by the leader's term
//! ([`CronStore`](dispatch_core::CronStore)); each job carries the unique key of its entry and
//! scheduled time. This crate only computes; the store decides. Applications use it through the
//! `dispatch` umbrella (`DispatcherBuilder::cron`, `Dispatcher::cron`).
//!
//! ```
//! use dispatch_cron::Schedule;
//! use dispatch_core::Timestamp;
//!
//! let nightly = Schedule::parse("30 2 * * *", "Europe/Berlin")?;
//! // 2026-03-29 is the spring-forward day: 02:30 does not exist, the entry fires at 03:00.
//! let saturday_noon = Timestamp::from_unix_micros(1_774_699_200_000_000); // 2026-03-28T12:00Z
//! let fire = nightly.next_after(saturday_noon).expect("a next time");
//! assert_eq!(fire, Timestamp::from_unix_micros(1_774_746_000_000_000)); // 01:00Z = 03:00 CEST
//! # Ok::<(), dispatch_core::Error>(())
//! ```

mod client;
pub mod plan;
mod schedule;
mod scheduler;
mod spec;

pub use client::Cron;
pub use schedule::Schedule;
pub use scheduler::{CronScheduler, DEFAULT_BATCH, DEFAULT_INTERVAL, TickReport};
pub use spec::{CronSpec, DEFAULT_GRACE};
