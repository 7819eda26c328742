//! What a team operating Dispatch leans on: `cron-due` (`--entries` cron entries due in the
//! same second, fired by the leader's scheduler until every one has its job) and `dlq-replay`
//! (`--entries` DLQ entries replayed in bulk through the DLQ service, in its bounded batches).

use std::sync::Arc;
use std::time::Duration;

use dispatch::core::{
    CatchUp, Clock as _, CronEntry, CronJob, DEFAULT_LEADERSHIP, DlqFilter, Failure, FailureKind,
    Finish, JobStore, LeaseRef, NewJob, Outcome, Overlap, ReplayOptions, Scope, SystemClock,
    WorkerId, WorkflowStore,
};
use dispatch::cron::CronScheduler;
use dispatch::dlq::Dlq;
use tokio::time::Instant;

use crate::Measurement;

const HOUR: Duration = Duration::from_secs(3600);

/// `cron-due`: `entries` per-minute entries whose next fire is the current minute (on time:
/// their grace is two minutes), then the scheduler's ticks under one leader term until all have
/// fired. `jobs_per_sec` is entries
/// fired per second; `max_us` the time from the first tick to the last fire.
pub async fn cron_due(
    store: Arc<dyn WorkflowStore>,
    entries: usize,
) -> anyhow::Result<Measurement> {
    let jobs: Arc<dyn JobStore> = store.clone();
    let cron = jobs.clone().as_cron_store().ok_or_else(|| anyhow::anyhow!("no cron store"))?;
    let cluster = jobs.as_cluster_store().ok_or_else(|| anyhow::anyhow!("no cluster store"))?;
    let now = SystemClock.now();
    let minute = now - Duration::from_micros(now.as_unix_micros().rem_euclid(60_000_000) as u64);
    for n in 0..entries {
        cron.save_cron(entry(n), Some(minute)).await?;
    }
    let term = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await?;
    let scheduler = CronScheduler::new(cron);
    let start = Instant::now();
    let mut fired = std::collections::HashSet::new();
    while fired.len() < entries {
        let report = scheduler.tick(&term).await?;
        anyhow::ensure!(!report.fired.is_empty(), "a tick fired nothing, {} fired", fired.len());
        fired.extend(report.fired.iter().map(|f| f.0));
    }
    let elapsed = start.elapsed();
    eprintln!("{entries} entries due in one second fired in {elapsed:?}");
    Ok(Measurement {
        scenario: format!("cron-due-{entries}"),
        jobs_per_sec: Some(entries as f64 / elapsed.as_secs_f64()),
        max_us: Some(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
        ..Default::default()
    })
}

/// A per-minute entry (number `n`) of a noop job.
fn entry(n: usize) -> CronEntry {
    CronEntry {
        name: format!("bench-{n}"),
        scope: Scope::default(),
        schedule: "0 * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        job: CronJob {
            name: "noop".to_owned(),
            queue: "default".to_owned(),
            payload: b"0".to_vec(),
            priority: 0,
            max_attempts: 3,
            timeout: None,
        },
        catch_up: CatchUp::Skip,
        grace: Duration::from_secs(120),
        overlap: Overlap::Allow,
        jitter: Duration::ZERO,
        enabled: true,
    }
}

/// `dlq-replay`: `entries` jobs killed into the DLQ (enqueued, claimed and failed in batches of
/// 1,000), then every entry replayed by one bulk call of the DLQ service. `jobs_per_sec` is
/// entries replayed per second.
pub async fn dlq_replay(
    store: Arc<dyn WorkflowStore>,
    entries: usize,
) -> anyhow::Result<Measurement> {
    let jobs: Arc<dyn JobStore> = store;
    let mut killed = 0;
    while killed < entries {
        killed += kill_batch(&jobs, (entries - killed).min(1000)).await?;
    }
    let dlq = Dlq::new(jobs.clone());
    let start = Instant::now();
    let report = dlq.replay_matching(&DlqFilter::default(), &ReplayOptions::default()).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(report.touched == entries as u64, "replayed {} of {entries}", report.touched);
    eprintln!("replayed {entries} DLQ entries in {elapsed:?} ({} batches)", report.batches);
    Ok(Measurement {
        scenario: format!("dlq-replay-{entries}"),
        jobs_per_sec: Some(entries as f64 / elapsed.as_secs_f64()),
        max_us: Some(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
        ..Default::default()
    })
}

/// Enqueue `n` one-attempt jobs, claim them and fail them all; how many died.
async fn kill_batch(store: &Arc<dyn JobStore>, n: usize) -> anyhow::Result<usize> {
    let batch: Vec<NewJob> = (0..n)
        .map(|_| {
            let mut job = NewJob::new("doomed", b"0".to_vec());
            job.max_attempts = 1;
            job
        })
        .collect();
    store.enqueue(batch).await?;
    let request = dispatch::core::ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".to_owned()],
        names: vec!["doomed".to_owned()],
        limit: n,
        lease_ttl: HOUR,
        token: dispatch::core::LeaseToken::new(),
    };
    let claimed = store.claim(&request).await?;
    let failure = Failure::new(FailureKind::Error, "bench");
    let finishes: Vec<Finish> = claimed
        .iter()
        .map(|c| Finish {
            lease: LeaseRef { job_id: c.job.id, token: c.lease.token },
            outcome: Outcome::Fail { failure: failure.clone() },
        })
        .collect();
    store.finish(&finishes).await?;
    Ok(finishes.len())
}
