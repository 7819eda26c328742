//! Workflow behaviour of the SQLite store beyond the conformance suite: statements that write
//! many rows at once (checkpoints past one insert's chunk, a key written twice in one call),
//! every way a drive job dies, wait replacement, partial scopes, the purge of expired kept
//! events, durability across a reopen, and wake-ups after a start and a delivery.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    CancelResult, ClaimRequest, Clock as _, ErrorKind, EventId, EventWait, Failure, FailureKind,
    Finish, FinishResult, JobState, JobStore, LeaseRef, LeaseToken, ManualClock, NewCheckpoint,
    NewEvent, NewJob, NewRun, Outcome, RunAt, RunEnd, RunId, RunState, Scope, Started, Suspend,
    SuspendOutcome, UniqueKey, WaitResolution, Wakeup, WorkerId, WorkflowStore,
};
use dispatch_store_sqlite::SqliteStore;
use futures::StreamExt as _;

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

    fn wait(&self, key: &str, name: &str, corr: &str) -> EventWait {
        EventWait {
            key: key.into(),
            name: name.into(),
            correlation: corr.into(),
            deadline: self.clock.now() + secs(60),
        }
    }

    async fn suspend(&self, lease: LeaseRef, run: RunId, waits: Vec<EventWait>) -> SuspendOutcome {
        let suspend = Suspend { run, until: None, waits };
        self.store.suspend_run(lease, suspend).await.expect("suspend_run")
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
    check(ctx.store.load_run(lease, run).await.expect("load_run").checkpoints);
    drop(ctx.store);
    let reopened = SqliteStore::open(&ctx.path).await.expect("reopen");
    check(reopened.checkpoints(run).await.expect("checkpoints"));
    assert_eq!(reopened.get_run(run).await.unwrap().expect("run").state, RunState::Running);
    let unknown = reopened.checkpoints(RunId::new()).await.expect_err("unknown run");
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_drive_job_out_of_retries_fails_its_run_and_drops_its_waits() {
    let ctx = ctx().await;
    let (run, mut drive) = new_run(Scope::default());
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive().await;
    let waits = vec![ctx.wait("w", "paid", "o-1")];
    assert!(matches!(ctx.suspend(lease, id, waits).await, SuspendOutcome::Suspended { .. }));
    ctx.clock.advance(secs(60));
    let lease = ctx.drive().await;
    assert_eq!(ctx.store.get_run(id).await.unwrap().unwrap().state, RunState::Suspended);
    let retry = Outcome::Retry {
        failure: Failure::new(FailureKind::Error, "out of luck"),
        run_at: RunAt::After(secs(1)),
    };
    let result = ctx.store.finish(&[Finish { lease, outcome: retry }]).await.unwrap();
    assert!(matches!(result[0], FinishResult::Applied { state: JobState::Dead, .. }), "{result:?}");
    let failed = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.error.as_deref()), (RunState::Failed, Some("out of luck")));
    assert_eq!(failed.finished_at, Some(ctx.clock.now()));
    let published = ctx.publish(event("paid", "o-1", Scope::default(), ctx.later())).await;
    assert!(published.kept && published.delivered_to.is_empty(), "the wait went with the run");
}

#[tokio::test]
async fn an_ended_run_stays_as_it_ended_when_its_drive_job_dies_later() {
    let ctx = ctx().await;
    let (run, mut drive) = new_run(Scope::default());
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive().await;
    ctx.store.end_run(lease, id, RunEnd::Completed(b"ok".to_vec())).await.unwrap();
    let fail = Outcome::Fail { failure: Failure::new(FailureKind::Error, "after the end") };
    ctx.store.finish(&[Finish { lease, outcome: fail }]).await.unwrap();
    let run = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.output, run.error),
        (RunState::Completed, Some(b"ok".to_vec()), None)
    );
}

#[tokio::test]
async fn suspend_after_a_cancel_of_the_drive_job_answers_cancel_requested() {
    // A job-level cancel of a live run's drive job is the run's cancel: the suspend is refused
    // and the drive job goes on unflagged, so the drive can wind the run down.
    let ctx = ctx().await;
    let run = ctx.start(Scope::default()).await;
    let lease = ctx.drive().await;
    let cancel = ctx.store.request_cancel(lease.job_id).await.unwrap();
    assert_eq!(cancel, CancelResult::Requested);
    let until = ctx.clock.now() + secs(10);
    let outcome = ctx.store.suspend_run(lease, Suspend { run, until: Some(until), waits: vec![] });
    assert_eq!(outcome.await.unwrap(), SuspendOutcome::CancelRequested);
    let job = ctx.store.get_job(lease.job_id).await.unwrap().unwrap();
    assert_eq!((job.state, job.cancel_requested), (JobState::Running, false));
    let done = ctx.store.finish(&[Finish { lease, outcome: Outcome::Complete }]).await.unwrap();
    assert!(matches!(done[0], FinishResult::Applied { state: JobState::Completed, .. }));
}

#[tokio::test]
async fn a_reused_run_id_or_a_held_drive_key_is_a_conflict_that_stores_nothing() {
    let ctx = ctx().await;
    let (run, drive) = new_run(Scope::default());
    ctx.store.start_run(run.clone(), drive).await.unwrap();
    let (_, second_drive) = new_run(Scope::default());
    let second_job = second_drive.id;
    let err = ctx.store.start_run(run.clone(), second_drive).await.expect_err("reused run ID");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(ctx.store.get_job(second_job).await.unwrap().is_none(), "its drive job rolled back");

    let mut holder = NewJob::new(DRIVE, vec![]);
    holder.unique = Some(UniqueKey { key: "only-one".into(), window: None });
    ctx.store.enqueue(vec![holder]).await.unwrap();
    let (other, mut drive) = new_run(Scope::default());
    drive.unique = Some(UniqueKey { key: "only-one".into(), window: None });
    let err = ctx.store.start_run(other.clone(), drive).await.expect_err("held unique key");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(ctx.store.get_run(other.id).await.unwrap().is_none());
}

#[tokio::test]
async fn an_event_for_a_running_drive_writes_its_checkpoint_and_leaves_the_job_alone() {
    let ctx = ctx().await;
    let run = ctx.start(Scope::default()).await;
    let lease = ctx.drive().await;
    ctx.suspend(lease, run, vec![ctx.wait("w", "reply", "r")]).await;
    ctx.clock.advance(secs(60));
    let lease = ctx.drive().await;
    let published = ctx.publish(event("reply", "r", Scope::default(), ctx.later())).await;
    assert_eq!((published.delivered_to, published.kept), (vec![run], false));
    let job = ctx.store.get_job(lease.job_id).await.unwrap().unwrap();
    assert_eq!((job.state, job.lease.map(|l| l.token)), (JobState::Running, Some(lease.token)));
    let resolved = ctx.store.resolve_wait(lease, run, "w").await.unwrap();
    assert_eq!(resolved, WaitResolution::Delivered(b"reply/r".to_vec()));
}

#[tokio::test]
async fn a_wait_on_a_key_replaces_the_earlier_wait_on_that_key() {
    let ctx = ctx().await;
    let run = ctx.start(Scope::default()).await;
    let lease = ctx.drive().await;
    let waits = vec![ctx.wait("w", "first", "c"), ctx.wait("w", "second", "c")];
    assert!(matches!(ctx.suspend(lease, run, waits).await, SuspendOutcome::Suspended { .. }));
    assert!(ctx.publish(event("first", "c", Scope::default(), ctx.later())).await.kept);
    let published = ctx.publish(event("second", "c", Scope::default(), ctx.later())).await;
    assert_eq!(published.delivered_to, vec![run]);
}

#[tokio::test]
async fn an_unset_scope_part_matches_only_an_unset_part() {
    let ctx = ctx().await;
    let app_only = Scope { app: Some("shop".into()), tenant: None };
    let run = ctx.start(app_only.clone()).await;
    let lease = ctx.drive().await;
    ctx.suspend(lease, run, vec![ctx.wait("w", "paid", "o")]).await;
    for other in [Scope::new("shop", "acme"), Scope::default()] {
        assert!(ctx.publish(event("paid", "o", other, ctx.later())).await.kept);
    }
    let published = ctx.publish(event("paid", "o", app_only, ctx.later())).await;
    assert_eq!(published.delivered_to, vec![run]);
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

/// The next wake-up, failing the test instead of hanging when none comes.
async fn next(wakeups: &mut dispatch_core::WakeupStream) -> Option<Wakeup> {
    tokio::time::timeout(secs(5), wakeups.next()).await.expect("a wake-up within 5 s")
}

#[tokio::test]
async fn a_start_and_a_delivery_wake_the_drive_queue() {
    let ctx = ctx().await;
    let mut wakeups = ctx.store.wakeups().expect("push wake-ups");
    let (run, mut drive) = new_run(Scope::default());
    drive.queue = "workflows".into();
    let id = run.id;
    assert!(matches!(ctx.store.start_run(run, drive).await.unwrap(), Started::Created(_)));
    assert_eq!(next(&mut wakeups).await, Some(Wakeup::queue("workflows")));
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["workflows".into()],
        names: vec![DRIVE.into()],
        limit: 1,
        lease_ttl: secs(30),
        token: LeaseToken::new(),
    };
    let claimed = ctx.store.claim(&request).await.unwrap();
    let lease = LeaseRef { job_id: claimed[0].job.id, token: claimed[0].lease.token };
    ctx.suspend(lease, id, vec![ctx.wait("w", "go", "now")]).await;
    ctx.publish(event("go", "now", Scope::default(), ctx.later())).await;
    assert_eq!(next(&mut wakeups).await, Some(Wakeup::queue("workflows")));
    let job = ctx.store.get_job(lease.job_id).await.unwrap().unwrap();
    assert_eq!((job.state, job.run_at), (JobState::Available, ctx.clock.now()), "due at once");
}
