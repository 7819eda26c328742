//! Enqueue: validation, unique keys, and multi-row inserts.
//!
//! A batch is written in runs: consecutive jobs without a unique key go in multi-row `INSERT`s
//! (one statement per up to [`CHUNK`] rows), and each job with a unique key is checked against
//! the jobs stored so far, earlier items of the batch included. Runs keep the batch's order, so
//! enqueue order (`seq`) is the order of the items.

use std::collections::HashSet;

use dispatch_core::{
    Enqueued, Error, ErrorKind, Job, JobId, NewJob, Result, Timestamp, transition,
};
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::flow::gate::insert_default_config;
use crate::row::{duration_micros, parse};

/// Rows per multi-row insert: 17 columns each, well under SQLite's bound-parameter limit.
const CHUNK: usize = 128;
/// The columns every insert writes, in bind order.
const COLUMNS: &str = "id, name, queue, payload, priority, state, attempt, max_attempts, \
                       timeout_us, run_at, created_at, unique_key, unique_until, scope_app, \
                       scope_tenant, concurrency_key, concurrency_limit";
const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// What every enqueue checks before writing: each job valid, no ID twice in the batch.
pub(crate) fn validate_batch(jobs: &[NewJob], max_payload_bytes: usize) -> Result<()> {
    for job in jobs {
        job.validate(max_payload_bytes)?;
    }
    let mut ids = HashSet::with_capacity(jobs.len());
    match jobs.iter().find(|j| !ids.insert(j.id)) {
        Some(job) => Err(reused(&job.name, &job.id.to_string())),
        None => Ok(()),
    }
}

fn reused(name: &str, id: &str) -> Error {
    Error::new(ErrorKind::Conflict, format!("job {name:?}: a job with ID {id} already exists"))
}

/// Write a validated batch on `conn` (inside the caller's transaction); one result per item.
///
/// An item whose ID is already stored with its name and payload (a retried enqueue whose first
/// call committed) answers `Created` and writes nothing; one stored with another name or payload
/// fails the batch with `Conflict` (the caller's transaction must then be rolled back, as the
/// store's own write does). Stored IDs are found by the inserts themselves (`ON CONFLICT (id) DO
/// NOTHING`, then a look at the skipped rows only), so a batch without any costs no statement
/// more than before idempotent enqueues.
pub(crate) async fn enqueue_batch(
    conn: &mut SqliteConnection,
    jobs: Vec<NewJob>,
    now: Timestamp,
) -> Result<Vec<Enqueued>> {
    let mut results = Vec::with_capacity(jobs.len());
    let mut run: Vec<Job> = Vec::new();
    for new in jobs {
        match new.unique.as_ref() {
            None => {
                results.push(Enqueued::Created(new.id));
                run.push(transition::enqueue(new, now));
            }
            Some(unique) => {
                insert_rows(conn, &std::mem::take(&mut run), None).await?;
                let holder = unique_holder(conn, &new, &unique.key, now).await?;
                let result = match holder {
                    // Its own ID is stored: a retry of an enqueue that created it (or a
                    // reused ID, which the insert finds out).
                    Some(holder) if holder == new.id => {
                        insert_rows(conn, &[transition::enqueue(new, now)], None).await?;
                        Enqueued::Created(holder)
                    }
                    Some(holder) => Enqueued::Duplicate(holder),
                    None => {
                        let until = unique.window.map(|window| now + window);
                        let id = new.id;
                        insert_rows(conn, &[transition::enqueue(new, now)], until).await?;
                        Enqueued::Created(id)
                    }
                };
                results.push(result);
            }
        }
    }
    insert_rows(conn, &run, None).await?;
    Ok(results)
}

/// After an insert of `jobs` skipped some rows (their IDs were stored): each stored row must be
/// the same job (name and payload), a retried enqueue; any other is a reused ID, `Conflict`.
async fn check_stored(conn: &mut SqliteConnection, jobs: &[Job]) -> Result<()> {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let json = serde_json::to_string(&ids).map_err(|e| Error::internal(format!("sqlite: {e}")))?;
    let rows = sqlx::query(
        "SELECT id, name, payload FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    for row in rows {
        let id: String = row.try_get("id").map_err(db_error)?;
        let id: JobId = parse("job ID", &id)?;
        let name: String = row.try_get("name").map_err(db_error)?;
        let payload: Vec<u8> = row.try_get("payload").map_err(db_error)?;
        let Some(new) = jobs.iter().find(|j| j.id == id) else { continue };
        if new.name != name || new.payload != payload {
            return Err(reused(&new.name, &id.to_string()));
        }
    }
    Ok(())
}

/// The job holding `key` for `new`'s name: an unfinished one, or a finished one whose window is
/// open. `new`'s own ID when it is stored, whatever its state (a retried enqueue answers as the
/// first call did, even once another job holds the key). One statement.
async fn unique_holder(
    conn: &mut SqliteConnection,
    new: &NewJob,
    key: &str,
    now: Timestamp,
) -> Result<Option<dispatch_core::JobId>> {
    let own = new.id.to_string();
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = ?1 OR (name = ?2 AND unique_key = ?3 \
         AND (state IN ('available', 'running') OR unique_until > ?4)) \
         ORDER BY id = ?1 DESC, seq DESC LIMIT 1",
    )
    .bind(own.as_str())
    .bind(new.name.as_str())
    .bind(key)
    .bind(now.as_unix_micros())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    holder.map(|id| id.parse()).transpose()
}

/// Insert `jobs` (all sharing `unique_until`), in order, in statements of [`CHUNK`] rows and then
/// of halving sizes, so only a handful of statement shapes are ever prepared and cached. A row
/// whose ID is already stored is skipped when it is the same job (a retried enqueue) and fails
/// the call with `Conflict` when it is not.
pub(crate) async fn insert_rows(
    conn: &mut SqliteConnection,
    jobs: &[Job],
    unique_until: Option<Timestamp>,
) -> Result<()> {
    let mut rest = jobs;
    while !rest.is_empty() {
        let size = if rest.len() >= CHUNK { CHUNK } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(size);
        insert_chunk(conn, chunk, unique_until).await?;
        rest = tail;
    }
    Ok(())
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    jobs: &[Job],
    unique_until: Option<Timestamp>,
) -> Result<()> {
    let rows = vec![ROW; jobs.len()].join(", ");
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let sql = sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs ({COLUMNS}) VALUES {rows} ON CONFLICT (id) DO NOTHING"
    ));
    let mut query = sqlx::query(sql);
    for job in jobs {
        query = query
            .bind(job.id.to_string())
            .bind(job.name.as_str())
            .bind(job.queue.as_str())
            .bind(job.payload.as_slice())
            .bind(job.priority)
            .bind(job.state.as_str())
            .bind(i64::from(job.attempt))
            .bind(i64::from(job.max_attempts))
            .bind(duration_micros(job.timeout))
            .bind(job.run_at.as_unix_micros())
            .bind(job.created_at.as_unix_micros())
            .bind(job.unique_key.as_deref())
            .bind(unique_until.map(Timestamp::as_unix_micros))
            .bind(job.scope.app.as_deref())
            .bind(job.scope.tenant.as_deref())
            .bind(job.concurrency.as_ref().map(|c| c.key.as_str()))
            .bind(job.concurrency.as_ref().map(|c| i64::from(c.limit)))
    }
    let written = query.execute(&mut *conn).await.map_err(db_error)?.rows_affected();
    if written < jobs.len() as u64 {
        check_stored(conn, jobs).await?;
    }
    gate_keyed_queues(conn, jobs).await
}

/// Give the queues of `jobs` with a concurrency key a default config where they have none, in
/// the caller's transaction: only a gated claim looks at keys (see [`dispatch_core::flow`]).
/// Costs nothing for a batch without keys.
async fn gate_keyed_queues(conn: &mut SqliteConnection, jobs: &[Job]) -> Result<()> {
    let mut queues: Vec<&str> =
        jobs.iter().filter(|j| j.concurrency.is_some()).map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for queue in queues {
        insert_default_config(conn, queue).await?;
    }
    Ok(())
}
