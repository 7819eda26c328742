//! Group commit of run ends (see [`super`]): every run ends with one fenced write, and each one
//! alone would take the writer for a whole transaction (four round trips to the connection's
//! thread).

use std::collections::HashSet;

use dispatch_core::{Error, ErrorKind, LeaseRef, Result, RunEnd, RunId, Timestamp};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::oneshot;

use super::{Queue, answer_all};
use crate::SqliteStore;
use crate::error::db_error;
use crate::row::{chunks, token_text};
use crate::run::{delete_waits, fenced};

/// One queued run end and where to send its answer.
pub(crate) struct QueuedEnd {
    lease: LeaseRef,
    run: RunId,
    end: RunEnd,
    now: Timestamp,
    reply: oneshot::Sender<Result<()>>,
}

/// The run ends waiting for the writer.
pub(crate) type EndQueue = Queue<QueuedEnd>;

impl SqliteStore {
    /// End `run` as `end`, fenced by `lease`, in the next group commit of run ends.
    pub(crate) async fn end_grouped(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        let now = self.clock.now();
        let end = |reply| QueuedEnd { lease, run, end, now, reply };
        let commit: super::Commit<QueuedEnd> = |conn, batch| Box::pin(commit(conn, batch));
        self.grouped(("end_run", "a run end"), &self.ends, end, commit).await
    }
}

/// End `batch` in one transaction and answer every end in it.
async fn commit(conn: &mut SqliteConnection, batch: Vec<QueuedEnd>) {
    if batch.is_empty() {
        return;
    }
    let results = end_batch(conn, &batch).await;
    answer_all(batch.into_iter().map(|queued| queued.reply), results);
}

/// One transaction for `batch`: the first end of each run in multi-row updates, each run
/// changed only while its end's lease holds; a later end of a run already in the batch (two
/// leases: a stalled drive and its successor) one by one after them, as if called in turn. A
/// database error fails them all (nothing is committed).
async fn end_batch(conn: &mut SqliteConnection, batch: &[QueuedEnd]) -> Result<Vec<Result<()>>> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
    let mut seen = HashSet::new();
    let is_first: Vec<bool> = batch.iter().map(|end| seen.insert(end.run)).collect();
    let first: Vec<&QueuedEnd> =
        batch.iter().zip(&is_first).filter(|(_, first)| **first).map(|(end, _)| end).collect();
    let mut ended: HashSet<String> = HashSet::new();
    for chunk in chunks(&first) {
        let runs = update_fenced(&mut tx, chunk).await?;
        drop_waits(&mut tx, &runs).await?;
        ended.extend(runs);
    }
    let mut results = Vec::with_capacity(batch.len());
    for (end, &bulk) in batch.iter().zip(&is_first) {
        let result = if bulk && ended.contains(&end.run.to_string()) {
            Ok(())
        } else if bulk {
            // Not ended: say why (a lost lease, an unknown run).
            why_not(&mut tx, end.lease, end.run).await
        } else {
            end_one(&mut tx, end).await
        };
        match result {
            Err(error) if !matches!(error.kind(), ErrorKind::LeaseLost | ErrorKind::NotFound) => {
                return Err(error);
            }
            result => results.push(result),
        }
    }
    tx.commit().await.map_err(db_error)?;
    Ok(results)
}

/// The columns a run end writes: state, output, error.
fn parts(end: &RunEnd) -> (&'static str, Option<&[u8]>, Option<&str>) {
    match end {
        RunEnd::Completed(output) => (end.state().as_str(), Some(output), None),
        RunEnd::Failed(error) | RunEnd::Cancelled(error) => {
            (end.state().as_str(), None, Some(error))
        }
    }
}

/// End the runs of `ends` in one statement, each only while its lease holds the run's drive
/// job; the runs ended.
async fn update_fenced(conn: &mut SqliteConnection, ends: &[&QueuedEnd]) -> Result<Vec<String>> {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; ends.len()].join(", ");
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE runs SET state = v.column2, waiting = NULL, \
         output = coalesce(v.column3, runs.output), \
         error = coalesce(v.column4, runs.error), updated_at = v.column5, \
         finished_at = v.column5 \
         FROM (VALUES {values}) AS v \
         WHERE runs.id = v.column1 AND runs.drive_job = v.column6 AND EXISTS (SELECT 1 FROM jobs \
           WHERE jobs.id = v.column6 AND jobs.state = 'running' AND jobs.lease_token = v.column7) \
         RETURNING runs.id"
    ));
    let mut query = sqlx::query_scalar::<_, String>(sql);
    for end in ends {
        let (state, output, error) = parts(&end.end);
        query = query
            .bind(end.run.to_string())
            .bind(state)
            .bind(output)
            .bind(error)
            .bind(end.now.as_unix_micros())
            .bind(end.lease.job_id.to_string())
            .bind(token_text(end.lease.token));
    }
    query.fetch_all(&mut *conn).await.map_err(db_error)
}

/// Remove the waits of the ended `runs` (an ended run waits for nothing).
async fn drop_waits(conn: &mut SqliteConnection, runs: &[String]) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let list = vec!["?"; runs.len()].join(", ");
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let sql = sqlx::AssertSqlSafe(format!("DELETE FROM event_waits WHERE run_id IN ({list})"));
    let mut query = sqlx::query(sql);
    for run in runs {
        query = query.bind(run.as_str());
    }
    query.execute(&mut *conn).await.map_err(db_error)?;
    Ok(())
}

/// End one run, fenced in the statement itself.
async fn end_one(conn: &mut SqliteConnection, end: &QueuedEnd) -> Result<()> {
    let (state, output, error) = parts(&end.end);
    let id = end.run.to_string();
    let ended = sqlx::query(
        "UPDATE runs SET state = ?, waiting = NULL, output = coalesce(?, output), \
         error = coalesce(?, error), updated_at = ?, finished_at = ? \
         WHERE id = ? AND drive_job = ? AND EXISTS (SELECT 1 FROM jobs \
           WHERE jobs.id = ? AND jobs.state = 'running' AND jobs.lease_token = ?)",
    )
    .bind(state)
    .bind(output)
    .bind(error)
    .bind(end.now.as_unix_micros())
    .bind(end.now.as_unix_micros())
    .bind(id.as_str())
    .bind(end.lease.job_id.to_string())
    .bind(end.lease.job_id.to_string())
    .bind(token_text(end.lease.token))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    if ended.rows_affected() == 0 {
        return why_not(conn, end.lease, end.run).await;
    }
    delete_waits(conn, &id).await
}

/// The error of an end that changed nothing: `NotFound`, `LeaseLost`, or (the fence held after
/// all, which can not happen inside the writer's transaction) internal.
async fn why_not(conn: &mut SqliteConnection, lease: LeaseRef, run: RunId) -> Result<()> {
    fenced(conn, lease, run).await?;
    Err(Error::internal(format!("run {run} did not end")))
}
