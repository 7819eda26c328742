//! Flow control's costs: `drain-limited` (the drain of `scenario.rs` on a queue whose
//! fleet-wide running limit never binds, so every claim takes the gated path: compare with
//! `drain` at the same concurrency) and `fairness` (tenant A's `--jobs` backlog, then tenant B's
//! 20 jobs on a fair queue at concurrency 16: how many of A's jobs start while B's wait, and how
//! long B's last job waits).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch::core::{JobStore, QueueConfig, Scope, WorkflowStore};
use dispatch::job::{EnqueueOptions, JobClient, JobContext, JobDefinition, Worker};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::Measurement;

/// Configure the default queue with a running limit far above any concurrency.
pub async fn limit_never_binds(store: &Arc<dyn WorkflowStore>) -> anyhow::Result<()> {
    let jobs: Arc<dyn JobStore> = store.clone();
    let flow = jobs.as_flow_store().context("the store keeps no flow control")?;
    flow.set_queue_config(&QueueConfig::new("default").max_running(1_000_000)).await?;
    Ok(())
}

/// `fairness`: `backlog` jobs of tenant A, one worker of concurrency 16 under way, then 20 jobs
/// of tenant B. `jobs_per_sec` is the rate of the whole run; `max_us` the time from B's enqueue
/// to its last job's start; `late_sends` the number of A's jobs that started in between.
pub async fn fairness(
    store: Arc<dyn WorkflowStore>,
    backlog: usize,
) -> anyhow::Result<Measurement> {
    let jobs: Arc<dyn JobStore> = store.clone();
    let flow = jobs.clone().as_flow_store().context("the store keeps no flow control")?;
    flow.set_queue_config(&QueueConfig::new("fair").fair()).await?;
    let starts: Arc<Mutex<Vec<(bool, Instant)>>> = Arc::default();
    let seen = starts.clone();
    let def = JobDefinition::new("tenant-job", move |ctx: JobContext, _: u64| {
        seen.lock().push((ctx.scope().tenant.as_deref() == Some("b"), Instant::now()));
        async { Ok(()) }
    })
    .queue("fair");
    let client = JobClient::standalone(jobs.clone());
    let tenant = |t: &str| EnqueueOptions::new().scope(Scope { app: None, tenant: Some(t.into()) });
    for chunk in (0..backlog as u64).collect::<Vec<_>>().chunks(1000) {
        client.enqueue_many_with(&def, chunk.iter().copied(), tenant("a")).await?;
    }
    let start = Instant::now();
    let handle = Worker::builder(jobs).register(def.clone()).concurrency(16).build()?.start();
    while starts.lock().len() < 200 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mark, b_sent) = (starts.lock().len(), Instant::now());
    client.enqueue_many_with(&def, 0..20, tenant("b")).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while starts.lock().iter().filter(|(b, _)| *b).count() < 20 {
        anyhow::ensure!(Instant::now() < deadline, "tenant B's jobs never all started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    handle.stop().await;
    let starts = starts.lock();
    let last_b = starts.iter().rposition(|(b, _)| *b).unwrap_or(0);
    let a_between = starts[mark..last_b].iter().filter(|(b, _)| !*b).count();
    let waited = starts[last_b].1.duration_since(b_sent);
    eprintln!("{a_between} of A's jobs started while B's 20 waited {waited:?}");
    Ok(Measurement {
        scenario: format!("fairness-{backlog}"),
        jobs_per_sec: Some(starts.len() as f64 / elapsed.as_secs_f64()),
        max_us: Some(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX)),
        late_sends: Some(a_between as u64),
        ..Default::default()
    })
}
