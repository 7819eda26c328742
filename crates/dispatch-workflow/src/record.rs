//! What the runtime writes into checkpoints, and their keys: [`Kind`], [`Path`] and [`Key`], with
//! the one parser ([`Key::parse`]) and the one renderer ([`render`], [`Key::render`]) of the key
//! format. Every other module builds and reads keys through them.
//!
//! The format is persisted (changing it strands runs in flight; `tests/it/keys.rs` checks it
//! against keys the earlier code wrote). A checkpoint key is `{path}{letter}:{name}#{n}`:
//! - `letter` is the call's kind: `s` a step, `t` a durable sleep, `w` an event wait (an event
//!   delivery writes its payload under it), `k` a child run, `d` a journaled value (`now`,
//!   `random`, `uuid`);
//! - `n` counts calls of that letter and name within one branch, from 1, so a step called in a
//!   loop gets one checkpoint per call;
//! - `path` is empty at the top level; inside branch `i` (0-based) of the `n`-th
//!   `parallel(name, …)` call of a branch it is that branch's path followed by
//!   `p:{name}#{n}/{i}/`, so parallel branches keep their own counters.
//!
//! Bookkeeping keys derive from those: a wait's `{wait key}~deadline` (when it gives up) and
//! `{wait key}~timeout` (it gave up), a compensation's `c:{step key}`, and the run's deadline
//! `d:run-deadline#1`.
//!
//! Names are the caller's and may hold any character, so two different calls can render the
//! same key (a step named `a#1/0/s:b` inside no branch, say, is not confused with anything, but a
//! parallel group named `x#1/0/p:y` renders like two nested groups). The parser therefore
//! promises one thing: a key it accepts renders back byte for byte.

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

/// What a checkpoint key records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `s`: a step's [`StepRecord`].
    Step,
    /// `t`: a durable sleep's [`Deadline`].
    Timer,
    /// `w`: an event wait; the delivered event's payload.
    Wait,
    /// `w` … `~deadline`: when a wait gives up ([`Deadline`]).
    WaitDeadline,
    /// `w` … `~timeout`: a wait gave up ([`TimedOut`]).
    WaitTimeout,
    /// `k`: the ID of a child run.
    Child,
    /// `d`: a journaled value (`now`, `random`, `uuid`).
    Value,
    /// `c:` + a step's key: that step's compensation ([`StepRecord`]).
    Compensation,
    /// `d:run-deadline#1`: when the run times out ([`Deadline`]).
    RunDeadline,
    /// `p`: a parallel group. Never a key of its own: its branches' [`Path`] segment.
    Parallel,
}

impl Kind {
    /// The letter of the key's last segment.
    fn letter(self) -> &'static str {
        match self {
            Self::Step | Self::Compensation => "s",
            Self::Timer => "t",
            Self::Wait | Self::WaitDeadline | Self::WaitTimeout => "w",
            Self::Child => "k",
            Self::Value | Self::RunDeadline => "d",
            Self::Parallel => "p",
        }
    }

    /// The kind of a call with `letter` (`None`: not a kind a key ends in).
    fn of_letter(letter: &str) -> Option<Self> {
        Some(match letter {
            "s" => Self::Step,
            "t" => Self::Timer,
            "w" => Self::Wait,
            "k" => Self::Child,
            "d" => Self::Value,
            _ => return None,
        })
    }

    fn prefix(self) -> &'static str {
        if self == Self::Compensation { COMPENSATION } else { "" }
    }

    fn suffix(self) -> &'static str {
        match self {
            Self::WaitDeadline => WAIT_DEADLINE,
            Self::WaitTimeout => WAIT_TIMEOUT,
            _ => "",
        }
    }
}

const COMPENSATION: &str = "c:";
const WAIT_DEADLINE: &str = "~deadline";
const WAIT_TIMEOUT: &str = "~timeout";
const RUN_DEADLINE: &str = "run-deadline";
const PARALLEL: &str = "p:";

/// Where in the workflow a call is: the parallel branches it runs in, outermost first (empty at
/// the top level).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Path(Vec<Branch>);

/// Branch `index` (0-based) of the `n`-th call of `parallel(group, …)` in its enclosing branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Branch {
    pub(crate) group: String,
    pub(crate) n: u32,
    pub(crate) index: usize,
}

impl Path {
    /// The top level.
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// The path of branch `index` of the `n`-th `parallel(group, …)` call on this path.
    pub(crate) fn branch(&self, group: &str, n: u32, index: usize) -> Self {
        let mut branches = self.0.clone();
        branches.push(Branch { group: group.to_owned(), n, index });
        Self(branches)
    }

    /// Its branches, outermost first.
    #[cfg(test)]
    pub(crate) fn branches(&self) -> &[Branch] {
        &self.0
    }

    fn render_into(&self, out: &mut String) {
        for branch in &self.0 {
            out.push_str(PARALLEL);
            out.push_str(&branch.group);
            out.push('#');
            push_decimal(out, u64::from(branch.n));
            out.push('/');
            push_decimal(out, branch.index as u64);
            out.push('/');
        }
    }

    fn rendered_len(&self) -> usize {
        self.0.iter().map(|b| b.group.len() + 16).sum()
    }
}

/// A checkpoint key, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    path: Path,
    kind: Kind,
    name: String,
    n: u32,
}

/// A string that is not a checkpoint key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyError {
    key: String,
    why: &'static str,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a checkpoint key: {}", self.key, self.why)
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// The key of the `n`-th call of `kind` named `name` on `path` (`kind` is not
    /// [`Kind::Parallel`], which names no checkpoint, nor [`Kind::RunDeadline`]: see
    /// [`run_deadline`](Self::run_deadline)).
    #[cfg(test)]
    pub(crate) fn new(path: Path, kind: Kind, name: impl Into<String>, n: u32) -> Self {
        debug_assert!(!matches!(kind, Kind::Parallel | Kind::RunDeadline), "{kind:?}");
        Self { path, kind, name: name.into(), n }
    }

    /// The key of the run's deadline.
    pub(crate) fn run_deadline() -> Self {
        Self { path: Path::root(), kind: Kind::RunDeadline, name: RUN_DEADLINE.to_owned(), n: 1 }
    }

    /// What it records.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The branch it was written in.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The name of its call (a step's, a sleep's, a wait's, a child workflow's, ...).
    #[cfg(test)]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Which call of its kind and name in its branch, from 1.
    #[cfg(test)]
    pub(crate) fn n(&self) -> u32 {
        self.n
    }

    /// The key as stored.
    pub(crate) fn render(&self) -> String {
        render(&self.path, self.kind, &self.name, self.n)
    }

    /// Parse a stored key: the inverse of [`render`](Self::render) (a key it accepts renders back
    /// byte for byte).
    pub(crate) fn parse(key: &str) -> Result<Self, KeyError> {
        let error = |why| KeyError { key: key.to_owned(), why };
        if let Some(step) = key.strip_prefix(COMPENSATION) {
            let step = Self::parse(step).map_err(|e| error(e.why))?;
            if step.kind != Kind::Step {
                return Err(error("a compensation names a step's key"));
            }
            return Ok(Self { kind: Kind::Compensation, ..step });
        }
        let (rest, bookkeeping) = if let Some(rest) = key.strip_suffix(WAIT_DEADLINE) {
            (rest, Some(Kind::WaitDeadline))
        } else if let Some(rest) = key.strip_suffix(WAIT_TIMEOUT) {
            (rest, Some(Kind::WaitTimeout))
        } else {
            (key, None)
        };
        let mut branches = Vec::new();
        let (kind, name, n) = parse_branches(rest, &mut branches).map_err(error)?;
        let kind = match (kind, bookkeeping) {
            (Kind::Wait, Some(bookkeeping)) => bookkeeping,
            (_, Some(_)) => return Err(error("only a wait's key has a suffix")),
            (Kind::Value, None) if branches.is_empty() && name == RUN_DEADLINE && n == 1 => {
                Kind::RunDeadline
            }
            (kind, None) => kind,
        };
        Ok(Self { path: Path(branches), kind, name: name.to_owned(), n })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// The key of the `n`-th call of `kind` named `name` on `path`: the one renderer of the format
/// (built by hand: it runs for every step, and `format!` costs several times as much).
pub(crate) fn render(path: &Path, kind: Kind, name: &str, n: u32) -> String {
    debug_assert_ne!(kind, Kind::Parallel, "a parallel group is a path segment, not a key");
    let (prefix, letter, suffix) = (kind.prefix(), kind.letter(), kind.suffix());
    let mut key = String::with_capacity(
        prefix.len() + path.rendered_len() + letter.len() + name.len() + suffix.len() + 12,
    );
    key.push_str(prefix);
    path.render_into(&mut key);
    key.push_str(letter);
    key.push(':');
    key.push_str(name);
    key.push('#');
    push_decimal(&mut key, u64::from(n));
    key.push_str(suffix);
    key
}

/// The branches at the front of `rest` (pushed onto `branches`) and the call its last segment
/// names: `(kind, name, n)`. A group's name may hold `#d/d/` itself, so each place its segment
/// could end is tried, shortest name first.
fn parse_branches<'a>(
    rest: &'a str,
    branches: &mut Vec<Branch>,
) -> Result<(Kind, &'a str, u32), &'static str> {
    let Some(segment) = rest.strip_prefix(PARALLEL) else {
        return parse_call(rest);
    };
    let mut why = "a parallel group without a branch";
    for (at, _) in segment.match_indices('#') {
        let Some((n, index, inner)) = branch_end(&segment[at + 1..]) else { continue };
        let group = &segment[..at];
        branches.push(Branch { group: group.to_owned(), n, index });
        match parse_branches(inner, branches) {
            Ok(call) => return Ok(call),
            Err(inner_why) => {
                why = inner_why;
                branches.pop();
            }
        }
    }
    Err(why)
}

/// `{n}/{index}/` at the front of `text`: `n`, `index` and what follows.
fn branch_end(text: &str) -> Option<(u32, usize, &str)> {
    let (n, rest) = text.split_once('/')?;
    let (index, rest) = rest.split_once('/')?;
    Some((decimal(n)?, decimal(index)?, rest))
}

/// `{letter}:{name}#{n}`.
fn parse_call(text: &str) -> Result<(Kind, &str, u32), &'static str> {
    let (letter, rest) = text.split_once(':').ok_or("no kind")?;
    let kind = Kind::of_letter(letter).ok_or("an unknown kind")?;
    let (name, n) = rest.rsplit_once('#').ok_or("no call number")?;
    let n = decimal(n).ok_or("a call number that is not a number as rendered")?;
    Ok((kind, name, n))
}

/// A number as [`push_decimal`] writes it: digits, no sign, no leading zero.
fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Append `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
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

    /// The keys the runtime wrote before the format had a type (see `tests/it/keys.rs`).
    const FIXTURE: &str = include_str!("../tests/it/fixtures/checkpoint_keys.txt");

    fn fixture_keys() -> impl Iterator<Item = &'static str> {
        FIXTURE.lines().filter(|l| !l.is_empty() && !l.starts_with("# ") && !l.starts_with('['))
    }

    #[test]
    fn every_fixture_key_parses_and_renders_back_byte_for_byte() {
        let mut kinds = Vec::new();
        for text in fixture_keys() {
            let key = Key::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(key.render(), text);
            assert_eq!(Key::parse(&key.render()), Ok(key.clone()));
            kinds.push(key.kind());
        }
        for kind in [
            Kind::Step,
            Kind::Timer,
            Kind::Wait,
            Kind::WaitDeadline,
            Kind::WaitTimeout,
            Kind::Child,
            Kind::Value,
            Kind::Compensation,
            Kind::RunDeadline,
        ] {
            assert!(kinds.contains(&kind), "the fixture has a key of kind {kind:?}");
        }
    }

    #[test]
    fn fixture_keys_parse_into_their_parts() {
        let nested = Key::parse("p:fan#1/1/p:inner#1/0/s:c#1").unwrap();
        let path = Path::root().branch("fan", 1, 1).branch("inner", 1, 0);
        assert_eq!(nested, Key::new(path.clone(), Kind::Step, "c", 1));
        assert_eq!(nested.path().branches()[1], Branch { group: "inner".into(), n: 1, index: 0 });
        let undo = Key::parse("c:p:legs#1/0/s:leg#1").unwrap();
        let legs = Path::root().branch("legs", 1, 0);
        assert_eq!(undo, Key::new(legs, Kind::Compensation, "leg", 1));
        let waited = Key::parse("w:child:{child}#1~deadline").unwrap();
        assert_eq!(
            (waited.kind(), waited.name(), waited.n()),
            (Kind::WaitDeadline, "child:{child}", 1)
        );
        assert_eq!(Key::parse("w:never#1~timeout").unwrap().kind(), Kind::WaitTimeout);
        assert_eq!(Key::parse("d:run-deadline#1"), Ok(Key::run_deadline()));
        assert_eq!(Key::run_deadline().render(), "d:run-deadline#1");
        assert_eq!(Key::parse("d:uuid#1").unwrap().kind(), Kind::Value);
        assert_eq!(Key::parse("k:gated#3").unwrap().kind(), Kind::Child);
        assert_eq!(Key::parse("t:sleep#2").unwrap().kind(), Kind::Timer);
    }

    #[test]
    fn keys_keep_their_persisted_format() {
        let branch = Path::root().branch("x", 1, 0);
        for n in [0, 1, 9, 10, 99, 1234, u32::MAX] {
            assert_eq!(render(&branch, Kind::Step, "name", n), format!("p:x#1/0/s:name#{n}"));
            assert_eq!(Key::parse(&format!("p:x#1/0/s:name#{n}")).unwrap().n(), n);
        }
        assert_eq!(render(&Path::root(), Kind::Wait, "", 7), "w:#7");
        assert_eq!(render(&branch, Kind::WaitDeadline, "go", 2), "p:x#1/0/w:go#2~deadline");
        assert_eq!(render(&branch, Kind::WaitTimeout, "go", 2), "p:x#1/0/w:go#2~timeout");
        assert_eq!(render(&branch, Kind::Compensation, "book", 3), "c:p:x#1/0/s:book#3");
        let deep = Path::root().branch("a", 2, 10).branch("b", 1, 0);
        assert_eq!(render(&deep, Kind::Value, "now", 1), "p:a#2/10/p:b#1/0/d:now#1");
        assert_eq!(render(&deep, Kind::Child, "kid", 4), "p:a#2/10/p:b#1/0/k:kid#4");
        assert_eq!(render(&deep, Kind::Timer, "sleep", 1), "p:a#2/10/p:b#1/0/t:sleep#1");
    }

    #[test]
    fn names_with_the_format_s_own_characters_render_back() {
        for text in [
            "s:a#b#1",
            "s:a/0/s:b#1",
            "w:x:y#1~timeout",
            "p:x#1/0/p:y#1/0/s:z#1",
            "p:x#1/0/z#1/0/s:y#1",
            "c:p:a#b#1/0/s:c/d#2",
            "s:#0",
            "d:run-deadline#2",
            "p:x#1/0/d:run-deadline#1",
        ] {
            let key = Key::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(key.render(), text);
        }
        let odd = Key::parse("p:x#1/0/z#1/0/s:y#1").unwrap();
        assert_eq!(odd.path().branches()[0].group, "x#1/0/z");
        assert_eq!(Key::parse("d:run-deadline#2").unwrap().kind(), Kind::Value);
    }

    #[test]
    fn what_no_renderer_writes_is_refused() {
        for text in [
            "",
            "s",
            "s:a",
            "s:a#",
            "s:a#01",
            "s:a#+1",
            "s:a#4294967296",
            "x:a#1",
            "p:a#1",
            "p:a#1/0/",
            "p:a#1/01/s:b#1",
            "s:a#1~deadline",
            "c:w:a#1",
            "c:c:s:a#1",
            "w:a#1~later",
        ] {
            assert!(Key::parse(text).is_err(), "{text:?} parsed");
        }
    }
}
