//! One store's soak, in a process of its own (so its RSS is its own): the store wrapped in the
//! claim timer, a worker that is a cluster member, the leader's retention task, the producers,
//! a sample every `--sample` printed as one JSON line, and at the end a drain and the account
//! of every job and run (a `final` JSON line).
//!
//! The pieces are those `DispatcherBuilder::cluster` and `::retention` put together, joined
//! here by hand: the builder finds the registry and the pruning through
//! `JobStore::as_cluster_store` and `as_retention_store`, which an `Intercepted` store does not
//! forward, so a `Dispatcher` over the timed store would refuse the cluster. The worker claims
//! through the timed store; the registry, the election and retention use the store itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use dispatch::cluster::{Cluster, ClusterConfig, Retention};
use dispatch::core::{Intercepted, JobState, MembershipStore, RetentionPolicy, WorkflowStore};
use dispatch::job::{JobClient, Worker};
use dispatch::workflow::Workflows;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::options::Options;
use super::probe::{self, ClaimTimer};
use super::workload::{self, Tracker};

/// The PostgreSQL schema and Redis key prefix of the soak.
const NAMESPACE: &str = "dispatch_soak";
/// How long the drain after the last enqueue may take before what is left counts as lost.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// The Redis server.
const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A store opened for the soak, and where to measure it.
struct Opened {
    store: Arc<dyn WorkflowStore>,
    place: Place,
}

enum Place {
    /// The in-process store: rows only (it has no size of its own to read).
    Memory,
    Sqlite(String),
    Postgres(String),
    Redis,
}

/// Run the soak of `options.stores[0]` (the parent passes one store to each child).
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(soak(options))
}

async fn open(options: &Options) -> anyhow::Result<Opened> {
    let name = options.stores.first().context("no store")?;
    Ok(match name.as_str() {
        "memory" => Opened { store: Arc::new(dispatch::MemoryStore::new()), place: Place::Memory },
        "sqlite" => {
            let path =
                std::env::temp_dir().join(format!("dispatch-soak-{}.db", std::process::id()));
            let path = path.to_str().context("temp dir not UTF-8")?.to_owned();
            let store = dispatch::SqliteStore::open(&path).await?;
            Opened { store: Arc::new(store), place: Place::Sqlite(path) }
        }
        "postgres" => {
            let url = options.postgres_url.clone().context("--postgres-url is required")?;
            let store = dispatch::PostgresStore::builder(url.clone())
                .schema(NAMESPACE)
                .application_name("dispatch-soak")
                .build()
                .await?;
            Opened { store: Arc::new(store), place: Place::Postgres(url) }
        }
        _ => {
            delete_redis().await?;
            let store = dispatch::RedisStore::builder(REDIS_URL).prefix(NAMESPACE).build().await?;
            Opened { store: Arc::new(store), place: Place::Redis }
        }
    })
}

async fn delete_redis() -> anyhow::Result<()> {
    probe::delete_prefix(REDIS_URL, NAMESPACE).await
}

/// The cluster settings: defaults, pruning a third of the retention age apart.
fn cluster_config(options: &Options) -> ClusterConfig {
    ClusterConfig { retention_interval: options.retention_age / 3, ..ClusterConfig::default() }
}

/// Every kind of finished record kept for the retention age.
fn policy(options: &Options) -> RetentionPolicy {
    let age = Some(options.retention_age);
    RetentionPolicy { completed: age, cancelled: age, dead: age, runs: age, gone_workers: age }
}

async fn soak(options: Options) -> anyhow::Result<()> {
    let Opened { store, place } = open(&options).await?;
    let timed = Arc::new(Intercepted::new(store.clone(), ClaimTimer::default()));
    let tracker = Arc::new(Tracker::default());
    let engine = Workflows::with_hooks(timed.clone(), vec![tracker.clone()]);
    let drive = engine.register(&workload::workflow());
    let config = cluster_config(&options);
    let members = store.clone().as_cluster_store().context("the store keeps no registry")?;
    // A store that does not prune yet still soaks: its verdict then shows what grows.
    let pruner = store.clone().as_retention_store();
    if pruner.is_none() {
        eprintln!("soak: this store does not prune (no RetentionStore): retention is off");
    }
    let (beat, lease) = (config.heartbeat_interval, config.lease_ttl);
    let [ok, flaky, sleepy] = workload::jobs(&tracker);
    let worker = Worker::builder(timed.clone())
        .register(ok)
        .register(flaky)
        .register(sleepy)
        .register(drive)
        .concurrency(32)
        .shared_hook(tracker.clone())
        .membership(members.clone() as Arc<dyn MembershipStore>, dispatch::VERSION)
        .configure(move |c| {
            c.heartbeat_interval = beat;
            c.lease_ttl = lease;
        })
        .build()?;
    let (interval, batch) = (config.retention_interval, config.retention_batch);
    let mut cluster = Cluster::builder(members).config(config).holder(worker.id());
    if let Some(pruner) = pruner.clone() {
        cluster = cluster.task(Arc::new(Retention::new(pruner, policy(&options), interval, batch)));
    }
    let cluster = cluster.build()?;
    let client = worker.client();
    let handle = worker.start();
    let leader = cluster.start();
    handle.ready().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let jobs = tokio::spawn(workload::produce_jobs(
        client.clone(),
        tracker.clone(),
        options.rate,
        stop.clone(),
    ));
    let runs =
        tokio::spawn(workload::produce_runs(engine, tracker.clone(), options.rate, stop.clone()));
    let sampler = Sampler {
        client: &client,
        timer: timed.interceptor(),
        tracker: &tracker,
        place: &place,
        start: Instant::now(),
    };
    let mut tick = tokio::time::interval(options.sample);
    tick.tick().await;
    while sampler.start.elapsed() < options.duration {
        tick.tick().await;
        sampler.emit("sample").await;
    }
    stop.store(true, Ordering::Relaxed);
    jobs.await?;
    runs.await?;
    let drained = Instant::now();
    while !all_done(&tracker) && drained.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_secs = drained.elapsed().as_secs_f64();
    sampler.emit("drained").await;
    leader.stop().await;
    let report = handle.stop().await;
    let mut account = account(&tracker, &client).await;
    account.insert("drain_secs".into(), json!(drain_secs));
    account.insert("retention".into(), json!(pruner.is_some()));
    account.insert("hook_events_dropped".into(), json!(report.hook_events_dropped));
    println!("{}", json!({ "final": account }));
    if let Place::Sqlite(path) = &place {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    if let Place::Redis = place {
        delete_redis().await?;
    }
    Ok(())
}

fn all_done(tracker: &Tracker) -> bool {
    let (jobs, runs) = tracker.outstanding();
    jobs.is_empty() && runs == 0
}

/// The end's account: what was enqueued and started, what completed, and what is left (each
/// job left looked up in the store, by state).
async fn account(tracker: &Tracker, client: &JobClient) -> Map<String, Value> {
    let (left, runs_left) = tracker.outstanding();
    let mut states: Map<String, Value> = Map::new();
    for id in &left {
        let state = match client.get(*id).await {
            Ok(Some(job)) => format!("{:?}", job.state),
            Ok(None) => "missing".to_owned(),
            Err(error) => format!("unreadable ({})", error.kind()),
        };
        let count = states.get(&state).and_then(Value::as_u64).unwrap_or(0);
        states.insert(state, json!(count + 1));
    }
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let mut account = Map::new();
    account.insert("enqueued".into(), json!(load(&tracker.enqueued)));
    account.insert("completed".into(), json!(load(&tracker.completed)));
    account.insert("lost".into(), json!(left.len()));
    account.insert("lost_states".into(), Value::Object(states));
    account.insert("unexpected_completions".into(), json!(load(&tracker.unexpected)));
    account.insert("wrong_attempt".into(), json!(load(&tracker.wrong_attempt)));
    account.insert("reruns".into(), json!(load(&tracker.reruns)));
    account.insert("retries".into(), json!(load(&tracker.retries)));
    account.insert("planned_retries".into(), json!(load(&tracker.planned_retries)));
    account.insert("snoozes".into(), json!(load(&tracker.snoozes)));
    account.insert("planned_snoozes".into(), json!(load(&tracker.planned_snoozes)));
    account.insert("runs_started".into(), json!(load(&tracker.runs_started)));
    account.insert("runs_completed".into(), json!(load(&tracker.runs_completed)));
    account.insert("runs_lost".into(), json!(runs_left));
    account.insert("runs_failed".into(), json!(load(&tracker.runs_failed)));
    account.insert("producer_retries".into(), json!(load(&tracker.producer_retries)));
    account.insert("completed_in_store".into(), json!(completed_rows(client).await));
    account
}

async fn completed_rows(client: &JobClient) -> Option<u64> {
    client.counts().await.ok().map(|c| c.in_state(JobState::Completed))
}

/// Takes one sample.
struct Sampler<'a> {
    client: &'a JobClient,
    timer: &'a ClaimTimer,
    tracker: &'a Tracker,
    place: &'a Place,
    start: Instant,
}

impl Sampler<'_> {
    /// Print one sample line: a measure that fails (the server restarting) is left out.
    async fn emit(&self, kind: &str) {
        let mut s = Map::new();
        s.insert("t".into(), json!(self.start.elapsed().as_secs()));
        match self.client.counts().await {
            Ok(counts) => {
                s.insert("rows".into(), json!(counts.total()));
                s.insert("available".into(), json!(counts.in_state(JobState::Available)));
                s.insert("running".into(), json!(counts.in_state(JobState::Running)));
            }
            Err(error) => eprintln!("soak: counts failed: {error}"),
        }
        let measured = match self.place {
            Place::Postgres(url) => probe::postgres(url, NAMESPACE, &mut s).await,
            Place::Sqlite(path) => probe::sqlite(path, &mut s).await,
            Place::Redis => probe::redis(REDIS_URL, NAMESPACE, &mut s).await,
            Place::Memory => Ok(()),
        };
        if let Err(error) = measured {
            eprintln!("soak: measuring the store failed: {error:#}");
        }
        self.timer.take(&mut s);
        s.insert("rss_kib".into(), json!(probe::rss_kib().ok()));
        s.insert("enqueued".into(), json!(self.tracker.enqueued.load(Ordering::Relaxed)));
        s.insert("completed".into(), json!(self.tracker.completed.load(Ordering::Relaxed)));
        s.insert("runs".into(), json!(self.tracker.runs_completed.load(Ordering::Relaxed)));
        println!("{}", json!({ kind: s }));
    }
}
