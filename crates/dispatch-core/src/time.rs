//! Time: the [`Timestamp`] every record carries and the [`Clock`] every store and runtime reads.
//!
//! All time that is stored or compared (run-at, lease expiry, scheduled fires) comes from a
//! `Clock`, so tests move time with a [`ManualClock`] instead of sleeping. Timestamps are whole
//! microseconds since the Unix epoch: exact in every store (SQLite integers, PostgreSQL
//! `timestamptz`, Redis sorted-set scores) and cheap to compare.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time, microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);
    /// The latest representable time.
    pub const MAX: Self = Self(i64::MAX);

    /// From microseconds since the epoch.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch (rounded down).
    pub const fn as_unix_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// From a [`SystemTime`]; times before the epoch clamp to it.
    pub fn from_system_time(t: SystemTime) -> Self {
        let micros = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        Self(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0.max(0) as u64)
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn duration_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_micros(self.to_system_time()), f)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A shared clock, as stores and runtimes hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the OS clock
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self { micros: AtomicI64::new(start.as_unix_micros()) }
    }

    /// A clock standing at 2030-01-01T00:00:00Z, a fixed and unremarkable start for tests.
    pub fn fixed() -> Self {
        Self::new(Timestamp::from_unix_micros(1_893_456_000_000_000))
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.micros.fetch_add(micros, Ordering::SeqCst);
    }

    /// Set the clock to `t` (backwards too).
    pub fn set(&self, t: Timestamp) {
        self.micros.store(t.as_unix_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_micros(self.micros.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::fixed();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now().duration_since(t0), Duration::from_millis(1));
        assert_eq!(t0.duration_since(clock.now()), Duration::ZERO);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::EPOCH + Duration::MAX, Timestamp::MAX);
        let t = Timestamp::from_unix_micros(1_500_000);
        assert_eq!(t.as_unix_millis(), 1500);
        assert_eq!(t.to_string(), "1970-01-01T00:00:01.500000Z");
    }
}
