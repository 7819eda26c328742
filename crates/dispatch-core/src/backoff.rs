//! Retry backoff: how long a failed attempt waits before the next one.
//!
//! Every strategy is capped and saturating: attempt 10,000 gives the cap, never an overflow.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A backoff strategy. `attempt` is the number of the attempt that just failed, starting at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Backoff {
    /// The same delay after every attempt.
    Constant {
        /// The delay.
        delay: Duration,
    },
    /// `step × attempt`, at most `cap`.
    Linear {
        /// Added per attempt.
        step: Duration,
        /// The largest delay.
        cap: Duration,
    },
    /// `base × 2^(attempt − 1)`, at most `cap`.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The largest delay.
        cap: Duration,
    },
    /// Uniform in `[0, min(cap, base × 2^(attempt − 1))]` ("full jitter"): spreads the retries
    /// of jobs that failed together, so they do not return together.
    ExponentialJitter {
        /// The first delay's upper bound.
        base: Duration,
        /// The largest delay.
        cap: Duration,
    },
}

impl Default for Backoff {
    /// Exponential with full jitter from 1 s, capped at 5 minutes.
    fn default() -> Self {
        Self::ExponentialJitter { base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// The delay after `attempt` failed, drawing jitter from the thread's RNG.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// The delay after `attempt` failed, drawing jitter from `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let attempt = attempt.max(1);
        match *self {
            Self::Constant { delay } => delay,
            Self::Linear { step, cap } => step.checked_mul(attempt).map_or(cap, |d| d.min(cap)),
            Self::Exponential { base, cap } => exponential(base, cap, attempt),
            Self::ExponentialJitter { base, cap } => {
                let upper = exponential(base, cap, attempt);
                let micros = u64::try_from(upper.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(rng.random_range(0..=micros))
            }
        }
    }

    /// The largest delay this strategy can return.
    pub fn cap(&self) -> Duration {
        match *self {
            Self::Constant { delay } => delay,
            Self::Linear { cap, .. } | Self::Exponential { cap, .. } => cap,
            Self::ExponentialJitter { cap, .. } => cap,
        }
    }
}

fn exponential(base: Duration, cap: Duration, attempt: u32) -> Duration {
    2u32.checked_pow(attempt - 1)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(cap, |d| d.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn constant_and_linear() {
        assert_eq!(Backoff::Constant { delay: S }.delay(7), S);
        let linear = Backoff::Linear { step: S, cap: 5 * S };
        assert_eq!(linear.delay(1), S);
        assert_eq!(linear.delay(3), 3 * S);
        assert_eq!(linear.delay(9), 5 * S);
        assert_eq!(linear.delay(u32::MAX), 5 * S);
    }

    #[test]
    fn exponential_doubles_then_caps() {
        let exp = Backoff::Exponential { base: S, cap: 60 * S };
        let delays: Vec<_> = (1..=8).map(|a| exp.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(exp.delay(0), S, "attempt 0 is treated as the first");
    }

    #[test]
    fn no_overflow_at_attempt_ten_thousand() {
        let cap = Duration::from_secs(3600);
        for b in [
            Backoff::Linear { step: Duration::MAX, cap },
            Backoff::Exponential { base: S, cap },
            Backoff::ExponentialJitter { base: S, cap },
        ] {
            for attempt in [31, 32, 33, 64, 10_000, u32::MAX] {
                assert!(b.delay(attempt) <= cap, "{b:?} at {attempt}");
            }
        }
        assert_eq!(Backoff::Exponential { base: S, cap }.delay(10_000), cap);
    }

    #[test]
    fn jitter_stays_within_zero_and_cap_and_varies() {
        let cap = 10 * S;
        let b = Backoff::ExponentialJitter { base: S, cap };
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..2000 {
            let d = b.delay(attempt % 12 + 1);
            assert!(d <= cap);
            seen.insert(d);
        }
        assert!(seen.len() > 100, "jitter should vary, saw {} values", seen.len());
        for _ in 0..500 {
            assert!(b.delay(2) <= 2 * S);
        }
    }
}
