//! Group commit of checkpoint writes (see [`super`]): the hot path of workflows, one write per
//! step.

use std::collections::{HashMap, HashSet};

use dispatch_core::{ErrorKind, LeaseRef, NewCheckpoint, Result, RunId, Timestamp};
use sqlx::Connection;
use tokio::sync::oneshot;

use super::{Queue, answer_all};
use crate::SqliteStore;
use crate::error::db_error;
use crate::row::{chunks, token_text};
use crate::run::{fenced, write_checkpoints};

/// One queued checkpoint write and where to send its answer.
pub(crate) struct QueuedWrite {
    lease: LeaseRef,
    run: RunId,
    checkpoints: Vec<NewCheckpoint>,
    now: Timestamp,
    reply: oneshot::Sender<Result<()>>,
}

/// The writes waiting for the writer.
pub(crate) type WriteQueue = Queue<QueuedWrite>;

impl SqliteStore {
    /// Write `checkpoints` of `run`, fenced by `lease`, in the next group commit.
    pub(crate) async fn save_grouped(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        let now = self.clock.now();
        let write = |reply| QueuedWrite { lease, run, checkpoints, now, reply };
        let commit: super::Commit<QueuedWrite> = |conn, batch| Box::pin(commit(conn, batch));
        self.grouped(("save_checkpoints", "a checkpoint write"), &self.writes, write, commit).await
    }
}

/// Write `batch` in one transaction and answer every write in it.
async fn commit(conn: &mut sqlx::SqliteConnection, batch: Vec<QueuedWrite>) {
    if batch.is_empty() {
        return;
    }
    let results = write_batch(conn, &batch).await;
    answer_all(batch.into_iter().map(|queued| queued.reply), results);
}

/// One transaction for `batch`: every checkpoint of the batch in multi-row upserts, each row
/// written only while its own lease holds (a lost lease fails only that write); the writes no
/// row came back for are told apart afterwards (lease lost, unknown run). A database error fails
/// them all (nothing is committed).
async fn write_batch(
    conn: &mut sqlx::SqliteConnection,
    batch: &[QueuedWrite],
) -> Result<Vec<Result<()>>> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
    // A run written under two leases in one batch (a stalled drive and its successor) is left
    // to the one-by-one path below: the upsert reports written runs, not leases.
    let contested = contested_runs(batch);
    let rows: Vec<Row<'_>> = batch
        .iter()
        .filter(|write| !contested.contains(&write.run))
        .flat_map(|write| write.checkpoints.iter().map(move |c| Row { write, checkpoint: c }))
        .collect();
    let mut written: HashSet<String> = HashSet::new();
    for chunk in chunks(&rows) {
        written.extend(upsert_fenced(&mut tx, chunk).await?);
    }
    let mut results = Vec::with_capacity(batch.len());
    for write in batch {
        let bulk = !write.checkpoints.is_empty() && !contested.contains(&write.run);
        if bulk && written.contains(&write.run.to_string()) {
            results.push(Ok(()));
            continue;
        }
        // Nothing written for it: a lost lease, an unknown run, or no checkpoints at all.
        match fenced(&mut tx, write.lease, write.run).await {
            Ok(_) => {
                write_checkpoints(&mut tx, write.run, &write.checkpoints, write.now).await?;
                results.push(Ok(()));
            }
            Err(error) if matches!(error.kind(), ErrorKind::LeaseLost | ErrorKind::NotFound) => {
                results.push(Err(error));
            }
            Err(error) => return Err(error),
        }
    }
    tx.commit().await.map_err(db_error)?;
    Ok(results)
}

/// The runs that more than one lease writes to in `batch`.
fn contested_runs(batch: &[QueuedWrite]) -> HashSet<RunId> {
    let mut lease_of: HashMap<RunId, LeaseRef> = HashMap::new();
    let mut contested = HashSet::new();
    for write in batch {
        if *lease_of.entry(write.run).or_insert(write.lease) != write.lease {
            contested.insert(write.run);
        }
    }
    contested
}

/// One checkpoint of a queued write.
struct Row<'a> {
    write: &'a QueuedWrite,
    checkpoint: &'a NewCheckpoint,
}

/// Upsert `rows` in one statement, each only while its write's lease holds the run's drive job;
/// the runs written to.
async fn upsert_fenced(conn: &mut sqlx::SqliteConnection, rows: &[Row<'_>]) -> Result<Vec<String>> {
    let values = vec!["(?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
    // Safe: the text holds only fixed SQL and placeholders; values are bound. `WHERE` before
    // `ON CONFLICT` is what SQLite's grammar needs to tell the upsert from a join.
    let sql = sqlx::AssertSqlSafe(format!(
        "INSERT INTO checkpoints (run_id, key, data, at) \
         SELECT v.column1, v.column2, v.column3, v.column4 FROM (VALUES {values}) AS v \
         WHERE EXISTS (SELECT 1 FROM runs JOIN jobs ON jobs.id = runs.drive_job \
           WHERE runs.id = v.column1 AND runs.drive_job = v.column5 \
           AND jobs.state = 'running' AND jobs.lease_token = v.column6) \
         ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at \
         RETURNING run_id"
    ));
    let mut query = sqlx::query_scalar::<_, String>(sql);
    for row in rows {
        query = query
            .bind(row.write.run.to_string())
            .bind(row.checkpoint.key.as_str())
            .bind(row.checkpoint.data.as_slice())
            .bind(row.write.now.as_unix_micros())
            .bind(row.write.lease.job_id.to_string())
            .bind(token_text(row.write.lease.token));
    }
    query.fetch_all(&mut *conn).await.map_err(db_error)
}
