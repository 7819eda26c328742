//! Group commit of checkpoint writes and run ends: the hot path of workflows (one write per
//! step, one end per run).
//!
//! With `fsync` and `synchronous_commit` on, every transaction waits for its WAL flush, so
//! concurrent drives writing one statement each are bounded by commits per second, not by
//! work. Instead a drive queues its write and then races its answer against a commit slot;
//! whoever gets a slot takes everything queued and writes it in one statement (one
//! transaction, one flush), each write still fenced by its own lease (a lost lease fails only
//! that write), and answers them all after the commit. A drive whose write another holder took
//! only waits for its answer. No timer: a batch is what queued while the previous ones
//! committed, so a lone drive pays no delay.
//!
//! A run's end ([`WorkflowStore::end_run`](dispatch_core::WorkflowStore::end_run)) rides the
//! same batches: it is a write too (the run's state, output or error; its waits dropped), fenced
//! the same way, and a commit of its own per run would cost the flush the batch saves.
//!
//! A batch holds at most one write per run, so rows of one batch never touch one checkpoint
//! twice and two leases of one run (a stalled drive and its successor) are fenced one by one;
//! a second write of a run stays queued for the next batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dispatch_core::{Error, ErrorKind, LeaseRef, Result, RunId};
use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use crate::row::get;
use crate::{PostgresStore, db_error};

/// Batches committing at once: one forms while another waits for its flush.
const COMMIT_SLOTS: usize = 2;

/// The most writes one statement carries (bounds its arrays).
const MAX_BATCH: usize = 512;

/// One queued checkpoint write and where to send its answer.
struct QueuedWrite {
    /// Tells this write apart in the queue.
    ticket: u64,
    lease: LeaseRef,
    run: RunId,
    keys: Vec<String>,
    data: Vec<Vec<u8>>,
    /// Set for a run's end (then there are no checkpoints).
    end: Option<End>,
    reply: oneshot::Sender<Result<()>>,
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

/// The checkpoint writes waiting for a commit slot, shared by every clone of a store.
pub(crate) struct CheckpointBatcher {
    queued: Mutex<Vec<QueuedWrite>>,
    slots: Arc<Semaphore>,
    tickets: AtomicU64,
}

impl Default for CheckpointBatcher {
    fn default() -> Self {
        Self {
            queued: Mutex::default(),
            slots: Arc::new(Semaphore::new(COMMIT_SLOTS)),
            tickets: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for CheckpointBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointBatcher").field("queued", &self.queue().len()).finish()
    }
}

impl CheckpointBatcher {
    fn queue(&self) -> MutexGuard<'_, Vec<QueuedWrite>> {
        // The queue is a plain list: a panic elsewhere can not leave it half-changed.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether write `ticket` still waits for a batch.
    fn is_queued(&self, ticket: u64) -> bool {
        self.queue().iter().any(|w| w.ticket == ticket)
    }

    /// The next batch: queued writes in order, one per run, at most [`MAX_BATCH`]; writes whose
    /// caller gave up (timed out, dropped) are discarded unwritten. The rest stay queued.
    fn take_batch(&self) -> Vec<QueuedWrite> {
        let mut queue = self.queue();
        let mut runs = HashSet::new();
        let (mut batch, mut rest) = (Vec::new(), Vec::new());
        for write in queue.drain(..) {
            if write.reply.is_closed() {
                continue;
            }
            if batch.len() < MAX_BATCH && runs.insert(write.run) {
                batch.push(write);
            } else {
                rest.push(write);
            }
        }
        *queue = rest;
        batch
    }
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
        self.batched(lease, run, (keys, data), None).await
    }

    /// End `run`, fenced by `lease`, in the next group commit.
    pub(crate) async fn end_batched(&self, lease: LeaseRef, run: RunId, end: End) -> Result<()> {
        self.batched(lease, run, (Vec::new(), Vec::new()), Some(end)).await
    }

    async fn batched(
        &self,
        lease: LeaseRef,
        run: RunId,
        (keys, data): (Vec<String>, Vec<Vec<u8>>),
        end: Option<End>,
    ) -> Result<()> {
        let (reply, mut answer) = oneshot::channel();
        let batcher = &self.shared.checkpoints;
        let ticket = batcher.tickets.fetch_add(1, Ordering::Relaxed);
        batcher.queue().push(QueuedWrite { ticket, lease, run, keys, data, end, reply });
        // Take a slot until this write is in a batch (it may be left for a later batch: a
        // batch holds one write per run), then wait for its answer.
        while batcher.is_queued(ticket) {
            tokio::select! {
                biased;
                answered = &mut answer => return flatten(answered),
                permit = batcher.slots.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| Error::internal("postgres: no commit slots"))?;
                    let batch = batcher.take_batch();
                    if batch.is_empty() {
                        continue;
                    }
                    // Committed by a task of its own: the callers of the batch answer after
                    // the commit even if this one gives up meanwhile.
                    let store = self.clone();
                    tokio::spawn(async move {
                        store.commit_batch(batch).await;
                        drop(permit);
                    });
                }
            }
        }
        flatten(answer.await)
    }

    /// Write `batch` in one statement and answer every write in it.
    async fn commit_batch(&self, batch: Vec<QueuedWrite>) {
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
    async fn write_batch(&self, batch: &[QueuedWrite]) -> Result<Vec<Result<()>>> {
        let jobs: Vec<Uuid> = batch.iter().map(|w| w.lease.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = batch.iter().map(|w| w.lease.token.uuid()).collect();
        let runs: Vec<Uuid> = batch.iter().map(|w| w.run.uuid()).collect();
        let states: Vec<Option<&str>> =
            batch.iter().map(|w| w.end.as_ref().map(|e| e.state)).collect();
        let outputs: Vec<Option<&[u8]>> =
            batch.iter().map(|w| w.end.as_ref().and_then(|e| e.output.as_deref())).collect();
        let errors: Vec<Option<&str>> =
            batch.iter().map(|w| w.end.as_ref().and_then(|e| e.error.as_deref())).collect();
        let rows = batch.iter().flat_map(|w| w.keys.iter().zip(&w.data).map(move |c| (w.run, c)));
        let (mut row_runs, mut keys, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for (run, (key, bytes)) in rows {
            row_runs.push(run.uuid());
            keys.push(key.as_str());
            data.push(bytes.as_slice());
        }
        let answers = sqlx::query(self.shared.sql.wf.save_checkpoint_batch.clone())
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
        Ok(batch.iter().map(|w| answer(w.run, fenced.get(&w.run).copied())).collect())
    }
}

/// A write's result from its run's `(found, held)`.
fn answer(run: RunId, fenced: Option<(bool, bool)>) -> Result<()> {
    match fenced {
        Some((_, true)) => Ok(()),
        Some((true, false)) => Err(crate::workflow::lease_lost(run)),
        Some((false, _)) => Err(crate::workflow::no_run(run)),
        None => Err(Error::internal(format!("postgres: no answer for the write of run {run}"))),
    }
}

fn flatten(answered: std::result::Result<Result<()>, oneshot::error::RecvError>) -> Result<()> {
    answered.unwrap_or_else(|_| {
        Err(Error::new(ErrorKind::Internal, "postgres: a checkpoint write was dropped"))
    })
}

#[cfg(test)]
mod tests {
    use dispatch_core::{JobId, LeaseToken};

    use super::*;

    fn queue(batcher: &CheckpointBatcher, run: RunId) -> oneshot::Receiver<Result<()>> {
        let (reply, answer) = oneshot::channel();
        let lease = LeaseRef { job_id: JobId::new(), token: LeaseToken::new() };
        let ticket = batcher.tickets.fetch_add(1, Ordering::Relaxed);
        let (keys, data) = (vec![], vec![]);
        let write = QueuedWrite { ticket, lease, run, keys, data, end: None, reply };
        batcher.queue().push(write);
        answer
    }

    #[test]
    fn a_batch_takes_one_write_per_run_and_skips_abandoned_ones() {
        let batcher = CheckpointBatcher::default();
        let (a, b) = (RunId::new(), RunId::new());
        let _first = queue(&batcher, a);
        drop(queue(&batcher, b));
        let _again = queue(&batcher, a);
        let _other = queue(&batcher, b);
        let runs = |batch: Vec<QueuedWrite>| batch.iter().map(|w| w.run).collect::<Vec<_>>();
        assert_eq!(runs(batcher.take_batch()), [a, b]);
        assert_eq!(runs(batcher.take_batch()), [a]);
        assert!(batcher.take_batch().is_empty());
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
