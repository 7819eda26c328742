//! Workflow behaviour of the SQLite store beyond the conformance suite (which pins the
//! contract on every store): checkpoints written in one call surviving a reopen, and the purge
//! of expired kept events from their table.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ErrorKind, EventId, JobStore, LeaseRef, LeaseToken, ManualClock, NewCheckpoint,
    NewEvent, NewJob, NewRun, RunId, RunState, Scope, WorkerId, WorkflowStore,
};
use dispatch_store_sqlite::SqliteStore;

const DRIVE: &str = "drive";

struct Ctx {
    store: SqliteStore,
    clock: Arc<ManualClock>,
    path: String,
}

async fn ctx() -> Ctx {
    let dir = std::env::temp_dir().join("dispatch-sqlite-wf");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", RunId::new())).display().to_string();
    let clock = Arc::new(ManualClock::fixed());
    let store = SqliteStore::open(&path).await.expect("open").with_clock(clock.clone());
    Ctx { store, clock, path }
}

fn new_run(scope: Scope) -> (NewRun, NewJob) {
    let run = NewRun {
        id: RunId::new(),
        name: "wf".into(),
        version: 1,
        input: b"{}".to_vec(),
        scope: scope.clone(),
        idempotency_key: None,
        parent: None,
    };
    let mut drive = NewJob::new(DRIVE, run.id.to_string().into_bytes());
    drive.scope = scope;
    (run, drive)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn event(name: &str, corr: &str, scope: Scope, keep_for: Duration) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        name: name.into(),
        correlation: corr.into(),
        payload: format!("{name}/{corr}").into_bytes(),
        scope,
        broadcast: false,
        keep_for,
    }
}

impl Ctx {
    async fn start(&self, scope: Scope) -> RunId {
        let (run, drive) = new_run(scope);
        self.store.start_run(run, drive).await.expect("start_run").id()
    }

    /// Claim the one due drive job.
    async fn drive(&self) -> LeaseRef {
        let request = ClaimRequest {
            worker: WorkerId::new(),
            queues: vec![dispatch_core::job::DEFAULT_QUEUE.into()],
            names: vec![DRIVE.into()],
            limit: 10,
            lease_ttl: secs(30),
            token: LeaseToken::new(),
        };
        let claimed = self.store.claim(&request).await.expect("claim");
        assert_eq!(claimed.len(), 1, "one drive job due");
        LeaseRef { job_id: claimed[0].job.id, token: claimed[0].lease.token }
    }

    async fn publish(&self, event: NewEvent) -> dispatch_core::Published {
        self.store.publish_event(event).await.expect("publish_event")
    }

    fn later(&self) -> Duration {
        secs(3600)
    }
}

#[tokio::test]
async fn many_checkpoints_in_one_call_keep_write_order_and_survive_a_reopen() {
    let ctx = ctx().await;
    let run = ctx.start(Scope::default()).await;
    let lease = ctx.drive().await;
    // 300 rows: more than one multi-row insert; "k005" written again last.
    let mut batch: Vec<NewCheckpoint> =
        (0..300).map(|i| NewCheckpoint::new(format!("k{i:03}"), vec![1])).collect();
    batch.push(NewCheckpoint::new("k005", vec![2]));
    ctx.store.save_checkpoints(lease, run, batch).await.expect("save_checkpoints");
    ctx.store
        .save_checkpoints(lease, run, vec![NewCheckpoint::new("k000", vec![3])])
        .await
        .expect("save_checkpoints");

    let check = |checkpoints: Vec<dispatch_core::Checkpoint>| {
        assert_eq!(checkpoints.len(), 300);
        let keys: Vec<String> = checkpoints.iter().map(|c| c.key.clone()).collect();
        let want: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        assert_eq!(keys, want, "first write order, rewrites in place");
        assert_eq!(
            (checkpoints[0].data.as_slice(), checkpoints[5].data.as_slice()),
            (&[3][..], &[2][..])
        );
    };
    check(ctx.store.load_snapshot(lease, run).await.expect("load_snapshot").checkpoints);
    drop(ctx.store);
    let reopened = SqliteStore::open(&ctx.path).await.expect("reopen");
    check(reopened.get_checkpoints(run).await.expect("checkpoints"));
    assert_eq!(reopened.get_run(run).await.unwrap().expect("run").state, RunState::Running);
    let unknown = reopened.get_checkpoints(RunId::new()).await.expect_err("unknown run");
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn keeping_an_event_purges_the_expired_ones() {
    let ctx = ctx().await;
    for corr in ["a", "b", "c"] {
        assert!(ctx.publish(event("e", corr, Scope::default(), secs(5))).await.kept);
    }
    ctx.clock.advance(secs(5));
    assert!(ctx.publish(event("e", "d", Scope::default(), ctx.later())).await.kept);
    let kept: Vec<String> = sqlx::query_scalar("SELECT correlation FROM kept_events")
        .fetch_all(&sqlx::SqlitePool::connect(&format!("sqlite://{}", ctx.path)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(kept, vec!["d".to_owned()]);
    // A zero `keep_for` keeps nothing: the event expires the moment it is published.
    assert!(!ctx.publish(event("e", "x", Scope::default(), Duration::ZERO)).await.kept);
}
