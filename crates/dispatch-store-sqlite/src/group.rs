//! Group commits on the writer: the hot path of workflows writes a checkpoint per step and ends
//! every run with one fenced write, and each alone would take the writer for a whole
//! transaction.
//!
//! A drive queues its write and then takes the writer; whoever holds it writes every queued
//! write in one `BEGIN IMMEDIATE` transaction, each still fenced by its own lease (a lost lease
//! fails only that write), and answers them all after the commit. A drive whose write was taken
//! by another holder finds the queue empty and only waits for its answer. Checkpoint writes are
//! in [`checkpoints`], run ends in [`run_end`].

pub(crate) mod checkpoints;
pub(crate) mod run_end;

use dispatch_core::{Error, Result};
use parking_lot::Mutex;
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use crate::{BoxFuture, SqliteStore};

/// Writes one batch in one transaction and answers every write in it.
type Commit<T> = for<'c> fn(&'c mut SqliteConnection, Vec<T>) -> BoxFuture<'c, ()>;

impl SqliteStore {
    /// Queue `write` (built around the sender of its answer) on `queue` and wait for the
    /// answer: either another holder of the writer answers it, or this call takes the writer
    /// and writes everything queued with `commit`. Waiting for the writer after being answered
    /// would hand it on one write at a time (a convoy of groups of one). `call` names the store
    /// call for its timeout; `what` the write in the error of one dropped unanswered.
    async fn grouped<T: Send>(
        &self,
        (call, what): (&'static str, &'static str),
        queue: &Queue<T>,
        write: impl FnOnce(oneshot::Sender<Result<()>>) -> T,
        commit: Commit<T>,
    ) -> Result<()> {
        let (reply, mut answer) = oneshot::channel();
        queue.push(write(reply));
        self.timed(call, async {
            tokio::select! {
                biased;
                answered = &mut answer => return flatten(answered, what),
                mut conn = self.writer.lock() => {
                    let batch = queue.take();
                    commit(&mut conn, batch).await;
                    self.wal.wrote();
                }
            }
            flatten(answer.await, what)
        })
        .await
    }
}

/// Writes of one kind waiting for the writer's next group commit.
pub(crate) struct Queue<T> {
    queued: Mutex<Vec<T>>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self { queued: Mutex::new(Vec::new()) }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("queued", &self.queued.lock().len()).finish()
    }
}

impl<T> Queue<T> {
    /// Queue `write` for the next group commit.
    fn push(&self, write: T) {
        self.queued.lock().push(write);
    }

    /// Everything queued, leaving the queue empty.
    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.queued.lock())
    }
}

/// The answer a queued write received, or an internal error naming `what` when its sender was
/// dropped unanswered.
fn flatten(
    answered: std::result::Result<Result<()>, oneshot::error::RecvError>,
    what: &str,
) -> Result<()> {
    answered.unwrap_or_else(|_| Err(Error::internal(format!("sqlite: {what} was dropped"))))
}

/// Send every queued write its answer: its own result when the batch committed, a copy of the
/// batch's error when it did not (nothing was committed).
fn answer_all(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<()>>>,
    results: Result<Vec<Result<()>>>,
) {
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(Error::new(error.kind(), error.message().to_owned())));
            }
        }
    }
}
