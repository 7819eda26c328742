//! What the cluster scenarios run in a worker process: a job that records each start, the
//! cluster settings the processes share, a leader task that writes without pause, so a
//! leader stopped by SIGSTOP resumes in the middle of its writes, and the cron scenario's
//! per-second entry.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dispatch::cluster::{ClusterConfig, LeaderTask};
use dispatch::core::{ErrorKind, Leader, MembershipStore, Result};
use dispatch::prelude::*;

/// The settings every process of a cluster scenario uses: heartbeats every 250 ms and a worker
/// timeout of 5 s (twenty missed heartbeats: a loaded machine never makes a live worker look
/// dead), leadership for 2 s. Election calls and a stepping-down leader's tasks get 30 s: a
/// leader resumed after a SIGSTOP steps down at once, and its task's next write (which the
/// scenario waits to see refused) may take longer than the default 5 s on a loaded machine.
pub fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        leader_ttl: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
        campaign_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(250),
        worker_timeout: Duration::from_secs(5),
        sweep_interval: Duration::from_millis(250),
        store_timeout: Duration::from_secs(30),
        ..ClusterConfig::default()
    }
}

/// Microseconds since the epoch, by this machine's clock (every process of a test shares it).
pub fn wall_micros() -> i64 {
    dispatch::core::Clock::now(&dispatch::core::SystemClock).as_unix_micros()
}

/// An append-only log of lines, one file per process.
#[derive(Clone)]
pub struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    /// Open (create) `path` for appending.
    pub fn open(path: &PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    /// Append one line (written through at once: the process may be killed next).
    pub fn line(&self, line: &str) {
        let mut file = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(file, "{line}");
    }
}

/// A job of 10–50 ms (by its input) that logs `start <job id> <µs>` when it starts.
pub fn logged_job(log: Log) -> JobDefinition<u64> {
    JobDefinition::new("logged", move |ctx: JobContext, n: u64| {
        let log = log.clone();
        async move {
            log.line(&format!("start {} {}", ctx.job_id(), wall_micros()));
            tokio::time::sleep(Duration::from_millis(10 + n % 41)).await;
            Ok(())
        }
    })
}

/// A leader task that writes (a sweep) 200 times per run, every `pause`, logging each attempt
/// as `write <µs it began> <µs its answer came> <term> accepted|refused|failed`. It looks at neither the leader's local
/// deadline nor a clock between writes, as leader work paused between its check and its write
/// would not: only the store's term check stands between it and a write under an old term.
pub struct WritingTask {
    store: Arc<dyn MembershipStore>,
    log: Log,
    pause: Duration,
}

impl WritingTask {
    /// Write to `store` every `pause`, logging to `log`.
    pub fn new(store: Arc<dyn MembershipStore>, log: Log, pause: Duration) -> Self {
        Self { store, log, pause }
    }
}

#[async_trait]
impl LeaderTask for WritingTask {
    fn name(&self) -> &str {
        "writing"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(1)
    }

    async fn run(&self, term: &Leader) -> Result<()> {
        for _ in 0..200 {
            // Logged with the time the attempt began and the time its answer came: a write sent
            // before a SIGSTOP whose answer arrives after the SIGCONT was attempted before the
            // pause, and may still be refused (the server ran it after the term expired).
            let began = wall_micros();
            let result = self.store.sweep_workers(term, Duration::from_secs(3600), 10).await;
            let answered = wall_micros();
            let outcome = match &result {
                Ok(_) => "accepted",
                Err(error) if error.kind() == ErrorKind::NotLeader => "refused",
                Err(_) => "failed",
            };
            self.log.line(&format!("write {began} {answered} {} {outcome}", term.term));
            // A failed write (the store unreachable, a session the server ended) was not
            // accepted either; go on until the store refuses the term.
            if let Err(error) = result
                && error.kind() == ErrorKind::NotLeader
            {
                return Err(error);
            }
            tokio::time::sleep(self.pause).await;
        }
        Ok(())
    }
}

/// The name of the cron scenario's per-second entry.
pub const EVERY_SECOND: &str = "every-second";

/// The job the cron scenario's entry enqueues: it does nothing (the store's jobs are the record).
pub fn tick_job() -> JobDefinition<()> {
    JobDefinition::new("tick", |_ctx: JobContext, (): ()| async { Ok(()) })
}

/// The cron scenario's entry: every second, each missed second fired after a downtime (up to
/// two minutes of them).
pub fn every_second(tick: &JobDefinition<()>) -> dispatch::cron::CronSpec {
    dispatch::cron::CronSpec::new(EVERY_SECOND, "* * * * * *")
        .job(tick, &())
        .catch_up(dispatch::core::CatchUp::Each { limit: 120 })
}
