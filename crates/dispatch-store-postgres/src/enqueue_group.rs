//! Group commit of enqueues: concurrent enqueues share one statement and one commit.
//!
//! Otherwise every enqueue is a transaction of its own, and each commits with a NOTIFY, which
//! PostgreSQL serializes on a global lock at commit: at a thousand single enqueues a second the
//! commits queue up behind each other and the latency tail grows. Instead an enqueue queues its
//! jobs and then takes one of [`WRITERS`] writer permits; whoever holds one writes everything
//! queued in one statement, on a session that plans it once, and answers every caller after the
//! commit. A caller whose jobs another writer took only waits for its answer. At rest a lone
//! enqueue finds a free writer and goes out at once, so grouping adds no latency.
//!
//! The write runs in a task of its own: a caller that gives up (its timeout, a dropped future)
//! never abandons the jobs of the others it took along (see [`crate::group`]).
//!
//! A group is one batch to the statement: a unique key repeated across callers answers as it
//! would had the calls run one after the other. A group the statement refuses as a whole (an ID
//! reused with another payload, or given by two callers: `Conflict`) is written again one caller
//! at a time, so only the caller at fault sees the error.

use std::ops::Range;

use dispatch_core::{Enqueued, Error, ErrorKind, NewJob, Result};

use crate::enqueue::validate_batch;
use crate::group::{Group, Queued, take_all};
use crate::{PostgresStore, db_error};

/// Group writes in flight at once. Notifying commits serialize on the server anyway, so more
/// writers would only wait there; two let one group form while the other commits.
pub(crate) const WRITERS: usize = 2;

/// The enqueues waiting for a writer, and the writer permits.
pub(crate) type Enqueues = Group<Vec<NewJob>, Vec<Enqueued>>;

/// The group of one store's enqueues: [`WRITERS`] permits, each group everything queued.
pub(crate) fn enqueues() -> Enqueues {
    Group::new(WRITERS, take_all, "a grouped enqueue")
}

impl PostgresStore {
    /// Store `jobs` in the next group write. Bad input is answered at once and never joins a
    /// group.
    pub(crate) async fn enqueue_grouped(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.max_payload_bytes)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.shared
            .enqueues
            .join(jobs, |group| {
                let store = self.clone();
                async move { store.write_group(group).await }
            })
            .await
    }

    /// Write `group` in one statement and answer every caller in it.
    async fn write_group(&self, group: Vec<Queued<Vec<NewJob>, Vec<Enqueued>>>) {
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut jobs = Vec::with_capacity(group.iter().map(|q| q.item.len()).sum());
        for queued in group {
            ranges.push(jobs.len()..jobs.len() + queued.item.len());
            jobs.extend(queued.item);
            replies.push(queued.reply);
        }
        match self.write(&jobs).await {
            Ok(mut results) => {
                for (reply, range) in replies.into_iter().zip(ranges).rev() {
                    let _ = reply.send(Ok(results.split_off(range.start)));
                }
            }
            Err(error) if error.kind() == ErrorKind::Conflict && ranges.len() > 1 => {
                for (reply, range) in replies.into_iter().zip(ranges) {
                    let _ = reply.send(self.write(&jobs[range]).await);
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(Error::new(error.kind(), error.message().to_owned())));
                }
            }
        }
    }

    /// One enqueue statement (and its follow-ups) on a hot-path session, under the call timeout.
    async fn write(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        self.timed("enqueue", async {
            let mut conn = self.shared.hot.acquire().await.map_err(db_error)?;
            self.enqueue_on(&mut conn, jobs).await
        })
        .await
    }
}
