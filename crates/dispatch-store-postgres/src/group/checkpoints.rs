//! Group commit of checkpoint writes and run ends: the hot path of workflows (one write per
//! step, one end per run), through [`crate::group`].
//!
//! With `fsync` and `synchronous_commit` on, every transaction waits for its WAL flush, so
//! concurrent drives writing one statement each are bounded by commits per second, not by
//! work. Instead a drive queues its write and then races its answer against a commit slot (a
//! writer permit of [`crate::group`]); whoever gets a slot takes everything queued and writes
//! it in one statement (one transaction, one flush), each write still fenced by its own lease
//! (a lost lease fails only that write), and answers them all after the commit. A drive whose
//! write another holder took only waits for its answer. No timer: a batch is what queued while
//! the previous ones committed, so a lone drive pays no delay.
//!
//! A run's end ([`WorkflowStore::end_run`](dispatch_core::WorkflowStore::end_run)) rides the
//! same batches: it is a write too (the run's state, output or error; its waits dropped), fenced
//! the same way, and a commit of its own per run would cost the flush the batch saves.
//!
//! A batch holds at most one write per run, so rows of one batch never touch one checkpoint
//! twice and two leases of one run (a stalled drive and its successor) are fenced one by one;
//! a second write of a run stays queued for the next batch.

use std::collections::{HashMap, HashSet};

use dispatch_core::{Error, LeaseRef, Result, RunId};
use sqlx::SqlStr;
use uuid::Uuid;

use crate::error::{lease_lost, no_run};
use crate::group::{Group, Queued};
use crate::row::get;
use crate::{PostgresStore, db_error, statement};

/// Batches committing at once: one forms while another waits for its flush.
const COMMIT_SLOTS: usize = 2;

/// The most writes one statement carries (bounds its arrays).
const MAX_BATCH: usize = 512;

/// Fenced, for many drives at once (group commit, see the module docs): writes
/// `$2..$7` (drive job, lease token, run, and for a run's end its state, output and error;
/// one write per run) and checkpoints `$8..$10` (run, key, data; keys distinct per run). Each
/// write happens only when its fence holds: its checkpoints upserted in order (a rewritten key
/// keeps its `seq`, its place in write order), or its run ended (its state; its output or
/// error, each kept when none is given; its update and finish times; its waits dropped). The
/// job rows are locked in ID order, so two batches committing at once can not deadlock. One row
/// per write: `run`, `found`, `held`.
const SAVE_CHECKPOINT_BATCH: &str = "WITH t AS (SELECT {now} AS now), \
     q AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bytea[], \
       $7::text[]) AS q(job, token, run, state, output, error)), \
     lock AS (SELECT j.id FROM {s}.jobs j JOIN q ON q.job = j.id AND q.token = j.lease_token \
       WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j), \
     r AS (SELECT x.id, x.drive_job FROM {s}.runs x JOIN q ON q.run = x.id), \
     ok AS (SELECT r.id FROM r JOIN lock l ON l.id = r.drive_job), \
     ins AS (INSERT INTO {s}.checkpoints (run_id, key, data, at) \
       SELECT c.run, c.key, c.data, t.now FROM t, \
       unnest($8::uuid[], $9::text[], $10::bytea[]) WITH ORDINALITY AS c(run, key, data, ord) \
       WHERE c.run IN (SELECT id FROM ok) ORDER BY c.ord \
       ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at \
       RETURNING 1), \
     e AS (SELECT q.* FROM q JOIN ok ON ok.id = q.run WHERE q.state IS NOT NULL), \
     ended AS (UPDATE {s}.runs x SET state = e.state, waiting = NULL, \
       output = coalesce(e.output, x.output), \
       error = coalesce(e.error, x.error), updated_at = t.now, finished_at = t.now FROM e, t \
       WHERE x.id = e.run), \
     dropped AS (DELETE FROM {s}.event_waits w USING e WHERE w.run_id = e.run) \
     SELECT q.run, EXISTS (SELECT 1 FROM r WHERE r.id = q.run) AS found, \
       EXISTS (SELECT 1 FROM ok WHERE ok.id = q.run) AS held, \
       (SELECT count(*) FROM ins) AS written \
     FROM q";

/// The statement of the group commit, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    save: SqlStr,
}

impl Sql {
    /// The statement for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        Self { save: statement(SAVE_CHECKPOINT_BATCH, quoted) }
    }
}

/// One checkpoint write or run end, as it waits for its batch.
pub(crate) struct Write {
    lease: LeaseRef,
    run: RunId,
    keys: Vec<String>,
    data: Vec<Vec<u8>>,
    /// Set for a run's end (then there are no checkpoints).
    end: Option<End>,
}

/// How a run ends, as the batch statement takes it.
pub(crate) struct End {
    /// The final state's name.
    pub(crate) state: &'static str,
    /// The output, when completed.
    pub(crate) output: Option<Vec<u8>>,
    /// The error or cancel reason.
    pub(crate) error: Option<String>,
}

/// The checkpoint writes and run ends waiting for a commit slot, shared by every clone of a
/// store.
pub(crate) type Writes = Group<Write, ()>;

/// The group of one store's checkpoint writes: [`COMMIT_SLOTS`] permits, batches taken by
/// [`take_batch`].
pub(crate) fn writes() -> Writes {
    Group::new(COMMIT_SLOTS, take_batch, "a checkpoint write")
}

/// The next batch: queued writes in order, one per run, at most [`MAX_BATCH`]; writes whose
/// caller gave up (timed out, dropped) are discarded unwritten. The rest stay queued.
fn take_batch(queue: &mut Vec<Queued<Write, ()>>) -> Vec<Queued<Write, ()>> {
    let mut runs = HashSet::new();
    let (mut batch, mut rest) = (Vec::new(), Vec::new());
    for write in queue.drain(..) {
        if write.reply.is_closed() {
            continue;
        }
        if batch.len() < MAX_BATCH && runs.insert(write.item.run) {
            batch.push(write);
        } else {
            rest.push(write);
        }
    }
    *queue = rest;
    batch
}

impl PostgresStore {
    /// Write `keys`/`data` (distinct keys) of `run`, fenced by `lease`, in the next group
    /// commit.
    pub(crate) async fn save_batched(
        &self,
        lease: LeaseRef,
        run: RunId,
        (keys, data): (Vec<String>, Vec<Vec<u8>>),
    ) -> Result<()> {
        self.batched(Write { lease, run, keys, data, end: None }).await
    }

    /// End `run`, fenced by `lease`, in the next group commit.
    pub(crate) async fn end_batched(&self, lease: LeaseRef, run: RunId, end: End) -> Result<()> {
        let (keys, data) = (Vec::new(), Vec::new());
        self.batched(Write { lease, run, keys, data, end: Some(end) }).await
    }

    /// Queue `write` and answer it once a batch holding it committed (a batch holds one write
    /// per run, so it may be left for a later batch).
    async fn batched(&self, write: Write) -> Result<()> {
        self.shared
            .checkpoints
            .join(write, |batch| {
                let store = self.clone();
                async move { store.commit_batch(batch).await }
            })
            .await
    }

    /// Write `batch` in one statement and answer every write in it.
    async fn commit_batch(&self, batch: Vec<Queued<Write, ()>>) {
        match self.write_batch(&batch).await {
            Ok(results) => {
                for (write, result) in batch.into_iter().zip(results) {
                    let _ = write.reply.send(result);
                }
            }
            Err(error) => {
                for write in batch {
                    let copy = Error::new(error.kind(), error.message().to_owned());
                    let _ = write.reply.send(Err(copy));
                }
            }
        }
    }

    /// The statement of a batch: per write its lease, run and end (if one), then every
    /// checkpoint with its run. Answers each write's result, in batch order.
    async fn write_batch(&self, batch: &[Queued<Write, ()>]) -> Result<Vec<Result<()>>> {
        let writes = || batch.iter().map(|q| &q.item);
        let jobs: Vec<Uuid> = writes().map(|w| w.lease.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = writes().map(|w| w.lease.token.uuid()).collect();
        let runs: Vec<Uuid> = writes().map(|w| w.run.uuid()).collect();
        let states: Vec<Option<&str>> = writes().map(|w| w.end.as_ref().map(|e| e.state)).collect();
        let outputs: Vec<Option<&[u8]>> =
            writes().map(|w| w.end.as_ref().and_then(|e| e.output.as_deref())).collect();
        let errors: Vec<Option<&str>> =
            writes().map(|w| w.end.as_ref().and_then(|e| e.error.as_deref())).collect();
        let rows = writes().flat_map(|w| w.keys.iter().zip(&w.data).map(move |c| (w.run, c)));
        let (mut row_runs, mut keys, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for (run, (key, bytes)) in rows {
            row_runs.push(run.uuid());
            keys.push(key.as_str());
            data.push(bytes.as_slice());
        }
        let answers = sqlx::query(self.shared.sql.workflow.batch.save.clone())
            .bind(self.now_param())
            .bind(&jobs)
            .bind(&tokens)
            .bind(&runs)
            .bind(&states)
            .bind(&outputs)
            .bind(&errors)
            .bind(&row_runs)
            .bind(&keys)
            .bind(&data)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(db_error)?;
        let mut fenced = HashMap::with_capacity(answers.len());
        for row in &answers {
            let run = RunId::from_uuid(get(row, "run")?);
            fenced.insert(run, (get::<bool>(row, "found")?, get::<bool>(row, "held")?));
        }
        Ok(writes().map(|w| answer(w.run, fenced.get(&w.run).copied())).collect())
    }
}

/// A write's result from its run's `(found, held)`.
fn answer(run: RunId, fenced: Option<(bool, bool)>) -> Result<()> {
    match fenced {
        Some((_, true)) => Ok(()),
        Some((true, false)) => Err(lease_lost(run)),
        Some((false, _)) => Err(no_run(run)),
        None => Err(Error::internal(format!("postgres: no answer for the write of run {run}"))),
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::{ErrorKind, JobId, LeaseToken};
    use tokio::sync::oneshot;

    use super::*;

    fn queue(queue: &mut Vec<Queued<Write, ()>>, run: RunId) -> oneshot::Receiver<Result<()>> {
        let (reply, answer) = oneshot::channel();
        let lease = LeaseRef { job_id: JobId::new(), token: LeaseToken::new() };
        let (keys, data) = (vec![], vec![]);
        let write = Write { lease, run, keys, data, end: None };
        queue.push(Queued::detached(queue.len() as u64, write, reply));
        answer
    }

    #[test]
    fn every_placeholder_is_expanded() {
        crate::assert_expanded(&Sql::new("\"dispatch\"").save);
    }

    #[test]
    fn a_batch_takes_one_write_per_run_and_skips_abandoned_ones() {
        let mut queued = Vec::new();
        let (a, b) = (RunId::new(), RunId::new());
        let _first = queue(&mut queued, a);
        drop(queue(&mut queued, b));
        let _again = queue(&mut queued, a);
        let _other = queue(&mut queued, b);
        let runs =
            |batch: Vec<Queued<Write, ()>>| batch.iter().map(|w| w.item.run).collect::<Vec<_>>();
        assert_eq!(runs(take_batch(&mut queued)), [a, b]);
        assert_eq!(runs(take_batch(&mut queued)), [a]);
        assert!(take_batch(&mut queued).is_empty());
    }

    #[test]
    fn answers_follow_the_fence() {
        let run = RunId::new();
        assert!(answer(run, Some((true, true))).is_ok());
        assert_eq!(answer(run, Some((true, false))).unwrap_err().kind(), ErrorKind::LeaseLost);
        assert_eq!(answer(run, Some((false, false))).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(answer(run, None).unwrap_err().kind(), ErrorKind::Internal);
    }
}
