//! Multi-process durability tests for Dispatch: a worker process (`durability-worker`) that the
//! tests in `tests/` start, kill with SIGKILL, and start again on the same store.
//!
//! It holds no library code of its own beyond the job the worker runs; it is not published.

use std::time::Duration;

use dispatch::prelude::*;

/// The job every durability scenario runs: sleeps 1–5 ms (by its input), then succeeds.
pub fn sleepy_job() -> JobDefinition<u64> {
    JobDefinition::new("sleepy", |_ctx: JobContext, n: u64| async move {
        tokio::time::sleep(Duration::from_millis(1 + n % 5)).await;
        Ok(())
    })
}
