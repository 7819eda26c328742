//! Durability with real processes, on SQLite, PostgreSQL and Redis: kill -9 mid-run, two
//! workers at once, two migrations at once, a workflow killed at every step boundary, durable
//! sleeps across a restart of every worker, and (PostgreSQL, Redis) every connection of the
//! worker terminated mid-run. Waits poll the store against a deadline.
//!
//! A libtest-mimic harness: PostgreSQL and Redis trials are reported ignored when their server
//! does not answer, and fail instead under `CI=true`.

use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dispatch::core::{JobFilter, JobState, PageRequest, WorkflowStore};
use dispatch::job::JobClient;
use dispatch::workflow::{RunWaitError, StartOptions, Workflows};
use dispatch_durability_tests::{
    Cut, StoreSpec, postgres_url, redis_url, saga, sleeper, sleepy_job, ten_steps, ten_steps_output,
};
use libtest_mimic::{Arguments, Failed, Trial};

#[path = "durability/cluster.rs"]
mod cluster;
#[path = "durability/cron.rs"]
mod cron;
use sqlx::Connection;

/// A worker process, killed when dropped so a failing test leaves nothing running.
struct Worker(Child);

impl Worker {
    fn start(store: &StoreSpec, concurrency: u32, lease_ms: u64) -> Self {
        Self::start_polling(store, concurrency, lease_ms, 50)
    }

    fn start_polling(store: &StoreSpec, concurrency: u32, lease_ms: u64, poll_ms: u64) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_durability-worker"))
            .args(["work", &store.to_string(), &concurrency.to_string()])
            .args([lease_ms.to_string(), poll_ms.to_string()])
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

/// A fresh store for `test`: a new SQLite file, or a new PostgreSQL schema.
fn fresh(kind: Kind, test: &str) -> StoreSpec {
    match kind {
        Kind::Sqlite => {
            let dir = std::env::temp_dir().join("dispatch-durability");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{test}-{}.db", std::process::id()));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            StoreSpec::Sqlite(path.display().to_string())
        }
        Kind::Postgres => {
            let id = dispatch::core::JobId::new().uuid().simple().to_string();
            StoreSpec::Postgres(format!("dispatch_dur_{}", &id[id.len() - 12..]))
        }
        Kind::Redis => {
            let id = dispatch::core::JobId::new().uuid().simple().to_string();
            StoreSpec::Redis(format!("dispatch_dur_{}", &id[id.len() - 12..]))
        }
    }
}

async fn count(store: &Arc<dyn WorkflowStore>, state: JobState) -> u64 {
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

async fn enqueue(store: &Arc<dyn WorkflowStore>, jobs: u64) {
    let client = JobClient::standalone(store.clone());
    let def = sleepy_job();
    for start in (0..jobs).step_by(1000) {
        let end = (start + 1000).min(jobs);
        client.enqueue_many(&def, start..end).await.expect("enqueue");
    }
}

/// Every completed job's attempts and error count, read page by page.
async fn completed_attempts(store: &Arc<dyn WorkflowStore>) -> Vec<(u32, usize)> {
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

/// A worker process works through 5,000 jobs of 1–5 ms and is SIGKILLed mid-run; a second one
/// finishes: none lost, re-runs at most what was running at the kill.
///
/// The leases are long (10 s, renewed every 2.5 s) so that only the kill can make a job run
/// again: with 1 s leases a loaded machine delays a heartbeat past the expiry now and then, and
/// the rescue of a lease that was still in use is a re-run the bound does not allow for. The
/// second process waits out the killed process's leases, so the test pays 10 s for it.
async fn kill_nine_mid_run_loses_nothing(kind: Kind) {
    const JOBS: u64 = 5000;
    const LEASE_MS: u64 = 10_000;
    let spec = fresh(kind, "kill-nine");
    let store = spec.open("test").await.expect("open");
    enqueue(&store, JOBS).await;

    let first = Worker::start(&spec, 8, LEASE_MS);
    wait_until("a tenth of the jobs", Duration::from_secs(120), async || {
        count(&store, JobState::Completed).await >= JOBS / 10
    })
    .await;
    first.kill();
    settle_after_kill(&spec).await;
    let running_at_kill = count(&store, JobState::Running).await;
    assert!(count(&store, JobState::Completed).await < JOBS, "killed mid-run, not after");

    let _second = Worker::start(&spec, 8, LEASE_MS);
    wait_until("every job", Duration::from_secs(300), async || {
        count(&store, JobState::Completed).await == JOBS
    })
    .await;
    let attempts = completed_attempts(&store).await;
    assert_eq!(attempts.len() as u64, JOBS, "none lost");
    let ran_twice = attempts.iter().filter(|&&(a, _)| a > 1).count() as u64;
    assert!(ran_twice <= running_at_kill, "{ran_twice} ran twice, {running_at_kill} were running");
    assert_eq!(count(&store, JobState::Running).await, 0);
    if let StoreSpec::Sqlite(path) = &spec {
        let url = format!("sqlite://{path}");
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
        let check: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.expect("check");
        assert_eq!(check, "ok");
    }
    drop_schema(&spec).await;
}

/// Two worker processes on one store with leases far longer than the run: no rescue can
/// happen, so a second claim of a job could only come from a broken claim.
async fn two_processes_never_claim_a_job_twice(kind: Kind) {
    let jobs: u64 = if kind == Kind::Sqlite { 10_000 } else { 20_000 };
    let spec = fresh(kind, "two-workers");
    let store = spec.open("test").await.expect("open");
    enqueue(&store, jobs).await;
    let _a = Worker::start(&spec, 32, 600_000);
    let _b = Worker::start(&spec, 32, 600_000);
    wait_until("every job", Duration::from_secs(300), async || {
        count(&store, JobState::Completed).await == jobs
    })
    .await;
    let attempts = completed_attempts(&store).await;
    assert_eq!(attempts.len() as u64, jobs);
    assert!(attempts.iter().all(|&(_, errors)| errors == 0), "a lease expired: a rescue happened");
    assert!(attempts.iter().all(|&(a, _)| a == 1), "a job was claimed twice");
    drop_schema(&spec).await;
}

/// Two processes opening (and so migrating) one new store at once: both succeed, one schema.
async fn two_processes_migrating_at_once_make_one_schema(kind: Kind) {
    let spec = fresh(kind, "migrate-race");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_durability-worker"))
            .args(["migrate", &spec.to_string()])
            .spawn()
            .expect("spawn")
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().expect("wait").success(), "first migrate failed");
    assert!(b.wait().expect("wait").success(), "second migrate failed");
    let store = spec.open("test").await.expect("open after both");
    enqueue(&store, 10).await;
    assert_eq!(count(&store, JobState::Available).await, 10, "one working schema");
    drop_schema(&spec).await;
}

/// Every connection of the worker process to its server (its listener's included) terminated
/// three times during a 10,000-job run (PostgreSQL: `pg_terminate_backend`; Redis: `CLIENT
/// KILL`): every job completes, none lost, none left running; afterwards a job enqueued into the
/// idle worker starts long before its poll interval (the listener came back).
async fn terminated_connections_lose_nothing(kind: Kind) {
    assert_ne!(kind, Kind::Sqlite);
    const JOBS: u64 = 10_000;
    let spec = fresh(kind, "terminate");
    let store = spec.open("test").await.expect("open");
    enqueue(&store, JOBS).await;
    let _worker = Worker::start_polling(&spec, 8, 2000, 60_000);
    for quarter in 1..=3 {
        wait_until("a share of the jobs", Duration::from_secs(300), async || {
            count(&store, JobState::Completed).await >= JOBS * quarter / 4
        })
        .await;
        let killed = terminate_worker_connections(&spec).await;
        assert!(killed > 0, "the worker holds connections to terminate");
    }
    wait_until("every job", Duration::from_secs(300), async || {
        count(&store, JobState::Completed).await == JOBS
    })
    .await;
    let attempts = completed_attempts(&store).await;
    assert_eq!(attempts.len() as u64, JOBS, "none lost");
    assert_eq!(count(&store, JobState::Running).await, 0, "none left running");

    // The worker polls once a minute: only a wake-up through the (reconnected) listener can start
    // this job within the deadline.
    enqueue(&store, 1).await;
    wait_until("the job enqueued after the kills", Duration::from_secs(20), async || {
        count(&store, JobState::Completed).await == JOBS + 1
    })
    .await;
    drop_schema(&spec).await;
}

/// A file `name` in the tests' scratch directory (made when missing: a server store's test may
/// be the first to need it).
fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("dispatch-durability");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Start the `workflows` worker process on `spec`, dying at `cut`.
fn workflow_worker(spec: &StoreSpec, effects: &std::path::Path, cut: Option<Cut>) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_durability-worker"))
        .args(["workflows", &spec.to_string(), &effects.display().to_string()])
        .arg(Cut::render(cut))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workflow worker");
    Worker(child)
}

/// Wait for a worker process to end on its own (it kills itself at its cut).
async fn exited(worker: &mut Worker) {
    wait_until("the worker to die at its cut", Duration::from_secs(60), async || {
        worker.0.try_wait().expect("try_wait").is_some()
    })
    .await;
}

/// One cut of the ten-step workflow on a store of its own: the worker process SIGKILLs itself
/// at the cut; a second process finishes the run. The output equals an uninterrupted run's;
/// every step ran once, the step at an after-effect cut at most twice.
async fn one_cut(kind: Kind, cut: Cut) {
    let spec = fresh(kind, &format!("cut-{}", Cut::render(Some(cut)).replace(':', "-")));
    let store = spec.open("test").await.expect("open");
    let effects = scratch_file(&format!("effects-{}", dispatch::core::RunId::new()));
    let workflows = Workflows::new(store.clone());
    let def = ten_steps(effects.clone(), None);
    let run = workflows.start(&def, &7, StartOptions::default()).await.expect("start");
    let mut first = workflow_worker(&spec, &effects, Some(cut));
    exited(&mut first).await;
    let second = workflow_worker(&spec, &effects, None);
    let output = workflows.wait_for_output::<u64>(run, Duration::from_secs(120)).await;
    drop(second);
    let output = output.unwrap_or_else(|error| panic!("{cut:?}: no output: {error}"));
    assert_eq!(output, ten_steps_output(7), "{cut:?}");
    let log = std::fs::read_to_string(&effects).expect("effects");
    for step in 0..10 {
        let runs = log.lines().filter(|l| *l == step.to_string()).count();
        let allowed = if cut == Cut::AfterEffect(step) { 2 } else { 1 };
        assert!(runs >= 1 && runs <= allowed, "{cut:?}: step {step} ran {runs} times");
    }
    drop_schema(&spec).await;
}

/// The ten-step workflow killed before each step, after each step's effect, and after the last
/// checkpoint (21 cuts, five at a time, each on its own store and worker processes).
async fn workflow_killed_at_every_step_boundary_resumes_exactly(kind: Kind) {
    let mut cuts: Vec<Cut> = (0..10).flat_map(|k| [Cut::Before(k), Cut::AfterEffect(k)]).collect();
    cuts.push(Cut::Before(10));
    for wave in cuts.chunks(5) {
        futures::future::join_all(wave.iter().map(|&cut| one_cut(kind, cut))).await;
    }
}

/// A saga whose third step fails; the worker process SIGKILLs itself as the compensation of step
/// one begins (step two's is done): a second process finishes the compensations, each ran exactly
/// once, in reverse order, and the run keeps the original error.
async fn saga_killed_during_compensation_compensates_once(kind: Kind) {
    let spec = fresh(kind, "saga");
    let store = spec.open("test").await.expect("open");
    let effects = scratch_file(&format!("saga-{}", dispatch::core::RunId::new()));
    let workflows = Workflows::new(store.clone());
    let definition = saga(effects.clone(), None);
    let run = workflows.start(&definition, &(), StartOptions::default()).await.expect("start");
    let mut first = workflow_worker(&spec, &effects, Some(Cut::BeforeUndo(1)));
    exited(&mut first).await;
    let _second = workflow_worker(&spec, &effects, None);
    let ended = workflows.wait_for_output::<()>(run, Duration::from_secs(120)).await;
    let error = match ended {
        Err(RunWaitError::Failed { error, .. }) => error,
        other => panic!("the saga fails, not {other:?}"),
    };
    assert!(error.contains("card declined"), "{error}");
    let log = std::fs::read_to_string(&effects).expect("effects");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["undo-2", "undo-1"]);
    drop_schema(&spec).await;
}

/// 200 runs sleeping 2–10 s; every worker process killed at 6 s and a new one started: every
/// run wakes, none before its deadline.
async fn durable_sleep_survives_a_restart(kind: Kind) {
    let spec = fresh(kind, "sleep");
    let store = spec.open("test").await.expect("open");
    let workflows = Workflows::new(store.clone());
    let def = sleeper();
    let mut runs = Vec::new();
    for i in 0..200u64 {
        let ms = 2000 + i * 40;
        runs.push((workflows.start(&def, &ms, StartOptions::default()).await.expect("start"), ms));
    }
    let effects = scratch_file("unused");
    let first = workflow_worker(&spec, &effects, None);
    // The point of the scenario: the fleet goes down 6 s in, with runs asleep.
    tokio::time::sleep(Duration::from_secs(6)).await;
    first.kill();
    let _second = workflow_worker(&spec, &effects, None);
    for (run, ms) in runs {
        let woke = workflows.wait_for_output::<i64>(run, Duration::from_secs(120)).await;
        let woke = woke.unwrap_or_else(|error| panic!("no output: {error}"));
        let started = workflows.get_run(run).await.expect("get").expect("run").created_at;
        let deadline = started.as_unix_micros() + (ms as i64) * 1000;
        assert!(
            woke >= deadline,
            "run {run} slept {ms} ms but woke {} ms early",
            (deadline - woke) / 1000
        );
    }
    drop_schema(&spec).await;
}

/// After a worker process was killed, wait until the store can change no more on its behalf:
/// on Redis a script runs whole or not at all, so there is nothing to wait for; on PostgreSQL a
/// statement the process sent just before it died (a claim) goes on in its
/// server session until the server notices the client is gone, and may commit after the kill,
/// so its sessions are terminated and waited out before the store is read. (Under load a claim
/// committing after the count was a "re-run" of a job counted as not running.)
async fn settle_after_kill(spec: &StoreSpec) {
    if !matches!(spec, StoreSpec::Postgres(_)) {
        return;
    }
    wait_until("the killed worker's sessions to end", Duration::from_secs(60), async || {
        terminate_worker_connections(spec).await == 0
    })
    .await;
}

/// Terminate every connection of the worker processes of `spec` (PostgreSQL:
/// `pg_terminate_backend`; Redis: `CLIENT KILL` of each client whose name starts with the
/// workers' name, the wake-up listener's included); how many.
async fn terminate_worker_connections(spec: &StoreSpec) -> i64 {
    let name = spec.worker_application_name().expect("a server store");
    if matches!(spec, StoreSpec::Redis(_)) {
        return kill_redis_clients(&name).await;
    }
    let mut admin = sqlx::PgConnection::connect(&postgres_url()).await.expect("admin connection");
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .expect("terminate")
}

/// `CLIENT KILL` every Redis client whose name starts with `name`; how many.
async fn kill_redis_clients(name: &str) -> i64 {
    use dispatch_store_redis::redis;
    let client = redis::Client::open(redis_url()).expect("redis URL");
    let mut admin = client.get_multiplexed_async_connection().await.expect("admin connection");
    let list: String =
        redis::cmd("CLIENT").arg("LIST").query_async(&mut admin).await.expect("list");
    let mut killed = 0;
    for line in list.lines() {
        let field = |key: &str| {
            line.split(' ').find_map(|part| part.strip_prefix(key)).unwrap_or_default().to_owned()
        };
        if field("name=").starts_with(name) {
            let kill = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(field("id=")).to_owned();
            killed += kill.query_async::<i64>(&mut admin).await.unwrap_or(0);
        }
    }
    killed
}

/// Drop a PostgreSQL test schema, or delete a Redis test prefix's keys (best effort); nothing
/// for SQLite.
async fn drop_schema(spec: &StoreSpec) {
    if let StoreSpec::Redis(prefix) = spec {
        delete_redis_prefix(prefix).await;
        return;
    }
    if let StoreSpec::Postgres(schema) = spec
        && let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_url()).await
    {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
    }
}

/// Delete every key of a Redis test prefix (best effort).
async fn delete_redis_prefix(prefix: &str) {
    use dispatch_store_redis::redis;
    let Ok(client) = redis::Client::open(redis_url()) else { return };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
    let pattern = format!("{{{prefix}}}:*");
    let Ok(keys) = redis::cmd("KEYS").arg(pattern).query_async::<Vec<String>>(&mut conn).await
    else {
        return;
    };
    for chunk in keys.chunks(1000) {
        let _ = redis::cmd("UNLINK").arg(chunk).query_async::<i64>(&mut conn).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
    Redis,
}

type Scenario = fn(Kind) -> Pin<Box<dyn Future<Output = ()>>>;

macro_rules! scenarios {
    ($($name:path),* $(,)?) => {
        [$((
            stringify!($name).rsplit(':').next().unwrap_or_default().trim(),
            (|kind| Box::pin($name(kind))) as Scenario,
        )),*]
    };
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let postgres = probe_postgres();
    let redis = probe_redis();
    for (server, probe) in [("PostgreSQL", &postgres), ("Redis", &redis)] {
        if let Err(reason) = probe {
            let then = if in_ci { "CI=true, so they fail" } else { "they are ignored" };
            eprintln!("durability: {server} is unreachable ({reason}); {then}");
        }
    }
    let both = scenarios![
        kill_nine_mid_run_loses_nothing,
        two_processes_never_claim_a_job_twice,
        two_processes_migrating_at_once_make_one_schema,
        workflow_killed_at_every_step_boundary_resumes_exactly,
        durable_sleep_survives_a_restart,
        saga_killed_during_compensation_compensates_once,
        cluster::killed_workers_jobs_run_again_within_the_worker_timeout,
        cluster::contending_leaders_never_write_under_two_terms,
        cron::a_per_second_entry_fires_each_second_once_across_leader_kills,
    ];
    // SQLite has no server to end the transaction of a process stopped inside one: its file
    // lock stops every other process until it resumes, so no takeover can happen there.
    let servers_only = scenarios![
        terminated_connections_lose_nothing,
        cluster::a_paused_leader_is_fenced_when_it_resumes,
    ];
    let mut trials = Vec::new();
    for (name, scenario) in both {
        trials.push(trial(Kind::Sqlite, name, scenario, &Ok(()), in_ci));
        trials.push(trial(Kind::Postgres, name, scenario, &postgres, in_ci));
        trials.push(trial(Kind::Redis, name, scenario, &redis, in_ci));
    }
    for (name, scenario) in servers_only {
        trials.push(trial(Kind::Postgres, name, scenario, &postgres, in_ci));
        trials.push(trial(Kind::Redis, name, scenario, &redis, in_ci));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

fn trial(
    kind: Kind,
    name: &str,
    scenario: Scenario,
    reachable: &Result<(), String>,
    in_ci: bool,
) -> Trial {
    let store = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
        Kind::Redis => "redis",
    };
    let label = format!("{store}::{name}");
    match reachable {
        Ok(()) => Trial::test(label, move || run(scenario(kind))),
        Err(reason) => {
            let reason = format!("the {store} server is unreachable: {reason}");
            Trial::test(label, move || Err(Failed::from(reason))).with_ignored_flag(!in_ci)
        }
    }
}

fn run(scenario: Pin<Box<dyn Future<Output = ()>>>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("can not build a runtime: {e}"))?;
    runtime.block_on(scenario);
    Ok(())
}

fn probe_postgres() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let connect = sqlx::PgConnection::connect(&postgres_url());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".to_owned()),
        }
    })
}

fn probe_redis() -> Result<(), String> {
    use dispatch_store_redis::redis;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let ping = async {
            let client = redis::Client::open(redis_url()).map_err(|e| e.to_string())?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no answer within 5 s".to_owned()),
        }
    })
}
