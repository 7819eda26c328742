//! Multi-process durability tests for Dispatch: a worker process (`durability-worker`) that the
//! tests in `tests/` start, kill with SIGKILL, and start again on the same store, on SQLite,
//! PostgreSQL and Redis.
//!
//! It holds no library code of its own beyond the job the worker runs and how a worker and a
//! test name and open one store; it is not published.

pub mod cluster;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch::core::WorkflowStore;
use dispatch::prelude::*;
use dispatch::workflow::{StepError, WorkflowContext, WorkflowDefinition};
use dispatch_store_postgres::PostgresStore;
use dispatch_store_redis::RedisStore;
use dispatch_store_sqlite::SqliteStore;

/// The job every durability scenario runs: sleeps 1–5 ms (by its input), then succeeds.
pub fn sleepy_job() -> JobDefinition<u64> {
    JobDefinition::new("sleepy", |_ctx: JobContext, n: u64| async move {
        tokio::time::sleep(Duration::from_millis(1 + n % 5)).await;
        Ok(())
    })
}

/// The PostgreSQL server the tests use: `DISPATCH_TEST_POSTGRES_URL`, else the local default.
pub fn postgres_url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The Redis server the tests use: `DISPATCH_TEST_REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("DISPATCH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One store, as a test names it to a worker process: a SQLite file path, `postgres:<schema>`
/// (a schema of the server at [`postgres_url`]) or `redis:<prefix>` (a key prefix of the
/// server at [`redis_url`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// A SQLite database file.
    Sqlite(String),
    /// A schema of the test PostgreSQL server.
    Postgres(String),
    /// A key prefix of the test Redis server.
    Redis(String),
}

impl StoreSpec {
    /// Parse the form [`Display`](std::fmt::Display) writes.
    pub fn parse(spec: &str) -> Self {
        if let Some(schema) = spec.strip_prefix("postgres:") {
            return Self::Postgres(schema.to_owned());
        }
        match spec.strip_prefix("redis:") {
            Some(prefix) => Self::Redis(prefix.to_owned()),
            None => Self::Sqlite(spec.to_owned()),
        }
    }

    /// The name the worker processes' connections carry for this store (PostgreSQL's
    /// `application_name`, Redis's client name), so a test can find (and terminate) exactly
    /// them.
    pub fn worker_application_name(&self) -> Option<String> {
        match self {
            Self::Postgres(name) | Self::Redis(name) => Some(format!("{name}_worker")),
            Self::Sqlite(_) => None,
        }
    }

    /// Open (creating and migrating when needed) the store; `role` is "worker" or "test".
    pub async fn open(&self, role: &str) -> anyhow::Result<Arc<dyn WorkflowStore>> {
        Ok(match self {
            Self::Sqlite(path) => Arc::new(SqliteStore::open(path).await.context("open SQLite")?),
            Self::Postgres(schema) => Arc::new(
                PostgresStore::builder(postgres_url())
                    .schema(schema.as_str())
                    .application_name(format!("{schema}_{role}"))
                    .call_timeout(call_timeout(role, dispatch_store_postgres::DEFAULT_CALL_TIMEOUT))
                    .max_connections(4)
                    .build()
                    .await
                    .context("connect to PostgreSQL")?,
            ),
            Self::Redis(prefix) => Arc::new(
                RedisStore::builder(redis_url())
                    .prefix(prefix.as_str())
                    .client_name(format!("{prefix}_{role}"))
                    .call_timeout(call_timeout(role, dispatch_store_redis::DEFAULT_CALL_TIMEOUT))
                    .build()
                    .await
                    .context("connect to Redis")?,
            ),
        })
    }
}

/// The call timeout of a store opened for `role`: each store's default for the worker
/// processes, whose behaviour is under test; a minute for the test's own reads (listing
/// thousands of jobs page by page), which only have to answer, even on a machine loaded by a
/// release build and a dozen worker processes.
fn call_timeout(role: &str, default: Duration) -> Duration {
    if role == "test" { Duration::from_secs(60) } else { default }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.write_str(path),
            Self::Postgres(schema) => write!(f, "postgres:{schema}"),
            Self::Redis(prefix) => write!(f, "redis:{prefix}"),
        }
    }
}

/// Where a worker of the ten-step workflow dies (aborts: no destructors, no lease release, as
/// abrupt as SIGKILL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Before step `k` runs (after step `k - 1`'s checkpoint was written); `Before(10)` is
    /// after the last checkpoint, before the run ends.
    Before(usize),
    /// After step `k`'s effect, before its checkpoint is written.
    AfterEffect(usize),
    /// In the saga, before the compensation of step `k` does anything (the later steps'
    /// compensations are done and checkpointed).
    BeforeUndo(usize),
}

impl Cut {
    /// `before:K`, `after:K`, `before-undo:K`, or `none`.
    pub fn parse(s: &str) -> anyhow::Result<Option<Self>> {
        let Some((at, k)) = s.split_once(':') else {
            anyhow::ensure!(s == "none", "a cut is before:K, after:K or none, got {s:?}");
            return Ok(None);
        };
        let k = k.parse()?;
        match at {
            "before" => Ok(Some(Self::Before(k))),
            "after" => Ok(Some(Self::AfterEffect(k))),
            "before-undo" => Ok(Some(Self::BeforeUndo(k))),
            other => anyhow::bail!("unknown cut {other:?}"),
        }
    }

    /// The form [`parse`](Self::parse) reads.
    pub fn render(cut: Option<Self>) -> String {
        match cut {
            None => "none".to_owned(),
            Some(Self::Before(k)) => format!("before:{k}"),
            Some(Self::AfterEffect(k)) => format!("after:{k}"),
            Some(Self::BeforeUndo(k)) => format!("before-undo:{k}"),
        }
    }
}

/// Die here, by SIGKILL, if `cut` says so: no destructors run, no lease is released, nothing
/// is flushed.
fn maybe_die(cut: Option<Cut>, here: Cut) {
    if cut == Some(here) {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        // The signal is on its way; never go on past the cut.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Ten steps whose output depends on every step's result; each step's effect appends its
/// number to the file `effects`, so a test counts how often each step ran across processes.
pub fn ten_steps(effects: std::path::PathBuf, cut: Option<Cut>) -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("ten-steps", move |wf: WorkflowContext, seed: u64| {
        let effects = effects.clone();
        async move {
            let mut acc = seed;
            for k in 0..10 {
                maybe_die(cut, Cut::Before(k));
                let effects = effects.clone();
                acc = wf
                    .step(&format!("step-{k}"), move || {
                        let effects = effects.clone();
                        async move {
                            append(&effects, k).map_err(|e| StepError::retry(e.to_string()))?;
                            maybe_die(cut, Cut::AfterEffect(k));
                            Ok(acc.wrapping_mul(31).wrapping_add(k as u64))
                        }
                    })
                    .await?;
            }
            maybe_die(cut, Cut::Before(10));
            Ok(acc)
        }
    })
}

/// What [`ten_steps`] returns for `seed`.
pub fn ten_steps_output(seed: u64) -> u64 {
    (0..10u64).fold(seed, |acc, k| acc.wrapping_mul(31).wrapping_add(k))
}

fn append(path: &std::path::Path, k: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{k}")
}

/// Sleeps its input in milliseconds, then returns the wake time (µs since the epoch, this
/// machine's clock) from a step.
pub fn sleeper() -> WorkflowDefinition<u64, i64> {
    WorkflowDefinition::new("sleeper", |wf: WorkflowContext, ms: u64| async move {
        wf.sleep(Duration::from_millis(ms)).await?;
        wf.step("woke", || async {
            Ok::<_, StepError>(
                dispatch::core::Clock::now(&dispatch::core::SystemClock).as_unix_micros(),
            )
        })
        .await
    })
}

/// A saga: steps 1 and 2 with compensations that append `undo-N` to the file `effects`, then a
/// step 3 that fails for good, so the compensations run (2, then 1).
pub fn saga(effects: std::path::PathBuf, cut: Option<Cut>) -> WorkflowDefinition<(), ()> {
    use dispatch::workflow::StepPolicy;
    WorkflowDefinition::new("saga", move |wf: WorkflowContext, _: ()| {
        let effects = effects.clone();
        async move {
            for n in 1..=2usize {
                let effects = effects.clone();
                wf.step_with_compensation(
                    &format!("do-{n}"),
                    move || async move { Ok::<_, StepError>(n) },
                    move |done: usize| {
                        let effects = effects.clone();
                        async move {
                            maybe_die(cut, Cut::BeforeUndo(done));
                            append_line(&effects, &format!("undo-{done}"))
                                .map_err(|e| StepError::retry(e.to_string()))
                        }
                    },
                )
                .await?;
            }
            let once = StepPolicy { attempts: 1, ..StepPolicy::default() };
            wf.step_with("do-3", &once, || async {
                Err::<(), _>(StepError::permanent("card declined"))
            })
            .await
        }
    })
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}
