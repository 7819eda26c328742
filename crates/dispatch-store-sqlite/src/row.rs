//! Conversions between rows and core records (jobs, DLQ entries, runs, checkpoints, workers,
//! leaders and their writes, cron entries).

use std::time::Duration;

use dispatch_core::{
    AttemptError, Checkpoint, ConcurrencyKey, CronEntry, CronRecord, DlqEntry, Error, Job, JobId,
    JobState, Leader, LeaderWrite, Lease, LeaseToken, Result, Run, RunState, Scope, Timestamp,
    WaitingFor, WorkerRecord, WorkerRegistration, WorkerState,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::error::db_error;

/// A row count or limit as SQLite takes it.
///
/// Statements bind a limit as `LIMIT +?`, never `LIMIT ?`: SQLite (3.47 on) plans a bare
/// `LIMIT ?` with the value bound at prepare time, and so marks the statement stale whenever
/// that parameter is bound again, which makes every execution of a cached statement parse and
/// plan it anew. The unary plus keeps the limit a run-time value.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A job row with the bookkeeping the record does not show.
#[derive(Debug)]
pub(crate) struct JobRow {
    pub job: Job,
    pub seq: i64,
    pub last_finish: Option<LeaseToken>,
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(db_error)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: corrupt {what}: {e}"))
}

/// Parse a stored text value; a value that does not parse is a corrupt row (`Internal`).
pub(crate) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| corrupt(what, e))
}

fn token(s: &str) -> Result<LeaseToken> {
    Uuid::parse_str(s).map(LeaseToken::from_uuid).map_err(|e| corrupt("lease token", e))
}

/// A lease token as stored.
pub(crate) fn token_text(token: LeaseToken) -> String {
    token.uuid().simple().to_string()
}

fn ts(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A duration as stored (microseconds).
pub(crate) fn duration_micros(d: Option<Duration>) -> Option<i64> {
    d.map(micros)
}

fn duration(us: Option<i64>) -> Option<Duration> {
    us.map(|us| Duration::from_micros(us.max(0) as u64))
}

fn count(what: &str, n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|e| corrupt(what, e))
}

/// Errors history as stored (JSON).
pub(crate) fn errors_json(errors: &[AttemptError]) -> Result<String> {
    serde_json::to_string(errors).map_err(|e| corrupt("error history", e))
}

fn errors(s: &str) -> Result<Vec<AttemptError>> {
    serde_json::from_str(s).map_err(|e| corrupt("error history", e))
}

/// Decode a `jobs` row selected with `*`.
pub(crate) fn job_from_row(row: &SqliteRow) -> Result<JobRow> {
    let lease_owner: Option<String> = get(row, "lease_owner")?;
    let lease_token: Option<String> = get(row, "lease_token")?;
    let lease_expires: Option<i64> = get(row, "lease_expires")?;
    let lease = match (lease_owner, lease_token, lease_expires) {
        (Some(owner), Some(t), Some(expires)) => Some(Lease {
            owner: parse("worker ID", &owner)?,
            token: token(&t)?,
            expires_at: ts(expires),
        }),
        _ => None,
    };
    let dlq_id: Option<String> = get(row, "dlq_id")?;
    let last_finish: Option<String> = get(row, "last_finish_token")?;
    let finished_at: Option<i64> = get(row, "finished_at")?;
    let job = Job {
        id: parse("job ID", &get::<String>(row, "id")?)?,
        name: get(row, "name")?,
        queue: get(row, "queue")?,
        payload: get(row, "payload")?,
        priority: get(row, "priority")?,
        state: parse::<JobState>("job state", &get::<String>(row, "state")?)?,
        attempt: count("attempt", get(row, "attempt")?)?,
        max_attempts: count("max_attempts", get(row, "max_attempts")?)?,
        timeout: duration(get(row, "timeout_us")?),
        run_at: ts(get(row, "run_at")?),
        created_at: ts(get(row, "created_at")?),
        finished_at: finished_at.map(ts),
        unique_key: get(row, "unique_key")?,
        scope: Scope { app: get(row, "scope_app")?, tenant: get(row, "scope_tenant")? },
        lease,
        cancel_requested: get::<i64>(row, "cancel_requested")? != 0,
        errors: errors(&get::<String>(row, "errors")?)?,
        dlq_id: dlq_id.map(|s| parse("DLQ ID", &s)).transpose()?,
        concurrency: concurrency(row)?,
        progress: progress(row)?,
    };
    Ok(JobRow {
        job,
        seq: get(row, "seq")?,
        last_finish: last_finish.map(|t| token(&t)).transpose()?,
    })
}

/// A job row's concurrency key: both columns set, or neither.
fn concurrency(row: &SqliteRow) -> Result<Option<ConcurrencyKey>> {
    let key: Option<String> = get(row, "concurrency_key")?;
    let limit: Option<i64> = get(row, "concurrency_limit")?;
    Ok(match (key, limit) {
        (Some(key), Some(limit)) => {
            Some(ConcurrencyKey::new(key, count("concurrency limit", limit)?))
        }
        _ => None,
    })
}

/// A job row's last progress report (JSON text).
fn progress(row: &SqliteRow) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = get(row, "progress")?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("progress", e))).transpose()
}

/// Decode a `dlq` row selected with `*`.
pub(crate) fn dlq_from_row(row: &SqliteRow) -> Result<DlqEntry> {
    let replayed_as: Option<String> = get(row, "replayed_as")?;
    let replayed_at: Option<i64> = get(row, "replayed_at")?;
    Ok(DlqEntry {
        id: parse("DLQ ID", &get::<String>(row, "id")?)?,
        job_id: parse("job ID", &get::<String>(row, "job_id")?)?,
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
        replayed_as: replayed_as.map(|s| parse("job ID", &s)).transpose()?,
        replayed_at: replayed_at.map(ts),
    })
}

/// Load one job by ID.
pub(crate) async fn load_job(conn: &mut SqliteConnection, id: JobId) -> Result<Option<JobRow>> {
    sqlx::query("SELECT * FROM jobs WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

/// Write back the mutable fields of a job row.
pub(crate) async fn save_job(conn: &mut SqliteConnection, row: &JobRow) -> Result<()> {
    let job = &row.job;
    sqlx::query(
        "UPDATE jobs SET state = ?, attempt = ?, run_at = ?, finished_at = ?, lease_owner = ?, \
         lease_token = ?, lease_expires = ?, cancel_requested = ?, errors = ?, dlq_id = ?, \
         last_finish_token = ? WHERE seq = ?",
    )
    .bind(job.state.as_str())
    .bind(i64::from(job.attempt))
    .bind(job.run_at.as_unix_micros())
    .bind(job.finished_at.map(Timestamp::as_unix_micros))
    .bind(job.lease.map(|l| l.owner.to_string()))
    .bind(job.lease.map(|l| token_text(l.token)))
    .bind(job.lease.map(|l| l.expires_at.as_unix_micros()))
    .bind(i64::from(job.cancel_requested))
    .bind(errors_json(&job.errors)?)
    .bind(job.dlq_id.map(|id| id.to_string()))
    .bind(row.last_finish.map(token_text))
    .bind(row.seq)
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Insert a DLQ entry.
pub(crate) async fn insert_dlq(conn: &mut SqliteConnection, entry: &DlqEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO dlq (id, job_id, name, queue, payload, priority, attempts, max_attempts, \
         timeout_us, scope_app, scope_tenant, errors, failed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.id.to_string())
    .bind(entry.job_id.to_string())
    .bind(&entry.name)
    .bind(&entry.queue)
    .bind(&entry.payload)
    .bind(entry.priority)
    .bind(i64::from(entry.attempts))
    .bind(i64::from(entry.max_attempts))
    .bind(duration_micros(entry.timeout))
    .bind(&entry.scope.app)
    .bind(&entry.scope.tenant)
    .bind(errors_json(&entry.errors)?)
    .bind(entry.failed_at.as_unix_micros())
    .execute(conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Decode a `runs` row selected with `*` (or `runs.*`).
pub(crate) fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let parent: Option<String> = get(row, "parent")?;
    let finished_at: Option<i64> = get(row, "finished_at")?;
    let state = parse::<RunState>("run state", &get::<String>(row, "state")?)?;
    Ok(Run {
        id: parse("run ID", &get::<String>(row, "id")?)?,
        name: get(row, "name")?,
        version: count("workflow version", get(row, "version")?)?,
        state,
        input: get(row, "input")?,
        output: get(row, "output")?,
        error: get(row, "error")?,
        scope: Scope { app: get(row, "scope_app")?, tenant: get(row, "scope_tenant")? },
        idempotency_key: get(row, "idempotency_key")?,
        parent: parent.map(|s| parse("run ID", &s)).transpose()?,
        drive_job: parse("job ID", &get::<String>(row, "drive_job")?)?,
        created_at: ts(get(row, "created_at")?),
        updated_at: ts(get(row, "updated_at")?),
        finished_at: finished_at.map(ts),
        cancel_requested: get(row, "cancel_reason")?,
        waiting: WaitingFor::from_column(state, get::<Option<String>>(row, "waiting")?.as_deref())?,
    })
}

/// Decode a checkpoint from a row with `key`, `data` and `at` columns.
pub(crate) fn checkpoint_from_row(row: &SqliteRow) -> Result<Checkpoint> {
    Ok(Checkpoint { key: get(row, "key")?, data: get(row, "data")?, at: ts(get(row, "at")?) })
}

/// Decode a `workers` row selected with `*`.
pub(crate) fn worker_from_row(row: &SqliteRow) -> Result<WorkerRecord> {
    let queues: String = get(row, "queues")?;
    let registration = WorkerRegistration {
        id: parse("worker ID", &get::<String>(row, "id")?)?,
        host: get(row, "host")?,
        pid: count("pid", get(row, "pid")?)?,
        queues: serde_json::from_str(&queues).map_err(|e| corrupt("worker queues", e))?,
        concurrency: count("concurrency", get(row, "concurrency")?)?,
        version: get(row, "version")?,
    };
    Ok(WorkerRecord {
        registration,
        state: worker_state(&get::<String>(row, "state")?)?,
        started_at: ts(get(row, "started_at")?),
        last_seen: ts(get(row, "last_seen")?),
    })
}

/// A worker state as stored ([`WorkerState::as_str`]).
pub(crate) fn worker_state(s: &str) -> Result<WorkerState> {
    WorkerState::parse(s).ok_or_else(|| corrupt("worker state", s))
}

/// A term as stored (SQLite integers are signed; terms start at 1 and grow by one).
pub(crate) fn term_value(term: u64) -> Result<i64> {
    i64::try_from(term).map_err(|e| Error::invalid_input(format!("term {term}: {e}")))
}

/// The `term` column of a row; a negative one is a corrupt row.
fn term(row: &SqliteRow) -> Result<u64> {
    u64::try_from(get::<i64>(row, "term")?).map_err(|e| corrupt("term", e))
}

/// Decode a `leaders` row selected with `*`.
pub(crate) fn leader_from_row(row: &SqliteRow) -> Result<Leader> {
    Ok(Leader {
        name: get(row, "name")?,
        holder: parse("worker ID", &get::<String>(row, "holder")?)?,
        term: term(row)?,
        elected_at: ts(get(row, "elected_at")?),
        expires_at: ts(get(row, "expires_at")?),
    })
}

/// Decode a `leader_writes` row selected with `*`.
pub(crate) fn leader_write_from_row(row: &SqliteRow) -> Result<LeaderWrite> {
    Ok(LeaderWrite {
        name: get(row, "name")?,
        term: term(row)?,
        at: ts(get(row, "at")?),
        action: get(row, "action")?,
    })
}

/// A cron entry as stored (JSON).
pub(crate) fn cron_entry_json(entry: &CronEntry) -> Result<String> {
    serde_json::to_string(entry).map_err(|e| corrupt("cron entry", e))
}

/// Decode a `cron` row selected with `*`. The `enabled` column is the one due reads see, so the
/// record takes it from there.
pub(crate) fn cron_from_row(row: &SqliteRow) -> Result<CronRecord> {
    let mut entry: CronEntry = serde_json::from_str(&get::<String>(row, "entry")?)
        .map_err(|e| corrupt("cron entry", e))?;
    entry.enabled = get::<i64>(row, "enabled")? != 0;
    let last_job: Option<String> = get(row, "last_job")?;
    Ok(CronRecord {
        id: parse("cron ID", &get::<String>(row, "id")?)?,
        entry,
        next_fire: get::<Option<i64>>(row, "next_fire")?.map(ts),
        last_fired: get::<Option<i64>>(row, "last_fired")?.map(ts),
        last_job: last_job.map(|s| parse("job ID", &s)).transpose()?,
        created_at: ts(get(row, "created_at")?),
        updated_at: ts(get(row, "updated_at")?),
    })
}

/// Rows per multi-row insert of checkpoints or waits (at most 7 parameters each).
const CHUNK: usize = 128;

/// `items` cut into statements of [`CHUNK`] rows and then of halving sizes, so only a handful of
/// statement shapes are ever prepared and cached (as `enqueue` does for jobs).
pub(crate) fn chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut rest = items;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let size = if rest.len() >= CHUNK { CHUNK } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}
