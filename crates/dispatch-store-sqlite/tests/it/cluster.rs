//! Cluster behaviour of the SQLite store beyond the conformance suite: the record of leader
//! writes trimmed per leadership in the table itself, a sweep that kills a drive job failing its
//! run in the same transaction, and the wake-up after a sweep that made jobs available.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::Clock as _;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::job::DEFAULT_QUEUE;
use dispatch_core::{
    ClaimRequest, JobState, JobStore, Leader, LeadershipStore, LeaseToken, ManualClock,
    MembershipStore, NewJob, NewRun, RunId, RunState, Scope, Wakeup, WorkerId, WorkerRegistration,
    WorkflowStore, transition,
};
use dispatch_store_sqlite::SqliteStore;
use futures::{FutureExt as _, StreamExt as _};

/// A worker's heartbeat timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(5);

struct Ctx {
    store: SqliteStore,
    clock: Arc<ManualClock>,
    path: String,
}

async fn ctx() -> Ctx {
    let dir = std::env::temp_dir().join("dispatch-sqlite-cluster");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", RunId::new())).display().to_string();
    let clock = Arc::new(ManualClock::fixed());
    let store = SqliteStore::open(&path).await.expect("open").with_clock(clock.clone());
    Ctx { store, clock, path }
}

impl Ctx {
    /// Register a new worker; its ID.
    async fn register(&self) -> WorkerId {
        let worker = WorkerRegistration {
            id: WorkerId::new(),
            host: "host".into(),
            pid: 1,
            queues: vec![DEFAULT_QUEUE.into()],
            concurrency: 4,
            version: "1".into(),
        };
        self.store.register_worker(&worker).await.expect("register");
        worker.id
    }

    /// Claim every due job named `name` for `worker`, with leases that outlive the tests.
    async fn claim(&self, worker: WorkerId, name: &str) -> Vec<dispatch_core::ClaimedJob> {
        let request = ClaimRequest {
            worker,
            queues: vec![DEFAULT_QUEUE.into()],
            names: vec![name.into()],
            limit: 10,
            lease_ttl: Duration::from_secs(3600),
            token: LeaseToken::new(),
        };
        self.store.claim(&request).await.expect("claim")
    }

    /// Leadership `name` for a new holder.
    async fn lead(&self, name: &str) -> Leader {
        let holder = WorkerId::new();
        let ttl = Duration::from_secs(30);
        self.store.acquire_leadership(name, holder, ttl).await.expect("acquire").expect("free")
    }

    /// The rows of `leader_writes` for `name`, read from the table itself.
    async fn stored_writes(&self, name: &str) -> i64 {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", self.path)).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM leader_writes WHERE name = ?")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn leader_writes_keep_the_newest_per_leadership() {
    let ctx = ctx().await;
    let (busy, quiet) = (ctx.lead("busy").await, ctx.lead("quiet").await);
    ctx.store.sweep_workers(&quiet, TIMEOUT, 10).await.expect("sweep");
    let first = ctx.clock.now();
    for _ in 0..LEADER_WRITES_KEPT + 5 {
        ctx.clock.advance(Duration::from_micros(1));
        ctx.store.sweep_workers(&busy, TIMEOUT, 10).await.expect("sweep");
    }
    assert_eq!(ctx.stored_writes("busy").await, LEADER_WRITES_KEPT as i64, "trimmed on insert");
    assert_eq!(ctx.stored_writes("quiet").await, 1, "another leadership keeps its own");

    let writes = ctx.store.leader_writes("busy", usize::MAX).await.expect("writes");
    assert_eq!(writes.len(), LEADER_WRITES_KEPT, "clamped to what is kept");
    let oldest_kept = first + Duration::from_micros(6);
    assert_eq!((writes[0].at, writes[LEADER_WRITES_KEPT - 1].at), (oldest_kept, ctx.clock.now()));
    assert!(writes.windows(2).all(|w| w[0].at < w[1].at), "oldest first");
}

#[tokio::test]
async fn a_sweep_that_kills_a_drive_job_fails_its_run() {
    let ctx = ctx().await;
    let worker = ctx.register().await;
    let run = NewRun {
        id: RunId::new(),
        name: "wf".into(),
        version: 1,
        input: b"{}".to_vec(),
        scope: Scope::default(),
        idempotency_key: None,
        parent: None,
    };
    let mut drive = NewJob::new("drive", run.id.to_string().into_bytes());
    drive.max_attempts = 1;
    let run = ctx.store.start_run(run, drive).await.expect("start").id();
    let claimed = ctx.claim(worker, "drive").await;
    assert_eq!(claimed.len(), 1);

    ctx.clock.advance(TIMEOUT + Duration::from_secs(1));
    let term = ctx.lead("dispatch").await;
    let sweep = ctx.store.sweep_workers(&term, TIMEOUT, 10).await.expect("sweep");
    assert_eq!(sweep.gone, vec![worker]);
    assert_eq!(sweep.rescue.promoted.len(), 1, "{sweep:?}");
    let job = ctx.store.get_job(claimed[0].job.id).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Dead);
    let failed = ctx.store.get_run(run).await.expect("get_run").expect("run");
    assert_eq!(failed.state, RunState::Failed, "the run dies with its drive job");
    assert_eq!(failed.error.as_deref(), Some(transition::lost_worker_message(worker).as_str()));
}

#[tokio::test]
async fn a_sweep_that_makes_jobs_available_wakes_their_workers() {
    let ctx = ctx().await;
    let worker = ctx.register().await;
    ctx.store.enqueue(vec![NewJob::new("work", vec![])]).await.expect("enqueue");
    assert_eq!(ctx.claim(worker, "work").await.len(), 1);
    let mut wakeups = ctx.store.wakeups().expect("the store pushes wake-ups");

    let term = ctx.lead("dispatch").await;
    let early = ctx.store.sweep_workers(&term, TIMEOUT, 10).await.expect("sweep");
    assert!(early.rescue.is_empty());
    assert_eq!(wakeups.next().now_or_never(), None, "nothing made available, nobody woken");

    ctx.clock.advance(TIMEOUT + Duration::from_secs(1));
    let sweep = ctx.store.sweep_workers(&term, TIMEOUT, 10).await.expect("sweep");
    assert_eq!(sweep.rescue.rescued.len(), 1);
    assert_eq!(wakeups.next().now_or_never(), Some(Some(Wakeup::queue(DEFAULT_QUEUE))));
}
