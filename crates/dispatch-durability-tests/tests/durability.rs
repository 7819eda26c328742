//! Durability with real processes on one SQLite file: kill -9 mid-run, two workers at once,
//! two migrations at once. Waits poll the store against a deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dispatch::core::{JobFilter, JobState, JobStore, PageRequest};
use dispatch::job::{EnqueueOptions, JobClient};
use dispatch_durability_tests::sleepy_job;
use dispatch_store_sqlite::SqliteStore;
use sqlx::Connection;

/// A worker process, killed when dropped so a failing test leaves nothing running.
struct Worker(Child);

impl Worker {
    fn start(database: &str, concurrency: u32, lease_ms: u64) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_durability-worker"))
            .args(["work", database, &concurrency.to_string(), &lease_ms.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the worker process");
        Self(child)
    }

    /// SIGKILL, and reap.
    fn kill(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn database(test: &str) -> String {
    let dir = std::env::temp_dir().join("dispatch-durability");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join(format!("{test}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path.display().to_string()
}

async fn count(store: &SqliteStore, state: JobState) -> u64 {
    let counts = store.count_jobs().await.expect("count_jobs");
    counts.iter().filter(|c| c.state == state).map(|c| c.count).sum()
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn enqueue(store: &SqliteStore, jobs: u64) {
    let client = JobClient::new(std::sync::Arc::new(store.clone()));
    let def = sleepy_job();
    for start in (0..jobs).step_by(1000) {
        let end = (start + 1000).min(jobs);
        client.enqueue_many(&def, start..end, EnqueueOptions::new()).await.expect("enqueue");
    }
}

/// Every completed job's attempts and error count, read page by page.
async fn completed_attempts(store: &SqliteStore) -> Vec<(u32, usize)> {
    let filter = JobFilter { state: Some(JobState::Completed), ..JobFilter::default() };
    let mut page = PageRequest::first(1000);
    let mut attempts = Vec::new();
    loop {
        let found = store.list_jobs(&filter, &page).await.expect("list_jobs");
        attempts.extend(found.items.iter().map(|job| (job.attempt, job.errors.len())));
        match PageRequest::next_of(&found, 1000) {
            Some(next) => page = next,
            None => return attempts,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_run_loses_nothing() {
    const JOBS: u64 = 5000;
    let path = database("kill-nine");
    let store = SqliteStore::open(&path).await.expect("open");
    enqueue(&store, JOBS).await;

    let first = Worker::start(&path, 8, 1000);
    wait_until("a tenth of the jobs", Duration::from_secs(120), async || {
        count(&store, JobState::Completed).await >= JOBS / 10
    })
    .await;
    first.kill();
    let running_at_kill = count(&store, JobState::Running).await;
    assert!(count(&store, JobState::Completed).await < JOBS, "killed mid-run, not after");

    let _second = Worker::start(&path, 8, 1000);
    wait_until("every job", Duration::from_secs(300), async || {
        count(&store, JobState::Completed).await == JOBS
    })
    .await;
    let attempts = completed_attempts(&store).await;
    assert_eq!(attempts.len() as u64, JOBS, "none lost");
    let ran_twice = attempts.iter().filter(|&&(a, _)| a > 1).count() as u64;
    assert!(ran_twice <= running_at_kill, "{ran_twice} ran twice, {running_at_kill} were running");
    assert_eq!(count(&store, JobState::Running).await, 0);

    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await.expect("connect");
    let check: String =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.expect("check");
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_claim_a_job_twice() {
    const JOBS: u64 = 10_000;
    let path = database("two-workers");
    let store = SqliteStore::open(&path).await.expect("open");
    enqueue(&store, JOBS).await;
    // Leases far longer than the run: no rescue can happen, so a second claim of a job could only
    // come from a broken claim.
    let _a = Worker::start(&path, 32, 600_000);
    let _b = Worker::start(&path, 32, 600_000);
    wait_until("every job", Duration::from_secs(300), async || {
        count(&store, JobState::Completed).await == JOBS
    })
    .await;
    let attempts = completed_attempts(&store).await;
    assert_eq!(attempts.len() as u64, JOBS);
    assert!(attempts.iter().all(|&(_, errors)| errors == 0), "a lease expired: a rescue happened");
    assert!(attempts.iter().all(|&(a, _)| a == 1), "a job was claimed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_migrating_at_once_make_one_schema() {
    let path = database("migrate-race");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_durability-worker"))
            .args(["migrate", &path])
            .spawn()
            .expect("spawn")
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().expect("wait").success(), "first migrate failed");
    assert!(b.wait().expect("wait").success(), "second migrate failed");
    let store = SqliteStore::open(&path).await.expect("open after both");
    enqueue(&store, 10).await;
    assert_eq!(count(&store, JobState::Available).await, 10, "one working schema");
}
