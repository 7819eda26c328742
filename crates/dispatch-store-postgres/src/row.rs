//! Conversions between rows and core records, and the column lists the statements select for
//! them (each beside the function that reads it).

use std::time::Duration;

use dispatch_core::{
    AttemptError, Checkpoint, ConcurrencyKey, CronEntry, CronId, CronRecord, DlqEntry, DlqId,
    Error, Job, JobId, JobState, Leader, LeaderWrite, Lease, LeaseToken, Result, Run, RunAt, RunId,
    RunState, Scope, Timestamp, WaitingFor, WorkerId, WorkerRecord, WorkerRegistration,
    WorkerState,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::db_error;

/// A job row with the bookkeeping the record does not show.
#[derive(Debug)]
pub(crate) struct JobRow {
    pub job: Job,
    pub seq: i64,
}

/// Read `column` of `row`.
pub(crate) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(db_error)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("postgres: corrupt {what}: {e}"))
}

fn ts(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

/// A duration as stored: whole microseconds, saturating at `i64::MAX`.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration(us: Option<i64>) -> Option<Duration> {
    us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
}

fn count(what: &str, n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

/// A run-at as the statements take it: an absolute time, or a delay from the store's now.
pub(crate) fn run_at_parts(run_at: RunAt) -> (Option<i64>, Option<i64>) {
    match run_at {
        RunAt::Now => (None, Some(0)),
        RunAt::At(t) => (Some(t.as_unix_micros()), None),
        RunAt::After(d) => (None, Some(micros(d))),
    }
}

/// A job state as stored.
pub(crate) fn state(s: &str) -> Result<JobState> {
    s.parse().map_err(|e| corrupt("job state", e))
}

fn errors(s: &str) -> Result<Vec<AttemptError>> {
    serde_json::from_str(s).map_err(|e| corrupt("error history", e))
}

/// The columns of a job row, as [`job_from_row`] reads them (alias `j`).
pub(crate) const JOB_COLUMNS: &str = "j.id, j.seq, j.name, j.queue, j.payload, j.priority, j.state, \
     j.attempt, j.max_attempts, j.timeout_us, j.run_at, j.created_at, j.finished_at, \
     j.unique_key, j.scope_app, j.scope_tenant, j.lease_owner, j.lease_token, j.lease_expires, \
     j.cancel_requested, j.errors::text AS errors, j.dlq_id, j.concurrency_key, \
     j.concurrency_limit, j.progress::text AS progress";

/// Decode a job row selected with the store's job columns.
pub(crate) fn job_from_row(row: &PgRow) -> Result<JobRow> {
    let lease_owner: Option<String> = get(row, "lease_owner")?;
    let lease_token: Option<Uuid> = get(row, "lease_token")?;
    let lease_expires: Option<i64> = get(row, "lease_expires")?;
    let lease = match (lease_owner, lease_token, lease_expires) {
        (Some(owner), Some(token), Some(expires)) => Some(Lease {
            owner: worker_id(&owner)?,
            token: LeaseToken::from_uuid(token),
            expires_at: ts(expires),
        }),
        _ => None,
    };
    let finished_at: Option<i64> = get(row, "finished_at")?;
    let dlq_id: Option<Uuid> = get(row, "dlq_id")?;
    let job = Job {
        id: JobId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        queue: get(row, "queue")?,
        payload: get(row, "payload")?,
        priority: get(row, "priority")?,
        state: state(&get::<String>(row, "state")?)?,
        attempt: count("attempt", get(row, "attempt")?)?,
        max_attempts: count("max_attempts", get(row, "max_attempts")?)?,
        timeout: duration(get(row, "timeout_us")?),
        run_at: ts(get(row, "run_at")?),
        created_at: ts(get(row, "created_at")?),
        finished_at: finished_at.map(ts),
        unique_key: get(row, "unique_key")?,
        scope: Scope { app: get(row, "scope_app")?, tenant: get(row, "scope_tenant")? },
        lease,
        cancel_requested: get(row, "cancel_requested")?,
        errors: errors(&get::<String>(row, "errors")?)?,
        dlq_id: dlq_id.map(DlqId::from_uuid),
        concurrency: concurrency(get(row, "concurrency_key")?, get(row, "concurrency_limit")?)?,
        progress: progress(get(row, "progress")?)?,
    };
    Ok(JobRow { job, seq: get(row, "seq")? })
}

/// A concurrency key as stored: key and limit, both set or both NULL.
fn concurrency(key: Option<String>, limit: Option<i32>) -> Result<Option<ConcurrencyKey>> {
    match (key, limit) {
        (Some(key), Some(limit)) => {
            let limit = u32::try_from(limit).map_err(|e| corrupt("concurrency limit", e))?;
            Ok(Some(ConcurrencyKey::new(key, limit)))
        }
        _ => Ok(None),
    }
}

/// A progress report as stored (`jsonb` read as text).
fn progress(text: Option<String>) -> Result<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("progress", e))).transpose()
}

/// The columns of a DLQ row, as [`dlq_from_row`] reads them (alias `d`).
pub(crate) const DLQ_COLUMNS: &str = "d.id, d.job_id, d.name, d.queue, d.payload, d.priority, d.attempts, \
     d.max_attempts, d.timeout_us, d.scope_app, d.scope_tenant, d.errors::text AS errors, \
     d.failed_at, d.replayed_as, d.replayed_at";

/// The columns of a DLQ row by name, as statements built with sea-query select them (`errors`
/// cast to text), for [`dlq_from_row`]: the same as [`DLQ_COLUMNS`].
pub(crate) const DLQ_COLUMN_NAMES: [&str; 15] = [
    "id",
    "job_id",
    "name",
    "queue",
    "payload",
    "priority",
    "attempts",
    "max_attempts",
    "timeout_us",
    "scope_app",
    "scope_tenant",
    "errors",
    "failed_at",
    "replayed_as",
    "replayed_at",
];

/// Decode a DLQ row selected with the store's DLQ columns.
pub(crate) fn dlq_from_row(row: &PgRow) -> Result<DlqEntry> {
    let replayed_as: Option<Uuid> = get(row, "replayed_as")?;
    let replayed_at: Option<i64> = get(row, "replayed_at")?;
    Ok(DlqEntry {
        id: DlqId::from_uuid(get(row, "id")?),
        job_id: JobId::from_uuid(get(row, "job_id")?),
        name: get(row, "name")?,
        queue: get(row, "queue")?,
        payload: get(row, "payload")?,
        priority: get(row, "priority")?,
        attempts: count("attempts", get(row, "attempts")?)?,
        max_attempts: count("max_attempts", get(row, "max_attempts")?)?,
        timeout: duration(get(row, "timeout_us")?),
        scope: Scope { app: get(row, "scope_app")?, tenant: get(row, "scope_tenant")? },
        errors: errors(&get::<String>(row, "errors")?)?,
        failed_at: ts(get(row, "failed_at")?),
        replayed_as: replayed_as.map(JobId::from_uuid),
        replayed_at: replayed_at.map(ts),
    })
}

/// The columns of a cron entry row by name, as [`cron_from_row`] reads them (alias `c`; `entry`
/// cast to text).
pub(crate) const CRON_COLUMN_NAMES: [&str; 8] =
    ["id", "entry", "enabled", "next_fire", "last_fired", "last_job", "created_at", "updated_at"];

/// [`CRON_COLUMN_NAMES`] as a hand-written statement selects them.
pub(crate) const CRON_COLUMNS: &str = "c.id, c.entry::text AS entry, c.enabled, c.next_fire, \
     c.last_fired, c.last_job, c.created_at, c.updated_at";

/// Decode a cron entry row selected with the store's cron columns. `enabled` is the column's:
/// the store keeps it, and the entry's copy only mirrors it.
pub(crate) fn cron_from_row(row: &PgRow) -> Result<CronRecord> {
    let mut entry: CronEntry = serde_json::from_str(&get::<String>(row, "entry")?)
        .map_err(|e| corrupt("cron entry", e))?;
    entry.enabled = get(row, "enabled")?;
    let next_fire: Option<i64> = get(row, "next_fire")?;
    let last_fired: Option<i64> = get(row, "last_fired")?;
    let last_job: Option<Uuid> = get(row, "last_job")?;
    Ok(CronRecord {
        id: CronId::from_uuid(get(row, "id")?),
        entry,
        next_fire: next_fire.map(ts),
        last_fired: last_fired.map(ts),
        last_job: last_job.map(JobId::from_uuid),
        created_at: ts(get(row, "created_at")?),
        updated_at: ts(get(row, "updated_at")?),
    })
}

/// The columns of a run row, as [`run_from_row`] reads them (alias `r`).
pub(crate) const RUN_COLUMNS: &str = "r.id, r.name, r.version, r.state, r.input, r.output, r.error, \
     r.scope_app, r.scope_tenant, r.idempotency_key, r.parent, r.drive_job, r.created_at, \
     r.updated_at, r.finished_at, r.cancel_reason, r.waiting::text AS waiting";

/// Decode a run row selected with the store's run columns.
pub(crate) fn run_from_row(row: &PgRow) -> Result<Run> {
    let output: Option<Vec<u8>> = get(row, "output")?;
    let parent: Option<Uuid> = get(row, "parent")?;
    let finished_at: Option<i64> = get(row, "finished_at")?;
    let version: i64 = get(row, "version")?;
    let state: String = get(row, "state")?;
    let state = state.parse::<RunState>().map_err(|e| corrupt("run state", e))?;
    Ok(Run {
        id: RunId::from_uuid(get(row, "id")?),
        name: get(row, "name")?,
        version: u32::try_from(version).map_err(|e| corrupt("run version", e))?,
        state,
        input: get(row, "input")?,
        output,
        error: get(row, "error")?,
        scope: Scope { app: get(row, "scope_app")?, tenant: get(row, "scope_tenant")? },
        idempotency_key: get(row, "idempotency_key")?,
        parent: parent.map(RunId::from_uuid),
        drive_job: JobId::from_uuid(get(row, "drive_job")?),
        created_at: ts(get(row, "created_at")?),
        updated_at: ts(get(row, "updated_at")?),
        finished_at: finished_at.map(ts),
        cancel_requested: get(row, "cancel_reason")?,
        waiting: WaitingFor::from_column(state, get::<Option<String>>(row, "waiting")?.as_deref())?,
    })
}

/// A run's checkpoints (alias `c`) as three arrays in write order, as
/// [`checkpoints_from_row`] reads them.
pub(crate) const CHECKPOINT_ARRAYS: &str = "coalesce(array_agg(c.key ORDER BY c.seq), '{}') AS ck_keys, \
     coalesce(array_agg(c.data ORDER BY c.seq), '{}') AS ck_data, \
     coalesce(array_agg(c.at ORDER BY c.seq), '{}') AS ck_at";

/// Decode the checkpoint arrays (`ck_keys`, `ck_data`, `ck_at`, in write order) of a row.
pub(crate) fn checkpoints_from_row(row: &PgRow) -> Result<Vec<Checkpoint>> {
    let keys: Vec<String> = get(row, "ck_keys")?;
    let data: Vec<Vec<u8>> = get(row, "ck_data")?;
    let at: Vec<i64> = get(row, "ck_at")?;
    if keys.len() != data.len() || keys.len() != at.len() {
        return Err(corrupt("checkpoints", "arrays of different lengths"));
    }
    Ok(keys
        .into_iter()
        .zip(data)
        .zip(at)
        .map(|((key, data), at)| Checkpoint { key, data, at: ts(at) })
        .collect())
}

/// The columns of a worker row, as [`worker_from_row`] reads them (alias `w`).
pub(crate) const WORKER_COLUMNS: &str = "w.id, w.host, w.pid, w.queues, w.concurrency, w.version, \
     w.state, w.started_at, w.last_seen";

/// A worker ID as stored (`workers.id`, `jobs.lease_owner`, `leaders.holder`).
pub(crate) fn worker_id(s: &str) -> Result<WorkerId> {
    s.parse().map_err(|e| corrupt("worker ID", e))
}

/// A worker state as stored.
pub(crate) fn worker_state(s: &str) -> Result<WorkerState> {
    WorkerState::parse(s).ok_or_else(|| corrupt("worker state", s))
}

/// Decode a worker row selected with the store's worker columns.
pub(crate) fn worker_from_row(row: &PgRow) -> Result<WorkerRecord> {
    let pid: i64 = get(row, "pid")?;
    let concurrency: i64 = get(row, "concurrency")?;
    let registration = WorkerRegistration {
        id: worker_id(&get::<String>(row, "id")?)?,
        host: get(row, "host")?,
        pid: u32::try_from(pid).map_err(|e| corrupt("worker pid", e))?,
        queues: get(row, "queues")?,
        concurrency: count("worker concurrency", concurrency)?,
        version: get(row, "version")?,
    };
    Ok(WorkerRecord {
        registration,
        state: worker_state(&get::<String>(row, "state")?)?,
        started_at: ts(get(row, "started_at")?),
        last_seen: ts(get(row, "last_seen")?),
    })
}

/// The columns of a leadership row, as [`leader_from_row`] reads them (alias `l`).
pub(crate) const LEADER_COLUMNS: &str = "l.name, l.holder, l.term, l.elected_at, l.expires_at";

/// Decode a leadership row selected with the store's leader columns.
pub(crate) fn leader_from_row(row: &PgRow) -> Result<Leader> {
    let term: i64 = get(row, "term")?;
    Ok(Leader {
        name: get(row, "name")?,
        holder: worker_id(&get::<String>(row, "holder")?)?,
        term: u64::try_from(term).map_err(|e| corrupt("leader term", e))?,
        elected_at: ts(get(row, "elected_at")?),
        expires_at: ts(get(row, "expires_at")?),
    })
}

/// Decode a leader write row (`name`, `term`, `at`, `action`).
pub(crate) fn leader_write_from_row(row: &PgRow) -> Result<LeaderWrite> {
    let term: i64 = get(row, "term")?;
    Ok(LeaderWrite {
        name: get(row, "name")?,
        term: u64::try_from(term).map_err(|e| corrupt("leader term", e))?,
        at: ts(get(row, "at")?),
        action: get(row, "action")?,
    })
}

/// A row count or limit as PostgreSQL takes it.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dlq_column_lists_agree() {
        let named = DLQ_COLUMN_NAMES.map(|c| format!("d.{c}")).join(", ");
        let listed = DLQ_COLUMNS.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(named.replace("d.errors", "d.errors::text AS errors"), listed);
        let named = CRON_COLUMN_NAMES.map(|c| format!("c.{c}")).join(", ");
        let listed = CRON_COLUMNS.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(named.replace("c.entry", "c.entry::text AS entry"), listed);
    }
}
