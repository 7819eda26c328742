//! Hashes to records: a job, a DLQ entry or a run as the scripts write them, read from an
//! `HGETALL` reply, and the script arguments that spell times, durations and optional strings.
//!
//! Times are integer microseconds since the epoch, stored between ±[`MAX_TIME`]: a Lua number
//! (a double) holds those exactly. Later times (a "keep forever") are stored as `MAX_TIME` and
//! read back as [`Timestamp::MAX`].

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use dispatch_core::{
    AttemptError, Checkpoint, ConcurrencyKey, DlqEntry, DlqId, FailureKind, Job, JobId, JobState,
    Lease, LeaseToken, Result, Run, RunAt, RunId, RunState, Scope, Timestamp, WaitingFor, WorkerId,
};
use redis::Value;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::internal;

/// The latest time stored exactly: 2^53 - 1 µs (year 2255).
pub(crate) const MAX_TIME: i64 = (1 << 53) - 1;

/// A time as a script argument, clamped to ±[`MAX_TIME`].
pub(crate) fn time_arg(t: Timestamp) -> i64 {
    t.as_unix_micros().clamp(-MAX_TIME, MAX_TIME)
}

/// A duration as a script argument in µs, clamped to [`MAX_TIME`].
pub(crate) fn duration_arg(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(MAX_TIME).min(MAX_TIME)
}

/// A run-at as the two script arguments `jobs.lua`'s `resolve_run_at` reads: its kind
/// (`now`, `at`, `after`) and its value in µs.
pub(crate) fn run_at_args(run_at: RunAt) -> (&'static str, i64) {
    match run_at {
        RunAt::Now => ("now", 0),
        RunAt::At(t) => ("at", time_arg(t)),
        RunAt::After(d) => ("after", duration_arg(d)),
    }
}

/// An optional string as a script argument: `-` for none, `+value` for a value.
pub(crate) fn option_arg(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("+{v}"))
}

/// The fields of one hash, from an `HGETALL` reply (field, value, field, value, …).
pub(crate) struct Fields(HashMap<String, Vec<u8>>);

impl Fields {
    /// The fields of `reply`; `None` for an empty reply (no such key).
    pub(crate) fn parse(reply: Value) -> Result<Option<Self>> {
        let items = match reply {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Value::Nil => return Ok(None),
            other => return Err(internal(format!("a hash reply was {other:?}"))),
        };
        if items.is_empty() {
            return Ok(None);
        }
        let mut fields = HashMap::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(field), Some(value)) = (items.next(), items.next()) {
            fields.insert(string(field)?, bytes(value)?);
        }
        Ok(Some(Self(fields)))
    }

    /// A field that must be present, as text.
    pub(crate) fn str(&self, field: &str) -> Result<&str> {
        self.opt_str(field)?.ok_or_else(|| internal(format!("a record lacks its {field:?}")))
    }

    /// A field that may be absent, as text.
    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        self.0
            .get(field)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| internal(format!("{field:?} is not UTF-8")))
            })
            .transpose()
    }

    /// A field that may be absent, as bytes.
    pub(crate) fn opt_bytes(&self, field: &str) -> Option<&[u8]> {
        self.0.get(field).map(Vec::as_slice)
    }

    /// A field that must be present, as bytes (taken out of the record).
    pub(crate) fn take_bytes(&mut self, field: &str) -> Result<Vec<u8>> {
        self.0.remove(field).ok_or_else(|| internal(format!("a record lacks its {field:?}")))
    }

    /// A present field parsed with `FromStr`.
    pub(crate) fn num<T: FromStr>(&self, field: &str) -> Result<T> {
        let text = self.str(field)?;
        text.parse().map_err(|_| internal(format!("{field:?} is not a number: {text:?}")))
    }

    /// An optional field parsed with `FromStr`.
    pub(crate) fn opt_num<T: FromStr>(&self, field: &str) -> Result<Option<T>> {
        self.opt_str(field)?
            .map(|text| {
                text.parse().map_err(|_| internal(format!("{field:?} is not a number: {text:?}")))
            })
            .transpose()
    }

    /// A present time field.
    pub(crate) fn time(&self, field: &str) -> Result<Timestamp> {
        Ok(stored_time(self.num(field)?))
    }

    /// An optional time field.
    pub(crate) fn opt_time(&self, field: &str) -> Result<Option<Timestamp>> {
        Ok(self.opt_num(field)?.map(stored_time))
    }

    /// An optional duration field in µs.
    pub(crate) fn opt_duration(&self, field: &str) -> Result<Option<Duration>> {
        Ok(self.opt_num::<u64>(field)?.map(Duration::from_micros))
    }

    /// A present ID field (hex).
    pub(crate) fn uuid(&self, field: &str) -> Result<Uuid> {
        parse_uuid(self.str(field)?)
    }

    /// An optional ID field (hex).
    pub(crate) fn opt_uuid(&self, field: &str) -> Result<Option<Uuid>> {
        self.opt_str(field)?.map(parse_uuid).transpose()
    }

    /// The scope fields.
    pub(crate) fn scope(&self) -> Result<Scope> {
        Ok(Scope {
            app: self.opt_str("app")?.map(str::to_owned),
            tenant: self.opt_str("tenant")?.map(str::to_owned),
        })
    }

    /// The error history (JSON written by `record_error`).
    pub(crate) fn errors(&self) -> Result<Vec<AttemptError>> {
        match self.opt_str("errors")? {
            Some(json) => parse_errors(json),
            None => Ok(Vec::new()),
        }
    }
}

/// A stored time (µs) as a timestamp: [`MAX_TIME`] and later are [`Timestamp::MAX`].
pub(crate) fn stored_time(micros: i64) -> Timestamp {
    if micros >= MAX_TIME { Timestamp::MAX } else { Timestamp::from_unix_micros(micros) }
}

/// An ID as the keys spell it (32 hex digits).
pub(crate) fn parse_uuid(hex: &str) -> Result<Uuid> {
    Uuid::try_parse(hex).map_err(|_| internal(format!("{hex:?} is not an ID")))
}

/// A reply item as bytes.
pub(crate) fn bytes(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(internal(format!("expected a string, got {other:?}"))),
    }
}

/// A reply item as text.
pub(crate) fn string(value: Value) -> Result<String> {
    String::from_utf8(bytes(value)?).map_err(|_| internal("a reply is not UTF-8"))
}

/// A reply item as an integer.
pub(crate) fn int(value: Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(n),
        other => {
            let text = string(other)?;
            text.parse().map_err(|_| internal(format!("expected an integer, got {text:?}")))
        }
    }
}

/// A reply as an array (nil is an empty one).
pub(crate) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(internal(format!("expected an array, got {other:?}"))),
    }
}

/// One error of the JSON history.
#[derive(Deserialize)]
struct StoredError {
    attempt: u32,
    kind: FailureKind,
    message: String,
    at: i64,
}

fn parse_errors(json: &str) -> Result<Vec<AttemptError>> {
    let stored: Vec<StoredError> =
        serde_json::from_str(json).map_err(|e| internal(format!("corrupt error history: {e}")))?;
    Ok(stored
        .into_iter()
        .map(|e| AttemptError {
            attempt: e.attempt,
            kind: e.kind,
            message: e.message,
            at: stored_time(e.at),
        })
        .collect())
}

/// A job from its hash.
pub(crate) fn job(mut f: Fields) -> Result<Job> {
    let state = JobState::from_str(f.str("state")?)
        .map_err(|_| internal(format!("unknown job state {:?}", f.opt_str("state"))))?;
    // A job that left `running` keeps its last lease's fields (the scripts leave them for the
    // next claim to overwrite): a lease, and a cancel request, exist only on a running job.
    let running = state == JobState::Running;
    let lease = if running { lease(&f)? } else { None };
    Ok(Job {
        id: JobId::from_uuid(f.uuid("id")?),
        name: f.str("name")?.to_owned(),
        queue: f.str("queue")?.to_owned(),
        priority: f.num("priority")?,
        state,
        attempt: f.num("attempt")?,
        max_attempts: f.num("max_attempts")?,
        timeout: f.opt_duration("timeout_us")?,
        run_at: f.time("run_at")?,
        created_at: f.time("created_at")?,
        finished_at: f.opt_time("finished_at")?,
        unique_key: f.opt_str("unique_key")?.map(str::to_owned),
        scope: f.scope()?,
        lease,
        cancel_requested: running && f.opt_bytes("cancel_requested") == Some(b"1"),
        errors: f.errors()?,
        dlq_id: f.opt_uuid("dlq_id")?.map(DlqId::from_uuid),
        payload: f.take_bytes("payload")?,
        concurrency: concurrency(&f)?,
        progress: f
            .opt_str("progress")?
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| internal(format!("corrupt progress: {e}")))?,
    })
}

/// The concurrency key of a job's hash (`ckey`, `climit`), if it has one.
fn concurrency(f: &Fields) -> Result<Option<ConcurrencyKey>> {
    let Some(key) = f.opt_str("ckey")? else { return Ok(None) };
    Ok(Some(ConcurrencyKey { key: key.to_owned(), limit: f.num("climit")? }))
}

/// The lease of a running job's hash (`None` when its fields are missing).
fn lease(f: &Fields) -> Result<Option<Lease>> {
    let (Some(owner), Some(token)) = (f.opt_str("lease_owner")?, f.opt_uuid("lease_token")?) else {
        return Ok(None);
    };
    let owner =
        WorkerId::from_str(owner).map_err(|_| internal(format!("bad lease owner {owner:?}")))?;
    let token = LeaseToken::from_uuid(token);
    Ok(Some(Lease { owner, token, expires_at: f.time("lease_expires")? }))
}

/// A DLQ entry from its hash.
pub(crate) fn dlq_entry(mut f: Fields) -> Result<DlqEntry> {
    Ok(DlqEntry {
        id: DlqId::from_uuid(f.uuid("id")?),
        job_id: JobId::from_uuid(f.uuid("job_id")?),
        name: f.str("name")?.to_owned(),
        queue: f.str("queue")?.to_owned(),
        priority: f.num("priority")?,
        attempts: f.num("attempts")?,
        max_attempts: f.num("max_attempts")?,
        timeout: f.opt_duration("timeout_us")?,
        scope: f.scope()?,
        errors: f.errors()?,
        failed_at: f.time("failed_at")?,
        replayed_as: f.opt_uuid("replayed_as")?.map(JobId::from_uuid),
        replayed_at: f.opt_time("replayed_at")?,
        payload: f.take_bytes("payload")?,
    })
}

/// A run from its hash (`waiting` is the JSON of [`WaitingFor::to_column`]).
pub(crate) fn run(mut f: Fields) -> Result<Run> {
    let state = RunState::from_str(f.str("state")?)
        .map_err(|_| internal(format!("unknown run state {:?}", f.opt_str("state"))))?;
    Ok(Run {
        id: RunId::from_uuid(f.uuid("id")?),
        name: f.str("name")?.to_owned(),
        version: f.num("version")?,
        state,
        output: f.opt_bytes("output").map(<[u8]>::to_vec),
        error: f.opt_str("error")?.map(str::to_owned),
        scope: f.scope()?,
        idempotency_key: f.opt_str("idempotency_key")?.map(str::to_owned),
        parent: f.opt_uuid("parent")?.map(RunId::from_uuid),
        drive_job: JobId::from_uuid(f.uuid("drive_job")?),
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        finished_at: f.opt_time("finished_at")?,
        cancel_requested: f.opt_str("cancel_requested")?.map(str::to_owned),
        waiting: WaitingFor::from_column(state, f.opt_str("waiting")?)?,
        input: f.take_bytes("input")?,
    })
}

/// Checkpoints from a script's flat list: key, data, time (µs), key, data, time, …
pub(crate) fn checkpoints(reply: Value) -> Result<Vec<Checkpoint>> {
    let items = array(reply)?;
    if items.len() % 3 != 0 {
        return Err(internal("a checkpoint list is not in threes"));
    }
    let mut out = Vec::with_capacity(items.len() / 3);
    let mut items = items.into_iter();
    while let (Some(key), Some(data), Some(at)) = (items.next(), items.next(), items.next()) {
        out.push(Checkpoint { key: string(key)?, data: bytes(data)?, at: stored_time(int(at)?) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_saturate() {
        let t = Timestamp::from_unix_micros(1_893_456_000_123_456);
        assert_eq!(stored_time(time_arg(t)), t);
        assert_eq!(stored_time(time_arg(Timestamp::MAX)), Timestamp::MAX);
        assert_eq!(duration_arg(Duration::MAX), MAX_TIME);
        assert_eq!(option_arg(None), "-");
        assert_eq!(option_arg(Some("")), "+");
    }

    #[test]
    fn error_history_reads_what_the_scripts_write() {
        let json =
            r#"[{"attempt":2,"kind":"lease_expired","message":"a \"b\"","at":1893456000000001}]"#;
        let errors = parse_errors(json).unwrap();
        assert_eq!(errors[0].attempt, 2);
        assert_eq!(errors[0].kind, FailureKind::LeaseExpired);
        assert_eq!(errors[0].message, "a \"b\"");
        assert_eq!(errors[0].at, Timestamp::from_unix_micros(1_893_456_000_000_001));
    }

    fn hash(pairs: &[(&str, &str)]) -> Fields {
        let items = pairs
            .iter()
            .flat_map(|(k, v)| [k, v])
            .map(|s| Value::BulkString(s.as_bytes().to_vec()))
            .collect();
        Fields::parse(Value::Array(items)).unwrap().unwrap()
    }

    #[test]
    fn a_run_reads_what_the_scripts_write() {
        let id = "0193b4f0c0de7000800000000000000a";
        let job = "0193b4f0c0de7000800000000000000b";
        let waiting = r#"[{"kind":"sleep","until":5}]"#;
        let mut fields = vec![
            ("id", id),
            ("name", "order"),
            ("version", "2"),
            ("state", "suspended"),
            ("input", "in"),
            ("drive_job", job),
            ("created_at", "1"),
            ("updated_at", "2"),
            ("app", ""),
            ("waiting", waiting),
        ];
        let suspended = run(hash(&fields)).unwrap();
        assert_eq!(
            suspended.waiting,
            [WaitingFor::Sleep { until: Timestamp::from_unix_micros(5) }]
        );
        assert_eq!(suspended.scope, Scope { app: Some(String::new()), tenant: None });
        assert_eq!((suspended.input.as_slice(), suspended.output), (&b"in"[..], None));
        fields[3] = ("state", "running");
        assert!(run(hash(&fields)).unwrap().waiting.is_empty(), "only a suspended run waits");
    }

    #[test]
    fn a_job_reads_its_key_and_progress_and_older_hashes_have_none() {
        let mut fields = vec![
            ("id", "0193b4f0c0de7000800000000000000a"),
            ("name", "send"),
            ("queue", "q"),
            ("priority", "0"),
            ("state", "available"),
            ("attempt", "0"),
            ("max_attempts", "3"),
            ("run_at", "1"),
            ("created_at", "1"),
            ("payload", "{}"),
        ];
        let older = job(hash(&fields)).unwrap();
        assert_eq!((older.concurrency, older.progress), (None, None));
        fields.extend([("ckey", "customer-7"), ("climit", "2"), ("progress", r#"{"done":3}"#)]);
        let keyed = job(hash(&fields)).unwrap();
        assert_eq!(keyed.concurrency, Some(ConcurrencyKey::new("customer-7", 2)));
        assert_eq!(keyed.progress, Some(serde_json::json!({"done": 3})));
    }

    #[test]
    fn checkpoints_come_in_threes() {
        let flat = |items: &[&str]| {
            Value::Array(items.iter().map(|s| Value::BulkString(s.as_bytes().to_vec())).collect())
        };
        let read = checkpoints(flat(&["a", "\u{0}\u{ff}", "7"])).unwrap();
        assert_eq!(read[0].key, "a");
        assert_eq!(read[0].at, Timestamp::from_unix_micros(7));
        assert!(checkpoints(flat(&["a", "b"])).is_err());
    }
}
