//! The scenarios: enqueue (single, batch), drain (alone, and beside a crowded queue), workflow,
//! open-loop latency, and the cost of one worker heartbeat that renews many leases.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dispatch::core::WorkflowStore;
use dispatch::job::{EnqueueOptions, JobClient, JobContext, JobDefinition, Worker};
use parking_lot::Mutex;
use sqlx::Connection;
use tokio::time::Instant;

use crate::counting::FinishCounter;
use crate::{Measurement, Options};

pub(crate) fn option<T: std::str::FromStr>(
    options: &Options,
    key: &str,
    default: T,
) -> anyhow::Result<T> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| anyhow::anyhow!("--{key}: can not parse {v:?}")),
    }
}

/// The PostgreSQL server: `DISPATCH_TEST_POSTGRES_URL`, else the local default.
pub(crate) fn postgres_url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The Redis server: `DISPATCH_TEST_REDIS_URL`, else the local default.
fn redis_url() -> String {
    std::env::var("DISPATCH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A store opened for one run, and the PostgreSQL schema or Redis prefix it lives in (dropped
/// after the run).
struct Opened {
    store: Arc<dyn WorkflowStore>,
    schema: Option<String>,
    redis_prefix: Option<String>,
}

/// A fresh store with its default durability settings: SQLite, a new file in the temp dir;
/// PostgreSQL, a new schema on [`postgres_url`], `synchronous_commit` as the server has it (on
/// by default).
async fn open_store(name: &str) -> anyhow::Result<Opened> {
    let fresh = dispatch::core::JobId::new().uuid().simple().to_string();
    let store: Arc<dyn WorkflowStore> = match name {
        "memory" => Arc::new(dispatch::MemoryStore::new()),
        "sqlite" => {
            let dir = std::env::temp_dir().join("dispatch-bench");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{fresh}.db"));
            Arc::new(dispatch::SqliteStore::open(&path.display().to_string()).await?)
        }
        "postgres" => {
            let schema = format!("dispatch_bench_{}", &fresh[fresh.len() - 12..]);
            let store = dispatch::PostgresStore::builder(postgres_url())
                .schema(schema.clone())
                .application_name("dispatch-bench")
                .build()
                .await?;
            return Ok(Opened { store: Arc::new(store), schema: Some(schema), redis_prefix: None });
        }
        "redis" => {
            let prefix = format!("dispatch_bench_{}", &fresh[fresh.len() - 12..]);
            let store =
                dispatch::RedisStore::builder(redis_url()).prefix(prefix.clone()).build().await?;
            return Ok(Opened { store: Arc::new(store), schema: None, redis_prefix: Some(prefix) });
        }
        other => bail!("unknown store {other:?} (known: memory, sqlite, postgres, redis)"),
    };
    Ok(Opened { store, schema: None, redis_prefix: None })
}

/// The dead tuples left in a PostgreSQL schema's jobs table (what vacuum has to clean), read
/// once backends have flushed their statistics.
async fn dead_tuples(schema: &str) -> anyhow::Result<Option<i64>> {
    // Backends flush table statistics about once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = sqlx::PgConnection::connect(&postgres_url()).await?;
    let dead = sqlx::query_scalar(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'",
    )
    .bind(schema)
    .fetch_optional(&mut conn)
    .await?;
    Ok(dead)
}

/// Drop a run's PostgreSQL schema.
pub(crate) async fn drop_schema(schema: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&postgres_url()).await?;
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    Ok(())
}

fn noop() -> JobDefinition<u64> {
    JobDefinition::new("noop", |_ctx: JobContext, _: u64| async { Ok(()) })
}

/// Run `scenario`.
pub async fn run(scenario: &str, options: &Options) -> anyhow::Result<Measurement> {
    let store_name: String = option(options, "store", "memory".to_owned())?;
    let Opened { store, schema, redis_prefix } = open_store(&store_name).await?;
    let redis_before = match &redis_prefix {
        Some(_) => Some(redis_used_memory().await?),
        None => None,
    };
    let mut m = match scenario {
        "enqueue-single" => enqueue_single(store, option(options, "jobs", 20_000)?).await?,
        "enqueue-batch" => {
            enqueue_batch(store, option(options, "jobs", 200_000)?, option(options, "batch", 1000)?)
                .await?
        }
        "drain" => {
            drain(store, option(options, "jobs", 100_000)?, option(options, "concurrency", 256)?)
                .await?
        }
        "drain-limited" => {
            crate::flow::limit_never_binds(&store).await?;
            let mut m = drain(
                store,
                option(options, "jobs", 100_000)?,
                option(options, "concurrency", 256)?,
            )
            .await?;
            m.scenario = m.scenario.replacen("drain", "drain-limited", 1);
            m
        }
        "fairness" => crate::flow::fairness(store, option(options, "jobs", 20_000)?).await?,
        "drain-crowded" => {
            let crowd = option(options, "crowd", 100_000)?;
            crowd_queue(&store, crowd).await?;
            let mut m = drain(
                store,
                option(options, "jobs", 100_000)?,
                option(options, "concurrency", 256)?,
            )
            .await?;
            m.scenario =
                format!("{}-crowd{crowd}", m.scenario.replacen("drain", "drain-crowded", 1));
            m
        }
        "workflow" => {
            workflow(store, option(options, "runs", 1000)?, option(options, "steps", 10)?).await?
        }
        "latency" => {
            let rate: u64 = option(options, "rate", 2000)?;
            let seconds: u64 = option(options, "seconds", 5)?;
            latency(store, rate, seconds, option(options, "concurrency", 256)?).await?
        }
        "heartbeat" => {
            heartbeat(store, option(options, "leases", 1000)?, option(options, "calls", 200)?)
                .await?
        }
        "cron-due" => crate::operate::cron_due(store, option(options, "entries", 10_000)?).await?,
        "dlq-replay" => {
            crate::operate::dlq_replay(store, option(options, "entries", 100_000)?).await?
        }
        other => bail!("unknown scenario {other:?}"),
    };
    m.store = store_name;
    if let Some(schema) = schema {
        if scenario.starts_with("drain") {
            m.dead_tuples = dead_tuples(&schema).await?;
        }
        drop_schema(&schema).await?;
    }
    if let (Some(prefix), Some(before)) = (redis_prefix, redis_before) {
        if scenario.starts_with("drain") {
            let jobs: f64 = option(options, "jobs", 100_000.0)?;
            let grown = redis_used_memory().await?.saturating_sub(before);
            m.redis_bytes_per_job = Some(grown as f64 / jobs);
        }
        delete_prefix(&prefix).await?;
    }
    Ok(m)
}

/// The Redis server's `used_memory`, in bytes.
async fn redis_used_memory() -> anyhow::Result<u64> {
    let client = dispatch::redis::redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String =
        dispatch::redis::redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// Delete every key of a run's Redis prefix.
async fn delete_prefix(prefix: &str) -> anyhow::Result<()> {
    let client = dispatch::redis::redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    // KEYS walks the whole key space: fine for a bench server, not for production.
    let keys: Vec<String> = dispatch::redis::redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut conn)
        .await?;
    for chunk in keys.chunks(1000) {
        let _: i64 =
            dispatch::redis::redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await?;
    }
    Ok(())
}

fn rate(jobs: usize, elapsed: Duration) -> Option<f64> {
    Some(jobs as f64 / elapsed.as_secs_f64())
}

async fn enqueue_single(store: Arc<dyn WorkflowStore>, jobs: usize) -> anyhow::Result<Measurement> {
    let client = JobClient::standalone(store);
    let def = noop();
    let start = Instant::now();
    for n in 0..jobs {
        client.enqueue(&def, n as u64).await?;
    }
    let jobs_per_sec = rate(jobs, start.elapsed());
    Ok(Measurement { scenario: "enqueue-single".into(), jobs_per_sec, ..Default::default() })
}

async fn enqueue_batch(
    store: Arc<dyn WorkflowStore>,
    jobs: usize,
    batch: usize,
) -> anyhow::Result<Measurement> {
    let client = JobClient::standalone(store);
    let def = noop();
    let start = Instant::now();
    let mut next = 0u64;
    while (next as usize) < jobs {
        let end = (next + batch as u64).min(jobs as u64);
        client.enqueue_many(&def, next..end).await?;
        next = end;
    }
    let jobs_per_sec = rate(jobs, start.elapsed());
    let scenario = format!("enqueue-batch-{batch}");
    Ok(Measurement { scenario, jobs_per_sec, ..Default::default() })
}

async fn drain(
    store: Arc<dyn WorkflowStore>,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let def = noop();
    let client = JobClient::standalone(store.clone());
    for chunk in (0..jobs as u64).collect::<Vec<_>>().chunks(1000) {
        client.enqueue_many(&def, chunk.iter().copied()).await?;
    }
    let counter = FinishCounter::wrap(store, jobs);
    let worker = Worker::builder(counter.clone()).register(def).concurrency(concurrency).build()?;
    let start = Instant::now();
    let handle = worker.start();
    tokio::time::timeout(Duration::from_secs(600), counter.interceptor().wait())
        .await
        .context("drain stalled")?;
    let jobs_per_sec = rate(jobs, start.elapsed());
    handle.stop().await;
    eprintln!(
        "claims: {} calls for {} jobs; finishes: {} calls",
        counter.interceptor().claims.load(std::sync::atomic::Ordering::Relaxed),
        counter.interceptor().claimed.load(std::sync::atomic::Ordering::Relaxed),
        counter.interceptor().finish_calls.load(std::sync::atomic::Ordering::Relaxed),
    );
    let scenario = format!("drain-c{concurrency}");
    Ok(Measurement { scenario, jobs_per_sec, ..Default::default() })
}

/// Crowd the drained queue ("default") before a drain: `crowd` jobs of the drained name
/// scheduled a day ahead (as suspended workflow drive jobs and snoozed jobs wait), and `crowd` due
/// jobs of a name no worker runs. Neither may slow the drain: a claim must cost O(batch),
/// whatever else its queue holds.
async fn crowd_queue(store: &Arc<dyn WorkflowStore>, crowd: usize) -> anyhow::Result<()> {
    let client = JobClient::standalone(store.clone());
    let future = EnqueueOptions::new().delay(Duration::from_secs(86_400));
    let unhandled = JobDefinition::new("unhandled", |_ctx: JobContext, _: u64| async { Ok(()) });
    for chunk in (0..crowd as u64).collect::<Vec<_>>().chunks(1000) {
        client.enqueue_many_with(&noop(), chunk.iter().copied(), future.clone()).await?;
        client.enqueue_many(&unhandled, chunk.iter().copied()).await?;
    }
    Ok(())
}

/// Open-loop latency: `per_sec` enqueues a second for `seconds`, each issued at its scheduled
/// time in a task of its own (a slow enqueue never delays the next one, and its own wait is
/// counted), measured from the scheduled send to the handler's first line. A send whose task
/// started more than 5 ms after its scheduled time is counted late: the producer, not the
/// store, fell behind, a figure to read the others by.
async fn latency(
    store: Arc<dyn WorkflowStore>,
    per_sec: u64,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let total = (per_sec * seconds) as usize;
    let base = Instant::now();
    let samples: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let log = samples.clone();
    let def = JobDefinition::new("timed", move |_ctx: JobContext, scheduled_us: u64| {
        let now_us = base.elapsed().as_micros() as u64;
        log.lock().push(now_us.saturating_sub(scheduled_us));
        async { Ok(()) }
    });
    let counter = FinishCounter::wrap(store.clone(), total);
    let worker =
        Worker::builder(counter.clone()).register(def.clone()).concurrency(concurrency).build()?;
    // A client of its own, as another process would have: the worker learns of each job through
    // the store's push wake-ups (PostgreSQL: LISTEN/NOTIFY), not a local shortcut.
    let client = JobClient::standalone(store);
    let handle = worker.start();
    let interval = Duration::from_secs_f64(1.0 / per_sec as f64);
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let runtime = tokio::runtime::Handle::current();
    let late_sends = late.clone();
    // The schedule is kept by a thread of its own sleeping on the OS clock (a grain of tens of
    // microseconds): tokio's timer wheel would wake every send up to a millisecond late, and
    // that rounding (half a millisecond on average) would be counted in every sample.
    let producer = std::thread::spawn(move || {
        let start = Instant::now().into_std();
        (0..total)
            .map(|n| {
                let scheduled = start + interval * n as u32;
                if let Some(wait) = scheduled.checked_duration_since(Instant::now().into_std()) {
                    std::thread::sleep(wait);
                }
                let scheduled = Instant::from_std(scheduled);
                let scheduled_us = scheduled.duration_since(base).as_micros() as u64;
                let (client, def, late) = (client.clone(), def.clone(), late_sends.clone());
                runtime.spawn(async move {
                    if scheduled.elapsed() > Duration::from_millis(5) {
                        late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    client.enqueue(&def, scheduled_us).await
                })
            })
            .collect::<Vec<_>>()
    });
    let sends = tokio::task::spawn_blocking(move || producer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the latency producer panicked"))?;
    for sent in sends {
        sent.await??;
    }
    tokio::time::timeout(Duration::from_secs(60), counter.interceptor().wait())
        .await
        .context("latency run stalled")?;
    handle.stop().await;
    let mut samples = samples.lock().clone();
    samples.sort_unstable();
    let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q) as usize).copied();
    Ok(Measurement {
        max_us: samples.last().copied(),
        late_sends: Some(late.load(std::sync::atomic::Ordering::Relaxed)),
        scenario: format!("latency-{per_sec}/s"),
        p50_us: at(0.50),
        p99_us: at(0.99),
        ..Default::default()
    })
}

/// `runs` workflow runs of `steps` no-op steps each, started before the worker, driven to the
/// end at concurrency 256: checkpointed steps per second.
async fn workflow(
    store: Arc<dyn WorkflowStore>,
    runs: usize,
    steps: usize,
) -> anyhow::Result<Measurement> {
    use dispatch::workflow::{
        StartOptions, StepError, WorkflowContext, WorkflowDefinition, Workflows,
    };
    let def = WorkflowDefinition::new("steps", move |wf: WorkflowContext, n: u64| async move {
        let mut acc = n;
        for _ in 0..steps {
            acc = wf.step("noop", || async move { Ok::<_, StepError>(acc + 1) }).await?;
        }
        Ok(acc)
    });
    let counter = FinishCounter::wrap(store.clone(), runs);
    let workflows = Workflows::new(counter.clone());
    let drive = workflows.register(&def);
    for n in 0..runs as u64 {
        workflows.start(&def, &n, StartOptions::default()).await?;
    }
    let worker = Worker::builder(counter.clone()).register(drive).concurrency(256).build()?;
    let start = Instant::now();
    let handle = worker.start();
    tokio::time::timeout(Duration::from_secs(600), counter.interceptor().wait())
        .await
        .context("workflow runs stalled")?;
    let elapsed = start.elapsed();
    handle.stop().await;
    let scenario = format!("workflow-{runs}x{steps}");
    Ok(Measurement { scenario, jobs_per_sec: rate(runs * steps, elapsed), ..Default::default() })
}

/// The lease TTL of the heartbeat scenario's claims and renewals: long enough that no lease
/// lapses during the run, whatever the store's speed.
const HEARTBEAT_LEASE_TTL: Duration = Duration::from_secs(300);

/// One worker holding `leases` jobs, heartbeating: register a worker, enqueue `leases` jobs,
/// claim them all under the worker's ID, then time `calls` consecutive
/// [`MembershipStore::heartbeat_worker`](dispatch::core::MembershipStore::heartbeat_worker)
/// calls, each renewing the worker and every lease in one store call. Each answer must say the
/// worker is active and renew all `leases` (none lost), or the scenario fails. Reports the time
/// per call (p50, p99, max, in microseconds) and calls per second (in `jobs_per_sec`).
async fn heartbeat(
    store: Arc<dyn WorkflowStore>,
    leases: usize,
    calls: usize,
) -> anyhow::Result<Measurement> {
    use dispatch::core::job::DEFAULT_QUEUE;
    use dispatch::core::{
        ClaimRequest, LeaseRef, LeaseToken, WorkerId, WorkerRegistration, WorkerState,
    };
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let cluster =
        store.clone().as_cluster_store().context("this store keeps no worker registry")?;
    let worker = WorkerId::new();
    let registration = WorkerRegistration {
        id: worker,
        host: "dispatch-bench".to_owned(),
        pid: std::process::id(),
        queues: vec![DEFAULT_QUEUE.to_owned()],
        concurrency: u32::try_from(leases)?,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    cluster.register_worker(&registration).await?;
    let def = noop();
    let client = JobClient::standalone(store);
    for chunk in (0..leases as u64).collect::<Vec<_>>().chunks(1000) {
        client.enqueue_many(&def, chunk.iter().copied()).await?;
    }
    // A store may answer a claim with fewer jobs than asked: claim until all are held.
    let mut held: Vec<LeaseRef> = Vec::with_capacity(leases);
    while held.len() < leases {
        let request = ClaimRequest {
            worker,
            queues: vec![DEFAULT_QUEUE.to_owned()],
            names: vec![def.name().to_owned()],
            limit: leases - held.len(),
            lease_ttl: HEARTBEAT_LEASE_TTL,
            token: LeaseToken::new(),
        };
        let claimed = cluster.claim(&request).await?;
        if claimed.is_empty() {
            bail!("claimed {} of {leases} jobs, then the claim came back empty", held.len());
        }
        held.extend(claimed.iter().map(|c| LeaseRef { job_id: c.job.id, token: c.lease.token }));
    }
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for call in 0..calls {
        let sent = Instant::now();
        let beat = cluster.heartbeat_worker(worker, &held, HEARTBEAT_LEASE_TTL).await?;
        samples.push(sent.elapsed().as_micros() as u64);
        let report = &beat.leases;
        if beat.state != WorkerState::Active
            || report.renewed.len() != leases
            || !report.lost.is_empty()
        {
            bail!(
                "heartbeat call {call}: worker {:?}, {} of {leases} leases renewed, {} lost",
                beat.state,
                report.renewed.len(),
                report.lost.len()
            );
        }
    }
    let elapsed = start.elapsed();
    samples.sort_unstable();
    let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q) as usize).copied();
    Ok(Measurement {
        scenario: format!("heartbeat-{leases}"),
        jobs_per_sec: rate(calls, elapsed),
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: samples.last().copied(),
        ..Default::default()
    })
}
