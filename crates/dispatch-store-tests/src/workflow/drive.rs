//! Driving a run: checkpoints in write order, the drive job's lease fencing every drive call,
//! and suspension (the drive job snoozed in the same operation, the run's waits replaced).

use dispatch_core::{
    Checkpoint, ErrorKind, FinishResult, JobState, NewCheckpoint, Outcome, RunEnd, RunId, RunState,
    Suspend, SuspendOutcome, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::{DRIVE, wait_on};
use crate::TestContext;
use crate::support::{PAST_TTL, assert_kind, secs};

/// Checkpoints load in write order; rewriting a key replaces its data in place; every write
/// is stamped by the store clock.
pub async fn checkpoints_load_in_write_order(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("steps").await;
    let lease = ctx.drive(run).await;
    let write = |key: &str, data: &str| NewCheckpoint::new(key, data.as_bytes().to_vec());
    ctx.store.save_checkpoints(lease, run, vec![write("b", "1"), write("a", "2")]).await.unwrap();
    ctx.clock.advance(secs(1));
    ctx.store.save_checkpoints(lease, run, vec![write("c", "3"), write("b", "4")]).await.unwrap();
    let snapshot = ctx.store.load_snapshot(lease, run).await.unwrap();
    let now = ctx.clock.now();
    let at = |s: u64| now - secs(1) + secs(s);
    let expected = vec![
        Checkpoint { key: "b".into(), data: b"4".to_vec(), at: at(1) },
        Checkpoint { key: "a".into(), data: b"2".to_vec(), at: at(0) },
        Checkpoint { key: "c".into(), data: b"3".to_vec(), at: at(1) },
    ];
    assert_eq!(snapshot.checkpoints, expected);
    assert_eq!(ctx.store.get_checkpoints(run).await.unwrap(), expected);
    assert_eq!((snapshot.run.id, snapshot.now), (run, now), "the store's clock at the load");
}

/// Every drive call is fenced by the drive job's lease: a stale or foreign lease is refused
/// with `LeaseLost` and writes nothing; an unknown run is `NotFound`.
pub async fn drive_calls_are_fenced(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("fenced").await;
    let old = ctx.drive(run).await;
    ctx.clock.advance(PAST_TTL);
    let report = ctx.store.rescue_expired(10).await.unwrap();
    assert_eq!(report.rescued, vec![old.job_id]);
    let new = ctx.drive(run).await;
    let write = vec![NewCheckpoint::new("k", b"stale".to_vec())];
    assert_kind(
        ctx.store.save_checkpoints(old, run, write).await,
        ErrorKind::LeaseLost,
        "save_checkpoints",
    );
    assert_kind(ctx.store.load_snapshot(old, run).await, ErrorKind::LeaseLost, "load_snapshot");
    assert_kind(ctx.store.resolve_wait(old, run, "k").await, ErrorKind::LeaseLost, "resolve_wait");
    assert_kind(
        ctx.store.end_run(old, run, RunEnd::Completed(vec![])).await,
        ErrorKind::LeaseLost,
        "end_run",
    );
    let suspend =
        Suspend { run, until: Some(ctx.clock.now() + secs(5)), waits: vec![], waiting: vec![] };
    assert_kind(ctx.store.suspend_run(old, suspend).await, ErrorKind::LeaseLost, "suspend_run");
    assert!(ctx.checkpoint_keys(run).await.is_empty(), "nothing written by the stale drive");
    assert_eq!(ctx.run_state(run).await, RunState::Running);
    // The lease of another run's drive job does not fence this run either.
    let other = ctx.start("other").await;
    let other_lease = ctx.drive(other).await;
    assert_kind(
        ctx.store.load_snapshot(other_lease, run).await,
        ErrorKind::LeaseLost,
        "load_snapshot",
    );
    assert_kind(
        ctx.store.load_snapshot(new, RunId::new()).await,
        ErrorKind::NotFound,
        "load_snapshot",
    );
    ctx.store.load_snapshot(new, run).await.expect("the current lease holds");
}

/// Suspending until a time marks the run suspended and snoozes its drive job in the same
/// operation: due at the wake time, the attempt given back, and the runtime's own finish of
/// that attempt is `AlreadyApplied`. Driving again makes the run running.
pub async fn suspend_snoozes_the_drive_job(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("sleepy").await;
    let lease = ctx.drive(run).await;
    let wake = ctx.clock.now() + secs(10);
    let suspend = Suspend { run, until: Some(wake), waits: vec![], waiting: vec![] };
    let outcome = ctx.store.suspend_run(lease, suspend).await.unwrap();
    assert_eq!(outcome, SuspendOutcome::Suspended { wake_at: wake });
    assert_eq!(ctx.run_state(run).await, RunState::Suspended);
    let job = ctx.job(lease.job_id).await;
    assert_eq!((job.state, job.run_at, job.attempt), (JobState::Available, wake, 0));
    assert_eq!(ctx.finish(lease, Outcome::Complete).await, FinishResult::AlreadyApplied);
    ctx.clock.advance(secs(9));
    ctx.claim_none(DRIVE).await;
    ctx.clock.advance(secs(1));
    let again = ctx.drive(run).await;
    let snapshot = ctx.store.load_snapshot(again, run).await.unwrap();
    assert_eq!(snapshot.run.state, RunState::Running);
    assert_eq!(ctx.run_state(run).await, RunState::Running);
}

/// A suspend with no wake time and no wait is refused and changes nothing.
pub async fn suspend_needs_something_to_wake_for(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("idle").await;
    let lease = ctx.drive(run).await;
    let suspend = Suspend { run, until: None, waits: vec![], waiting: vec![] };
    assert_kind(
        ctx.store.suspend_run(lease, suspend).await,
        ErrorKind::InvalidInput,
        "suspend_run",
    );
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running);
}

/// An event delivered while the run is being driven, to a wait an earlier suspend registered,
/// is noticed by the drive's next suspend on that key (`Delivered`: the drive goes on), rather
/// than the run suspending with its event already written until the wait's deadline.
pub async fn suspend_notices_a_delivery_made_during_the_drive(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("two-waits").await;
    let lease = ctx.drive(run).await;
    let waits = vec![wait_on(&ctx, "a", "ev-a"), wait_on(&ctx, "b", "ev-b")];
    let first = ctx
        .store
        .suspend_run(lease, Suspend { run, until: None, waits, waiting: vec![] })
        .await
        .unwrap();
    assert!(matches!(first, SuspendOutcome::Suspended { .. }), "{first:?}");
    assert_eq!(ctx.publish("ev-a", "k", "1", false).await.delivered_to, [run]);
    let lease = ctx.drive(run).await;
    let snapshot = ctx.store.load_snapshot(lease, run).await.unwrap();
    assert_eq!(snapshot.checkpoints.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["a"]);
    // While the drive replays from that snapshot, the other event reaches wait `b`.
    assert_eq!(ctx.publish("ev-b", "k", "2", false).await.delivered_to, [run]);
    let outcome = ctx.wait_for(lease, run, "b", "ev-b", "k").await;
    assert_eq!(outcome, SuspendOutcome::Delivered);
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running, "still the drive's");
    assert_eq!(ctx.run_state(run).await, RunState::Running);
}

/// A suspend's waits replace the run's earlier ones: a wait the run no longer lists (a branch
/// it dropped) receives nothing, and the event is kept for whoever waits for it next.
pub async fn suspend_replaces_the_runs_earlier_waits(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("select").await;
    let lease = ctx.drive(run).await;
    let until = Some(ctx.clock.now() + secs(1));
    let waits = vec![wait_on(&ctx, "a", "ev-a")];
    ctx.store.suspend_run(lease, Suspend { run, until, waits, waiting: vec![] }).await.unwrap();
    ctx.clock.advance(secs(1)); // the sleep wins; the branch waiting for ev-a is dropped
    let lease = ctx.drive(run).await;
    ctx.store.load_snapshot(lease, run).await.unwrap();
    let outcome = ctx.wait_for(lease, run, "b", "ev-b", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    let published = ctx.publish("ev-a", "k", "1", false).await;
    assert!(published.delivered_to.is_empty(), "delivered to a dropped wait: {published:?}");
    assert!(published.kept);
    let other = ctx.start("later").await;
    let lease = ctx.drive(other).await;
    assert_eq!(ctx.wait_for(lease, other, "a", "ev-a", "k").await, SuspendOutcome::Delivered);
}

/// Many checkpoints in one call (more than one multi-row statement's worth) keep the order
/// given, a key listed twice in that call keeps its first place with its later data, and a
/// later call rewrites a key in place; `load_snapshot` and `checkpoints` agree. `checkpoints` of an
/// unknown run is `NotFound`.
pub async fn many_checkpoints_in_one_call_keep_write_order(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("many").await;
    let lease = ctx.drive(run).await;
    let mut batch: Vec<NewCheckpoint> =
        (0..300).map(|i| NewCheckpoint::new(format!("k{i:03}"), vec![1])).collect();
    batch.push(NewCheckpoint::new("k005", vec![2]));
    ctx.store.save_checkpoints(lease, run, batch).await.expect("save_checkpoints");
    let rewrite = vec![NewCheckpoint::new("k000", vec![3])];
    ctx.store.save_checkpoints(lease, run, rewrite).await.expect("save_checkpoints");

    let want: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    let loaded = ctx.store.load_snapshot(lease, run).await.expect("load_snapshot").checkpoints;
    let listed = ctx.store.get_checkpoints(run).await.expect("checkpoints");
    for checkpoints in [loaded, listed] {
        let keys: Vec<&str> = checkpoints.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, want, "first write order, rewrites in place");
        let data = |i: usize| checkpoints[i].data.as_slice();
        assert_eq!((data(0), data(5), data(6)), (&[3][..], &[2][..], &[1][..]), "latest data");
    }
    assert_kind(ctx.store.get_checkpoints(RunId::new()).await, ErrorKind::NotFound, "checkpoints");
}

/// Waits are keyed by their checkpoint key: of a key listed twice in one suspend, the last
/// wait is the one registered.
pub async fn a_wait_on_a_key_replaces_the_earlier_wait_on_that_key(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let run = ctx.start("rewait").await;
    let lease = ctx.drive(run).await;
    let waits = vec![wait_on(&ctx, "w", "first"), wait_on(&ctx, "w", "second")];
    let outcome = ctx
        .store
        .suspend_run(lease, Suspend { run, until: None, waits, waiting: vec![] })
        .await
        .unwrap();
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    let published = ctx.publish("first", "k", "1", false).await;
    assert!(published.kept, "the first wait on `w` was replaced: {published:?}");
    assert_eq!(ctx.publish("second", "k", "2", false).await.delivered_to, [run]);
}

/// A later suspend's wait on a key replaces the run's earlier wait on that key (for another
/// event): the earlier event is kept, the later one delivered.
pub async fn a_later_suspend_replaces_the_wait_on_a_key(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("rewait").await;
    let lease = ctx.drive(run).await;
    let until = Some(ctx.clock.now() + secs(1));
    let waits = vec![wait_on(&ctx, "v", "third")];
    ctx.store.suspend_run(lease, Suspend { run, until, waits, waiting: vec![] }).await.unwrap();
    ctx.clock.advance(secs(1)); // the sleep wins; the drive now waits on `v` for another event
    let lease = ctx.drive(run).await;
    ctx.store.load_snapshot(lease, run).await.unwrap();
    let outcome = ctx.wait_for(lease, run, "v", "fourth", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    let published = ctx.publish("third", "k", "3", false).await;
    assert!(published.kept, "the wait on `v` for third was replaced: {published:?}");
    assert_eq!(ctx.publish("fourth", "k", "4", false).await.delivered_to, [run]);
}
