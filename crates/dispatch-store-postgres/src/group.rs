//! Group commit: concurrent callers share one statement and one commit.
//!
//! A write that commits alone pays a commit of its own (a WAL flush; with a `NOTIFY`, a turn at
//! a lock PostgreSQL serializes notifying commits on), so concurrent callers are bounded by
//! commits per second, not by work. Instead a caller queues its write and then races its
//! answer against a writer permit; whoever gets a permit takes a batch of what is queued and
//! writes it in one statement, in a task of its own, and answers every caller in it after the
//! commit. A caller whose write another writer took only waits for its answer. No timer: a
//! batch is what queued while the previous ones committed, so a lone caller pays no delay.
//!
//! The write runs in a task of its own: a caller that gives up (its timeout, a dropped future)
//! never abandons the writes of the others it took along.
//!
//! What a batch may hold is the user's rule ([`Take`]): enqueues take everything queued
//! ([`take_all`]); checkpoint writes take one write per run, and a write left behind stays
//! queued, its caller racing for a permit again.

pub(crate) mod checkpoints;

use std::future::Future;
use std::sync::Arc;

use dispatch_core::{Error, Result};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, oneshot};

/// One caller's write waiting in a [`Group`], and where its answer goes.
pub(crate) struct Queued<T, R> {
    /// Tells this write apart in the queue (queue order is ticket order).
    ticket: u64,
    /// The write.
    pub(crate) item: T,
    /// The caller's answer; closed when the caller gave up.
    pub(crate) reply: oneshot::Sender<Result<R>>,
}

/// Takes a writer's batch out of the queue, in queue order; what it leaves must stay in order.
pub(crate) type Take<T, R> = fn(&mut Vec<Queued<T, R>>) -> Vec<Queued<T, R>>;

/// Writes waiting for a writer permit, and the permits. Shared by every clone of a store.
pub(crate) struct Group<T, R> {
    queue: Mutex<Queue<T, R>>,
    permits: Arc<Semaphore>,
    take: Take<T, R>,
    /// What a write is, for messages ("a grouped enqueue").
    what: &'static str,
}

struct Queue<T, R> {
    /// The queued writes, in ticket order.
    items: Vec<Queued<T, R>>,
    next_ticket: u64,
}

/// Take everything queued.
pub(crate) fn take_all<T, R>(queue: &mut Vec<Queued<T, R>>) -> Vec<Queued<T, R>> {
    std::mem::take(queue)
}

impl<T, R> std::fmt::Debug for Group<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("what", &self.what)
            .field("queued", &self.queue.lock().items.len())
            .finish()
    }
}

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// A group with `permits` writers at once, batches taken by `take`; `what` names a write.
    pub(crate) fn new(permits: usize, take: Take<T, R>, what: &'static str) -> Self {
        Self {
            queue: Mutex::new(Queue { items: Vec::new(), next_ticket: 0 }),
            permits: Arc::new(Semaphore::new(permits)),
            take,
            what,
        }
    }

    /// Queue `item` and answer it once a batch holding it is written: while it waits, take a
    /// writer permit when one is free, and with it a batch, written by `write` (which must
    /// answer every write of the batch) in a task of its own that holds the permit.
    pub(crate) async fn join<W, F>(&self, item: T, write: W) -> Result<R>
    where
        W: Fn(Vec<Queued<T, R>>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        let ticket = {
            let mut queue = self.queue.lock();
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            queue.items.push(Queued { ticket, item, reply });
            ticket
        };
        while self.is_queued(ticket) {
            tokio::select! {
                biased;
                answered = &mut answer => return self.answer(answered),
                permit = self.permits.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| {
                        Error::internal(format!("postgres: no writer permits for {}", self.what))
                    })?;
                    let batch = (self.take)(&mut self.queue.lock().items);
                    // Empty when other writers took everything: only the answer is left.
                    if batch.is_empty() {
                        continue;
                    }
                    // Written by a task of its own: the callers of the batch are answered
                    // after the commit even if this one gives up meanwhile.
                    let written = write(batch);
                    tokio::spawn(async move {
                        written.await;
                        drop(permit);
                    });
                }
            }
        }
        self.answer(answer.await)
    }

    /// Whether write `ticket` still waits for a batch.
    fn is_queued(&self, ticket: u64) -> bool {
        self.queue.lock().items.binary_search_by_key(&ticket, |q| q.ticket).is_ok()
    }

    fn answer(
        &self,
        answered: std::result::Result<Result<R>, oneshot::error::RecvError>,
    ) -> Result<R> {
        answered.unwrap_or_else(|_| {
            Err(Error::internal(format!("postgres: {} was dropped", self.what)))
        })
    }
}

#[cfg(test)]
impl<T, R> Queued<T, R> {
    /// A queued write outside any group, for tests of a [`Take`].
    pub(crate) fn detached(ticket: u64, item: T, reply: oneshot::Sender<Result<R>>) -> Self {
        Self { ticket, item, reply }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes the first queued write only.
    fn take_one(queue: &mut Vec<Queued<u32, u32>>) -> Vec<Queued<u32, u32>> {
        if queue.is_empty() { Vec::new() } else { vec![queue.remove(0)] }
    }

    async fn answer_all(batch: Vec<Queued<u32, u32>>) {
        for queued in batch {
            let _ = queued.reply.send(Ok(queued.item * 10));
        }
    }

    #[tokio::test]
    async fn a_lone_write_goes_out_at_once() {
        let group = Group::new(2, take_all, "a test write");
        assert_eq!(group.join(4, answer_all).await.unwrap(), 40);
    }

    #[tokio::test]
    async fn every_caller_gets_its_own_answer_when_batches_hold_one() {
        let group = Arc::new(Group::new(1, take_one, "a test write"));
        let calls = (0..20).map(|i| {
            let group = group.clone();
            tokio::spawn(async move { (i, group.join(i, answer_all).await.unwrap()) })
        });
        for call in calls {
            let (i, answer) = call.await.unwrap();
            assert_eq!(answer, i * 10);
        }
        assert_eq!(group.queue.lock().items.len(), 0);
    }
}
