//! WAL checkpoints off the writer.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! committing connection: with one writer, every call queued behind that commit waits while a
//! thousand pages are copied into the database file and both files are synced. Instead a task of
//! the store checkpoints on a connection of its own (`PRAGMA wal_checkpoint(PASSIVE)`, which
//! never blocks a writer or a reader) shortly after commits, on the other core.
//!
//! The log is written from its start again only when a write begins after a checkpoint that
//! copied every frame; under continuous writes the task never quite catches up, so that reset is
//! left to the writer's own automatic checkpoint, raised to [`WRITER_AUTOCHECKPOINT_PAGES`]. By
//! then the task has copied all but the last few milliseconds of frames, so the writer's
//! checkpoint costs it little; the WAL file grows to about that many pages (32 MiB at 4 KiB
//! pages) under sustained writes, and the writer checkpoints fully by itself should the task
//! fall behind or fail to connect.
//!
//! Durability is unchanged: a commit is durable once its frames are in the WAL, as before; a
//! checkpoint only copies committed frames into the database file, wherever it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use tokio::sync::Notify;

/// The writer's own automatic checkpoint threshold, in pages: it resets the log under continuous
/// writes, and bounds it whatever happens to the task.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 8_000;

/// The shortest pause between two background checkpoints: under load commits come every few
/// hundred microseconds, and one checkpoint per pause copies all of them at once.
const PAUSE: Duration = Duration::from_millis(20);

/// What the store and its checkpoint task share.
#[derive(Debug, Default)]
struct Signal {
    /// Commits happened since the last checkpoint.
    wrote: Notify,
    /// Every clone of the store is gone: the task ends.
    closed: AtomicBool,
}

/// The store's handle on its checkpoint task; dropping it (with the last clone of the store)
/// ends the task.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
}

impl Checkpointer {
    /// Start the task, which connects with `options` at its first checkpoint.
    pub(crate) fn start(options: SqliteConnectOptions) -> Self {
        let signal = Arc::new(Signal::default());
        tokio::spawn(run(options, signal.clone()));
        Self { signal }
    }

    /// Tell the task that a transaction committed.
    pub(crate) fn wrote(&self) {
        self.signal.wrote.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.closed.store(true, Ordering::Release);
        self.signal.wrote.notify_one();
    }
}

/// Checkpoint after commits, at most once a [`PAUSE`], until the store is dropped. A failed
/// connect or checkpoint is left to the next round (and to the writer's safety net): nothing
/// waits on this task.
async fn run(options: SqliteConnectOptions, signal: Arc<Signal>) {
    let mut conn: Option<SqliteConnection> = None;
    loop {
        signal.wrote.notified().await;
        if signal.closed.load(Ordering::Acquire) {
            return;
        }
        if conn.is_none() {
            conn = options.connect().await.ok();
        }
        if let Some(c) = conn.as_mut()
            && sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *c).await.is_err()
        {
            // A broken connection is opened again at the next round.
            conn = None;
        }
        tokio::time::sleep(PAUSE).await;
    }
}
