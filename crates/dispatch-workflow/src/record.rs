//! What the runtime writes into checkpoints, and the key format (persisted: changing it strands
//! runs in flight).
//!
//! A checkpoint key is `{path}{kind}:{name}#{occurrence}`:
//! - `kind` is `s` (step), `t` (durable sleep), `w` (event wait, the key an event delivery
//!   writes its payload under), `w` + `~deadline` / `~timeout` suffixes for a wait's bookkeeping;
//! - `occurrence` counts calls of that kind and name within one branch, from 1, so a step called
//!   in a loop gets one checkpoint per call;
//! - `path` is empty at the top level; inside branch `i` (0-based) of the `n`-th
//!   `parallel(name, …)` call of a branch it is that branch's path followed by
//!   `p:{name}#{n}/{i}/`, so parallel branches keep their own counters.

use dispatch_core::Timestamp;
use serde::{Deserialize, Serialize};

/// The checkpoint of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum StepRecord {
    /// Succeeded on attempt `attempts`; `value` is the result as JSON.
    Done { attempts: u32, value: serde_json::Value },
    /// Attempt `attempts` failed; the next one is due at `retry_at` (store clock, µs).
    Retrying { attempts: u32, error: String, retry_at: i64 },
    /// Failed for good after `attempts`.
    Failed { attempts: u32, error: String },
}

/// The checkpoint of a durable sleep, or of a wait's deadline: when it ends (store clock, µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Deadline {
    pub(crate) until: i64,
}

impl Deadline {
    pub(crate) fn at(self) -> Timestamp {
        Timestamp::from_unix_micros(self.until)
    }
}

/// The checkpoint of a wait that timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimedOut {}

/// One checkpoint key. Built by hand: it is made for every step, and `format!` costs several
/// times as much.
pub(crate) fn key(path: &str, kind: &str, name: &str, occurrence: u32) -> String {
    let mut key = String::with_capacity(path.len() + kind.len() + name.len() + 12);
    key.push_str(path);
    key.push_str(kind);
    key.push(':');
    key.push_str(name);
    key.push('#');
    push_decimal(&mut key, occurrence);
    key
}

/// Append `n` in decimal.
fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is below 10: the cast can not truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data: serializing them can not fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_persisted_format() {
        for n in [0, 1, 9, 10, 99, 1234, u32::MAX] {
            assert_eq!(key("p:x#1/0/", "s", "name", n), format!("p:x#1/0/s:name#{n}"));
        }
        assert_eq!(key("", "w", "", 7), "w:#7");
    }
}
