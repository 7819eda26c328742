//! Tests of [`WorkflowStore`](dispatch_core::WorkflowStore): runs started with their drive job,
//! idempotent starts, fenced checkpoints, suspension (the drive job snoozed in the same
//! operation), correlated event delivery (one event one waiter, broadcast, kept events and their
//! expiry, scope), wait resolution, run ends, and a dying drive job failing its run.

use std::collections::HashSet;

use dispatch_core::{
    CancelResult, Checkpoint, ErrorKind, EventId, EventWait, FinishResult, JobState, LeaseRef,
    NewCheckpoint, NewEvent, NewJob, NewRun, Outcome, PageRequest, RunCancel, RunEnd, RunFilter,
    RunId, RunState, Scope, Started, Suspend, SuspendOutcome, Timestamp, WaitResolution,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{PAST_TTL, assert_kind, failure, lease, secs};
use dispatch_core::WorkflowStore;

/// The drive jobs of the suite's runs.
const DRIVE: &str = "wf-drive";

fn new_run(name: &str) -> (NewRun, NewJob) {
    let run = NewRun {
        id: RunId::new(),
        name: name.to_owned(),
        version: 2,
        input: b"{\"order\":7}".to_vec(),
        scope: Scope::default(),
        idempotency_key: None,
        parent: None,
    };
    let drive = NewJob::new(DRIVE, run.id.to_string().into_bytes());
    (run, drive)
}

impl TestContext<dyn WorkflowStore> {
    /// Start a run of `name` in `scope`; its ID.
    async fn start_in(&self, name: &str, scope: Scope) -> RunId {
        let (mut run, mut drive) = new_run(name);
        run.scope = scope.clone();
        drive.scope = scope;
        let started = self.store.start_run(run, drive).await.expect("start_run");
        assert!(matches!(started, Started::Created(_)), "{started:?}");
        started.id()
    }

    async fn start(&self, name: &str) -> RunId {
        self.start_in(name, Scope::default()).await
    }

    /// Claim the drive job of `run` (the only due drive job), as a drive does.
    async fn drive(&self, run: RunId) -> LeaseRef {
        let drive_job = self.store.get_run(run).await.expect("get_run").expect("run").drive_job;
        let claimed = self.claim(&[DRIVE], 1).await;
        assert_eq!(claimed.len(), 1, "the drive job of {run} is due");
        assert_eq!(claimed[0].job.id, drive_job, "claimed the drive job of {run}");
        lease(&claimed[0])
    }

    async fn run_state(&self, run: RunId) -> RunState {
        self.store.get_run(run).await.expect("get_run").expect("run").state
    }

    async fn wait_for(
        &self,
        lease: LeaseRef,
        run: RunId,
        key: &str,
        name: &str,
        corr: &str,
    ) -> SuspendOutcome {
        let wait = EventWait {
            key: key.to_owned(),
            name: name.to_owned(),
            correlation: corr.to_owned(),
            deadline: self.clock.now() + secs(60),
        };
        let suspend = Suspend { run, until: None, waits: vec![wait] };
        self.store.suspend_run(lease, suspend).await.expect("suspend_run")
    }

    async fn publish(
        &self,
        name: &str,
        corr: &str,
        payload: &str,
        broadcast: bool,
    ) -> dispatch_core::Published {
        self.publish_in(name, corr, payload, broadcast, Scope::default()).await
    }

    async fn publish_in(
        &self,
        name: &str,
        corr: &str,
        payload: &str,
        broadcast: bool,
        scope: Scope,
    ) -> dispatch_core::Published {
        let event = NewEvent {
            id: EventId::new(),
            name: name.to_owned(),
            correlation: corr.to_owned(),
            payload: payload.as_bytes().to_vec(),
            scope,
            broadcast,
            keep_for: secs(3600),
        };
        self.store.publish_event(event).await.expect("publish_event")
    }

    async fn checkpoint_keys(&self, run: RunId) -> Vec<String> {
        let checkpoints = self.store.checkpoints(run).await.expect("checkpoints");
        checkpoints.into_iter().map(|c| c.key).collect()
    }
}

/// A start creates the run (running, every field as given, stamped by the store clock) and its
/// drive job, available at once under the given name.
pub async fn start_creates_run_and_drive_job(ctx: TestContext<dyn WorkflowStore>) {
    let (run, drive) = new_run("order");
    let drive_id = drive.id;
    let started = ctx.store.start_run(run.clone(), drive).await.expect("start_run");
    assert_eq!(started, Started::Created(run.id));
    let stored = ctx.store.get_run(run.id).await.unwrap().expect("stored");
    assert_eq!((stored.name.as_str(), stored.version, &stored.input), ("order", 2, &run.input));
    assert_eq!(
        (stored.state, stored.drive_job, stored.parent),
        (RunState::Running, drive_id, None)
    );
    assert_eq!((stored.created_at, stored.finished_at), (ctx.clock.now(), None));
    assert_eq!((stored.output, stored.error), (None, None));
    let job = ctx.job(drive_id).await;
    assert_eq!((job.name.as_str(), job.state), (DRIVE, JobState::Available));
    assert_eq!(ctx.drive(run.id).await.job_id, drive_id);
    assert!(ctx.store.get_run(RunId::new()).await.unwrap().is_none());
}

/// A second start with the same workflow name and idempotency key returns the first run and
/// creates nothing; the same key under another name is another run.
pub async fn start_is_idempotent_by_key(ctx: TestContext<dyn WorkflowStore>) {
    let (mut first, drive) = new_run("charge");
    first.idempotency_key = Some("order-7".into());
    let first_id = ctx.store.start_run(first, drive).await.unwrap().id();
    let (mut again, drive) = new_run("charge");
    again.idempotency_key = Some("order-7".into());
    let again_drive = drive.id;
    assert_eq!(ctx.store.start_run(again, drive).await.unwrap(), Started::Existing(first_id));
    assert!(ctx.store.get_job(again_drive).await.unwrap().is_none(), "no second drive job");
    let (mut other, drive) = new_run("refund");
    other.idempotency_key = Some("order-7".into());
    assert!(matches!(ctx.store.start_run(other, drive).await.unwrap(), Started::Created(_)));
    assert_eq!(ctx.claim(&[DRIVE], 10).await.len(), 2);
}

/// A drive job that fails validation starts nothing.
pub async fn start_with_invalid_drive_job_stores_nothing(ctx: TestContext<dyn WorkflowStore>) {
    let (run, mut drive) = new_run("big");
    drive.payload = vec![b'x'; dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES + 1];
    let id = run.id;
    assert_kind(ctx.store.start_run(run, drive).await, ErrorKind::PayloadTooLarge, "start_run");
    assert!(ctx.store.get_run(id).await.unwrap().is_none());
    ctx.claim_none(DRIVE).await;
}

/// Checkpoints load in write order; rewriting a key replaces its data in place; every write
/// is stamped by the store clock.
pub async fn checkpoints_load_in_write_order(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("steps").await;
    let lease = ctx.drive(run).await;
    let write = |key: &str, data: &str| NewCheckpoint::new(key, data.as_bytes().to_vec());
    ctx.store.save_checkpoints(lease, run, vec![write("b", "1"), write("a", "2")]).await.unwrap();
    ctx.clock.advance(secs(1));
    ctx.store.save_checkpoints(lease, run, vec![write("c", "3"), write("b", "4")]).await.unwrap();
    let snapshot = ctx.store.load_run(lease, run).await.unwrap();
    let now = ctx.clock.now();
    let at = |s: u64| now - secs(1) + secs(s);
    let expected = vec![
        Checkpoint { key: "b".into(), data: b"4".to_vec(), at: at(1) },
        Checkpoint { key: "a".into(), data: b"2".to_vec(), at: at(0) },
        Checkpoint { key: "c".into(), data: b"3".to_vec(), at: at(1) },
    ];
    assert_eq!(snapshot.checkpoints, expected);
    assert_eq!(ctx.store.checkpoints(run).await.unwrap(), expected);
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
    assert_kind(ctx.store.load_run(old, run).await, ErrorKind::LeaseLost, "load_run");
    assert_kind(ctx.store.resolve_wait(old, run, "k").await, ErrorKind::LeaseLost, "resolve_wait");
    assert_kind(
        ctx.store.end_run(old, run, RunEnd::Completed(vec![])).await,
        ErrorKind::LeaseLost,
        "end_run",
    );
    let suspend = Suspend { run, until: Some(ctx.clock.now() + secs(5)), waits: vec![] };
    assert_kind(ctx.store.suspend_run(old, suspend).await, ErrorKind::LeaseLost, "suspend_run");
    assert!(ctx.checkpoint_keys(run).await.is_empty(), "nothing written by the stale drive");
    assert_eq!(ctx.run_state(run).await, RunState::Running);
    // The lease of another run's drive job does not fence this run either.
    let other = ctx.start("other").await;
    let other_lease = ctx.drive(other).await;
    assert_kind(ctx.store.load_run(other_lease, run).await, ErrorKind::LeaseLost, "load_run");
    assert_kind(ctx.store.load_run(new, RunId::new()).await, ErrorKind::NotFound, "load_run");
    ctx.store.load_run(new, run).await.expect("the current lease holds");
}

/// Suspending until a time marks the run suspended and snoozes its drive job in the same
/// operation: due at the wake time, the attempt given back, and the runtime's own finish of
/// that attempt is `AlreadyApplied`. Driving again makes the run running.
pub async fn suspend_snoozes_the_drive_job(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("sleepy").await;
    let lease = ctx.drive(run).await;
    let wake = ctx.clock.now() + secs(10);
    let suspend = Suspend { run, until: Some(wake), waits: vec![] };
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
    let snapshot = ctx.store.load_run(again, run).await.unwrap();
    assert_eq!(snapshot.run.state, RunState::Running);
    assert_eq!(ctx.run_state(run).await, RunState::Running);
}

/// A suspend with no wake time and no wait is refused and changes nothing.
pub async fn suspend_needs_something_to_wake_for(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("idle").await;
    let lease = ctx.drive(run).await;
    let suspend = Suspend { run, until: None, waits: vec![] };
    assert_kind(
        ctx.store.suspend_run(lease, suspend).await,
        ErrorKind::InvalidInput,
        "suspend_run",
    );
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running);
}

fn wait_on(ctx: &TestContext<dyn WorkflowStore>, key: &str, name: &str) -> EventWait {
    EventWait {
        key: key.to_owned(),
        name: name.to_owned(),
        correlation: "k".to_owned(),
        deadline: ctx.clock.now() + secs(60),
    }
}

/// An event delivered while the run is being driven, to a wait an earlier suspend registered,
/// is noticed by the drive's next suspend on that key (`Delivered`: the drive goes on), rather
/// than the run suspending with its event already written until the wait's deadline.
pub async fn suspend_notices_a_delivery_made_during_the_drive(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("two-waits").await;
    let lease = ctx.drive(run).await;
    let waits = vec![wait_on(&ctx, "a", "ev-a"), wait_on(&ctx, "b", "ev-b")];
    let first = ctx.store.suspend_run(lease, Suspend { run, until: None, waits }).await.unwrap();
    assert!(matches!(first, SuspendOutcome::Suspended { .. }), "{first:?}");
    assert_eq!(ctx.publish("ev-a", "k", "1", false).await.delivered_to, [run]);
    let lease = ctx.drive(run).await;
    let snapshot = ctx.store.load_run(lease, run).await.unwrap();
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
    ctx.store.suspend_run(lease, Suspend { run, until, waits }).await.unwrap();
    ctx.clock.advance(secs(1)); // the sleep wins; the branch waiting for ev-a is dropped
    let lease = ctx.drive(run).await;
    ctx.store.load_run(lease, run).await.unwrap();
    let outcome = ctx.wait_for(lease, run, "b", "ev-b", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    let published = ctx.publish("ev-a", "k", "1", false).await;
    assert!(published.delivered_to.is_empty(), "delivered to a dropped wait: {published:?}");
    assert!(published.kept);
    let other = ctx.start("later").await;
    let lease = ctx.drive(other).await;
    assert_eq!(ctx.wait_for(lease, other, "a", "ev-a", "k").await, SuspendOutcome::Delivered);
}

/// A run input, an event payload or a checkpoint over the payload limit is refused with
/// `PayloadTooLarge`, and nothing of the call is stored.
pub async fn oversized_input_event_and_checkpoint_are_refused(ctx: TestContext<dyn WorkflowStore>) {
    let big = vec![b'x'; dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES + 1];
    let (mut run, drive) = new_run("big");
    run.input = big.clone();
    let id = run.id;
    assert_kind(ctx.store.start_run(run, drive).await, ErrorKind::PayloadTooLarge, "start_run");
    assert!(ctx.store.get_run(id).await.unwrap().is_none(), "no run stored");
    let event = NewEvent {
        id: EventId::new(),
        name: "ev".to_owned(),
        correlation: "k".to_owned(),
        payload: big.clone(),
        scope: Scope::default(),
        broadcast: false,
        keep_for: secs(3600),
    };
    assert_kind(ctx.store.publish_event(event).await, ErrorKind::PayloadTooLarge, "publish");
    let other = ctx.start("waits").await;
    let lease = ctx.drive(other).await;
    let outcome = ctx.wait_for(lease, other, "w", "ev", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "nothing kept: {outcome:?}");
    let run = ctx.start("small").await;
    let lease = ctx.drive(run).await;
    let writes = vec![NewCheckpoint::new("s:a#1", b"1".to_vec()), NewCheckpoint::new("s:b#1", big)];
    let saved = ctx.store.save_checkpoints(lease, run, writes).await;
    assert_kind(saved, ErrorKind::PayloadTooLarge, "save_checkpoints");
    assert!(ctx.checkpoint_keys(run).await.is_empty(), "nothing of the call written");
}

/// An event kept "for ever" (`keep_for` = `Duration::MAX`) is kept, not an arithmetic error,
/// and a wait a year later takes it.
pub async fn keep_for_saturates(ctx: TestContext<dyn WorkflowStore>) {
    let event = NewEvent {
        id: EventId::new(),
        name: "forever".to_owned(),
        correlation: "k".to_owned(),
        payload: b"1".to_vec(),
        scope: Scope::default(),
        broadcast: false,
        keep_for: std::time::Duration::MAX,
    };
    assert!(ctx.store.publish_event(event).await.expect("publish_event").kept);
    ctx.clock.advance(secs(365 * 24 * 3600));
    let run = ctx.start("late").await;
    let lease = ctx.drive(run).await;
    assert_eq!(ctx.wait_for(lease, run, "w", "forever", "k").await, SuspendOutcome::Delivered);
}

/// A broadcast reaching two waits of one run (two branches waiting for the same event) writes
/// both checkpoints and lists the run once.
pub async fn broadcast_lists_each_run_once(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("twice").await;
    let lease = ctx.drive(run).await;
    let waits = vec![wait_on(&ctx, "a", "ev"), wait_on(&ctx, "b", "ev")];
    ctx.store.suspend_run(lease, Suspend { run, until: None, waits }).await.unwrap();
    let published = ctx.publish("ev", "k", "1", true).await;
    assert_eq!(published.delivered_to, [run]);
    let mut keys = ctx.checkpoint_keys(run).await;
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
}

/// One event, one waiter: the oldest wait on (name, key) receives it; its checkpoint holds the
/// payload and its drive job is due at once; the other waiter keeps waiting.
pub async fn event_goes_to_the_oldest_waiter(ctx: TestContext<dyn WorkflowStore>) {
    let first = ctx.start("a").await;
    let lease = ctx.drive(first).await;
    ctx.clock.advance(secs(1));
    assert!(matches!(
        ctx.wait_for(lease, first, "w", "paid", "o-1").await,
        SuspendOutcome::Suspended { .. }
    ));
    let second = ctx.start("b").await;
    let lease2 = ctx.drive(second).await;
    assert!(matches!(
        ctx.wait_for(lease2, second, "w", "paid", "o-1").await,
        SuspendOutcome::Suspended { .. }
    ));
    ctx.claim_none(DRIVE).await;

    let published = ctx.publish("paid", "o-1", "{\"cents\":1999}", false).await;
    assert_eq!((published.delivered_to, published.kept), (vec![first], false));
    assert_eq!(ctx.checkpoint_keys(first).await, vec!["w".to_owned()]);
    assert!(ctx.checkpoint_keys(second).await.is_empty());
    let again = ctx.drive(first).await;
    let resolved = ctx.store.resolve_wait(again, first, "w").await.unwrap();
    assert_eq!(resolved, WaitResolution::Delivered(b"{\"cents\":1999}".to_vec()));
    ctx.claim_none(DRIVE).await;

    let published = ctx.publish("paid", "o-1", "{}", false).await;
    assert_eq!(published.delivered_to, vec![second]);
}

/// An event nobody waits for is kept and taken by the first wait that matches: that suspend
/// answers `Delivered`, writes the checkpoint and leaves the drive running; it is taken once.
pub async fn event_before_its_wait_is_kept(ctx: TestContext<dyn WorkflowStore>) {
    let published = ctx.publish("shipped", "o-2", "truck", false).await;
    assert_eq!((published.delivered_to.len(), published.kept), (0, true));
    let run = ctx.start("ship").await;
    let lease = ctx.drive(run).await;
    assert_eq!(ctx.wait_for(lease, run, "w", "shipped", "o-2").await, SuspendOutcome::Delivered);
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running, "the drive goes on");
    let resolved = ctx.store.resolve_wait(lease, run, "w").await.unwrap();
    assert_eq!(resolved, WaitResolution::Delivered(b"truck".to_vec()));
    // Taken: a second wait for the same event suspends.
    let suspended = ctx.wait_for(lease, run, "w2", "shipped", "o-2").await;
    assert!(matches!(suspended, SuspendOutcome::Suspended { .. }), "{suspended:?}");
}

/// A kept event expires `keep_for` after its publish.
pub async fn kept_event_expires(ctx: TestContext<dyn WorkflowStore>) {
    let event = NewEvent {
        id: EventId::new(),
        name: "late".into(),
        correlation: "k".into(),
        payload: b"x".to_vec(),
        scope: Scope::default(),
        broadcast: false,
        keep_for: secs(5),
    };
    assert!(ctx.store.publish_event(event).await.unwrap().kept);
    ctx.clock.advance(secs(6));
    let run = ctx.start("late").await;
    let lease = ctx.drive(run).await;
    let outcome = ctx.wait_for(lease, run, "w", "late", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "expired, got {outcome:?}");
}

/// A broadcast reaches every run waiting at publish time and is not kept for later ones.
pub async fn broadcast_reaches_every_current_waiter(ctx: TestContext<dyn WorkflowStore>) {
    let mut waiting = HashSet::new();
    for _ in 0..3 {
        let run = ctx.start("listener").await;
        let lease = ctx.drive(run).await;
        ctx.wait_for(lease, run, "w", "deploy", "all").await;
        waiting.insert(run);
    }
    let published = ctx.publish("deploy", "all", "v2", true).await;
    assert_eq!(published.delivered_to.iter().copied().collect::<HashSet<_>>(), waiting);
    assert!(!published.kept);
    assert_eq!(ctx.claim(&[DRIVE], 10).await.len(), 3, "every waiter is due");
    let late = ctx.start("late").await;
    let lease = ctx.drive(late).await;
    let outcome = ctx.wait_for(lease, late, "w", "deploy", "all").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "not kept: {outcome:?}");
}

/// Delivery needs the same name, correlation key and scope.
pub async fn event_respects_name_key_and_scope(ctx: TestContext<dyn WorkflowStore>) {
    let acme = Scope::new("shop", "acme");
    let run = ctx.start_in("scoped", acme.clone()).await;
    let lease = ctx.drive(run).await;
    ctx.wait_for(lease, run, "w", "paid", "o-9").await;
    assert!(ctx.publish_in("paid", "o-9", "x", false, Scope::new("shop", "globex")).await.kept);
    assert!(ctx.publish_in("paid", "o-8", "x", false, acme.clone()).await.kept);
    assert!(ctx.publish_in("refunded", "o-9", "x", false, acme.clone()).await.kept);
    ctx.claim_none(DRIVE).await;
    let published = ctx.publish_in("paid", "o-9", "yes", false, acme).await;
    assert_eq!(published.delivered_to, vec![run]);
}

/// A wait that timed out is removed when resolved: a later event is kept, not delivered to it.
pub async fn timed_out_wait_receives_nothing_later(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("patient").await;
    let lease = ctx.drive(run).await;
    let outcome = ctx.wait_for(lease, run, "w", "reply", "r-1").await;
    let SuspendOutcome::Suspended { wake_at } = outcome else { panic!("{outcome:?}") };
    assert_eq!(wake_at, ctx.clock.now() + secs(60), "due at the wait's deadline");
    ctx.clock.advance(secs(60));
    let again = ctx.drive(run).await;
    assert_eq!(ctx.store.resolve_wait(again, run, "w").await.unwrap(), WaitResolution::TimedOut);
    let published = ctx.publish("reply", "r-1", "too late", false).await;
    assert_eq!((published.delivered_to.len(), published.kept), (0, true));
    assert!(ctx.checkpoint_keys(run).await.is_empty());
}

/// Ending a run records its state, output or error and finish time, and drops its waits.
pub async fn end_run_records_the_outcome(ctx: TestContext<dyn WorkflowStore>) {
    let done = ctx.start("done").await;
    let lease = ctx.drive(done).await;
    ctx.store.end_run(lease, done, RunEnd::Completed(b"42".to_vec())).await.unwrap();
    let run = ctx.store.get_run(done).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.output, run.finished_at),
        (RunState::Completed, Some(b"42".to_vec()), Some(ctx.clock.now()))
    );

    let failed = ctx.start("failed").await;
    let lease = ctx.drive(failed).await;
    let deadline = ctx.clock.now() + secs(60);
    let wait =
        EventWait { key: "w".into(), name: "never".into(), correlation: "x".into(), deadline };
    let outcome = ctx
        .store
        .suspend_run(lease, Suspend { run: failed, until: None, waits: vec![wait] })
        .await
        .unwrap();
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }));
    ctx.clock.advance(secs(60));
    let lease = ctx.drive(failed).await;
    ctx.store.end_run(lease, failed, RunEnd::Failed("card declined".into())).await.unwrap();
    let run = ctx.store.get_run(failed).await.unwrap().unwrap();
    assert_eq!((run.state, run.error.as_deref()), (RunState::Failed, Some("card declined")));
    assert!(ctx.publish("never", "x", "p", false).await.kept, "its waits are gone");
}

/// A drive job that dies (out of attempts) fails its run in the same operation, with the job's
/// last error.
pub async fn dying_drive_job_fails_its_run(ctx: TestContext<dyn WorkflowStore>) {
    let (run, mut drive) = new_run("fragile");
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive(id).await;
    let result = ctx.finish(lease, Outcome::Fail { failure: failure("worker crashed") }).await;
    assert!(matches!(result, FinishResult::Applied { state: JobState::Dead, .. }), "{result:?}");
    let run = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!((run.state, run.error.as_deref()), (RunState::Failed, Some("worker crashed")));

    // The same through rescue: the lease expires on the last attempt.
    let (run, mut drive) = new_run("crashy");
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    ctx.drive(id).await;
    ctx.clock.advance(PAST_TTL);
    assert_eq!(ctx.store.rescue_expired(10).await.unwrap().promoted.len(), 1);
    assert_eq!(ctx.run_state(id).await, RunState::Failed);
}

/// Listing by state and name, in ID order, page by page.
pub async fn list_runs_filters_and_paginates(ctx: TestContext<dyn WorkflowStore>) {
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(ctx.start("order").await);
    }
    let refund = ctx.start("refund").await;
    let lease = ctx.drive(orders[0]).await;
    ctx.store.end_run(lease, orders[0], RunEnd::Completed(vec![])).await.unwrap();

    let mut seen = Vec::new();
    let filter = RunFilter { name: Some("order".into()), ..RunFilter::default() };
    let mut page = PageRequest::first(2);
    loop {
        let found = ctx.store.list_runs(&filter, &page).await.unwrap();
        assert!(found.items.len() <= 2);
        seen.extend(found.items.iter().map(|r| r.id));
        match PageRequest::next_of(&found, 2) {
            Some(next) => page = next,
            None => break,
        }
    }
    let mut expected = orders.clone();
    expected.sort();
    assert_eq!(seen, expected, "every order run once, in ID order");
    let running = RunFilter { state: Some(RunState::Running), name: Some("order".into()) };
    let found = ctx.store.list_runs(&running, &PageRequest::first(100)).await.unwrap();
    assert_eq!(found.items.len(), 4);
    let all = ctx.store.list_runs(&RunFilter::default(), &PageRequest::first(100)).await.unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(all.items.iter().any(|r| r.id == refund));
    let _: Timestamp = all.items[0].created_at;
}

/// A cancel of a suspended run records its reason (the first one) and makes its drive job due
/// at once; the next drive sees the request.
pub async fn cancel_wakes_a_suspended_run(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("waiting").await;
    let lease = ctx.drive(run).await;
    let suspend = Suspend { run, until: Some(ctx.clock.now() + secs(3600)), waits: vec![] };
    ctx.store.suspend_run(lease, suspend).await.unwrap();
    ctx.claim_none(DRIVE).await;
    assert_eq!(ctx.store.cancel_run(run, "customer asked").await.unwrap(), RunCancel::Requested);
    assert_eq!(ctx.store.cancel_run(run, "again").await.unwrap(), RunCancel::Requested);
    let stored = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!(stored.cancel_requested.as_deref(), Some("customer asked"), "the first reason");
    let again = ctx.drive(run).await;
    let snapshot = ctx.store.load_run(again, run).await.unwrap();
    assert_eq!(snapshot.run.cancel_requested.as_deref(), Some("customer asked"));
    assert_kind(ctx.store.cancel_run(RunId::new(), "x").await, ErrorKind::NotFound, "cancel_run");
}

/// A running drive learns of a cancel when it tries to suspend: nothing is suspended or
/// registered and its lease still holds; once the run ends, a cancel is `AlreadyFinal`.
pub async fn cancel_of_a_running_drive_refuses_its_suspend(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("busy").await;
    let lease = ctx.drive(run).await;
    assert_eq!(ctx.store.cancel_run(run, "stop").await.unwrap(), RunCancel::Requested);
    let outcome = ctx.wait_for(lease, run, "w", "never", "k").await;
    assert_eq!(outcome, SuspendOutcome::CancelRequested);
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running, "the drive goes on");
    assert_eq!(ctx.run_state(run).await, RunState::Running);
    assert!(ctx.publish("never", "k", "x", false).await.kept, "no wait was registered");
    ctx.store.end_run(lease, run, RunEnd::Cancelled("stop".into())).await.unwrap();
    let ended = ctx.store.cancel_run(run, "late").await.unwrap();
    assert_eq!(ended, RunCancel::AlreadyFinal(RunState::Cancelled));
}

/// Replay from a checkpoint: later checkpoints dropped, the run running again (output, error and
/// finish cleared), its drive job due at once with attempts reset. Unknown key or run:
/// `NotFound`; while a drive holds the run: `Conflict`.
pub async fn replay_rewinds_to_a_checkpoint(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("rewind").await;
    let lease = ctx.drive(run).await;
    let write = |key: &str| NewCheckpoint::new(key, key.as_bytes().to_vec());
    ctx.store.save_checkpoints(lease, run, vec![write("a"), write("b"), write("c")]).await.unwrap();
    assert_kind(ctx.store.replay_run(run, "b").await, ErrorKind::Conflict, "replay_run");
    ctx.store.end_run(lease, run, RunEnd::Completed(b"1".to_vec())).await.unwrap();
    assert!(matches!(ctx.finish(lease, Outcome::Complete).await, FinishResult::Applied { .. }));

    assert_kind(ctx.store.replay_run(run, "zz").await, ErrorKind::NotFound, "replay_run");
    assert_kind(ctx.store.replay_run(RunId::new(), "a").await, ErrorKind::NotFound, "replay_run");
    ctx.store.replay_run(run, "b").await.unwrap();
    let stored = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.output, stored.finished_at), (RunState::Running, None, None));
    assert_eq!(ctx.checkpoint_keys(run).await, vec!["a".to_owned(), "b".to_owned()]);
    let again = ctx.drive(run).await;
    assert_eq!(ctx.job(again.job_id).await.attempt, 1, "attempts start over");
}

/// Migration to another version: checkpoints kept, a failed run running again, its drive job
/// renamed to the new version's and due at once. A completed run, or one a drive holds:
/// `Conflict`.
pub async fn migrate_moves_a_run_to_another_version(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("versioned").await;
    let lease = ctx.drive(run).await;
    let keep = vec![NewCheckpoint::new("a", b"1".to_vec())];
    ctx.store.save_checkpoints(lease, run, keep).await.unwrap();
    assert_kind(
        ctx.store.migrate_run(run, 3, "wf-drive-v3").await,
        ErrorKind::Conflict,
        "migrate_run",
    );
    ctx.store.end_run(lease, run, RunEnd::Failed("bug in v2".into())).await.unwrap();
    assert!(matches!(ctx.finish(lease, Outcome::Complete).await, FinishResult::Applied { .. }));

    ctx.store.migrate_run(run, 3, "wf-drive-v3").await.unwrap();
    let stored = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.state, stored.error), (3, RunState::Running, None));
    assert_eq!(ctx.checkpoint_keys(run).await, vec!["a".to_owned()]);
    ctx.claim_none(DRIVE).await;
    let claimed = ctx.claim(&["wf-drive-v3"], 1).await;
    assert_eq!(claimed.len(), 1, "the drive job belongs to the new version");
    assert_eq!(claimed[0].job.id, stored.drive_job);
    let held = crate::support::lease(&claimed[0]);
    ctx.store.end_run(held, run, RunEnd::Completed(b"ok".to_vec())).await.unwrap();
    assert_kind(
        ctx.store.migrate_run(run, 4, "wf-drive-v4").await,
        ErrorKind::Conflict,
        "migrate_run",
    );
}

/// A retried start (the first committed, its answer was lost) answers as the first did:
/// `Created`, with an idempotency key too, and nothing changes. The run ID with another name,
/// input or drive job, or the drive job's ID under another run ID, is a reuse: `Conflict`.
pub async fn start_retry_answers_as_the_first_call(ctx: TestContext<dyn WorkflowStore>) {
    let (plain, plain_drive) = new_run("retried");
    let (mut keyed, keyed_drive) = new_run("retried");
    keyed.idempotency_key = Some("order-8".into());
    for (run, drive) in [(&plain, &plain_drive), (&keyed, &keyed_drive)] {
        let first = ctx.store.start_run(run.clone(), drive.clone()).await.expect("start_run");
        assert_eq!(first, Started::Created(run.id), "first start");
        let again = ctx.store.start_run(run.clone(), drive.clone()).await;
        assert_eq!(again.expect("retried start_run"), Started::Created(run.id), "retried start");
    }
    let lease = ctx.drive(plain.id).await;
    let (run_before, job_before) =
        (ctx.store.get_run(plain.id).await.unwrap(), ctx.job(lease.job_id).await);
    ctx.clock.advance(secs(5));
    let again = ctx.store.start_run(plain.clone(), plain_drive.clone()).await;
    assert_eq!(again.expect("start_run while driven"), Started::Created(plain.id));
    assert_eq!(ctx.store.get_run(plain.id).await.unwrap(), run_before, "the run is untouched");
    assert_eq!(ctx.job(lease.job_id).await, job_before, "the drive job is untouched");

    let mut other_input = plain.clone();
    other_input.input = b"{\"order\":8}".to_vec();
    let mut other_name = plain.clone();
    other_name.name = "renamed".into();
    let (_, other_drive) = new_run("retried");
    let (mut new_id, _) = new_run("retried");
    new_id.input = plain.input.clone();
    let reuses = [
        (other_input, plain_drive.clone(), "another input"),
        (other_name, plain_drive.clone(), "another name"),
        (plain.clone(), other_drive.clone(), "another drive job"),
        (new_id.clone(), plain_drive.clone(), "the drive job's ID under a new run"),
    ];
    for (run, drive, what) in reuses {
        assert_kind(ctx.store.start_run(run, drive).await, ErrorKind::Conflict, what);
    }
    assert!(ctx.store.get_run(new_id.id).await.unwrap().is_none(), "no run stored");
    assert!(ctx.store.get_job(other_drive.id).await.unwrap().is_none(), "no drive job stored");
    let runs = ctx.store.list_runs(&RunFilter::default(), &PageRequest::first(10)).await.unwrap();
    assert_eq!(runs.items.len(), 2, "only the two first starts stored runs");
}

/// A job-level cancel of a drive job whose run has not ended is the run's cancel: recorded on
/// the run as `cancel_run` records it (the first reason wins), a waiting drive job due at once,
/// and `Requested`; the drive job itself is neither cancelled nor flagged (a heartbeat reports
/// no cancel; the drive learns of it when it suspends). Once the run has ended, its drive job is
/// cancelled as any job.
pub async fn cancel_through_the_drive_job_cancels_the_run(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("cancel-by-job").await;
    let drive_job = ctx.store.get_run(run).await.unwrap().expect("run").drive_job;
    let cancel = ctx.store.request_cancel(drive_job).await.expect("request_cancel");
    assert_eq!(cancel, CancelResult::Requested, "a drive job's cancel is the run's request");
    assert_eq!(
        ctx.job(drive_job).await.state,
        JobState::Available,
        "the drive job is not cancelled"
    );
    let reason = ctx.store.get_run(run).await.unwrap().expect("run").cancel_requested;
    assert!(reason.is_some(), "the run has the cancel request");
    assert_eq!(ctx.store.cancel_run(run, "later").await.unwrap(), RunCancel::Requested);
    let kept = ctx.store.get_run(run).await.unwrap().expect("run").cancel_requested;
    assert_eq!(kept, reason, "the first reason wins");

    let lease = ctx.drive(run).await;
    let cancel = ctx.store.request_cancel(drive_job).await.expect("request_cancel");
    assert_eq!(cancel, CancelResult::Requested);
    let beat = ctx.store.heartbeat(&[lease], secs(30)).await.expect("heartbeat");
    assert_eq!(beat.renewed, vec![drive_job]);
    assert!(beat.cancel_requested.is_empty(), "no job-level cancel: {beat:?}");
    assert!(!ctx.job(drive_job).await.cancel_requested, "no job-level cancel flag");
    let outcome = ctx.wait_for(lease, run, "w", "never", "k").await;
    assert_eq!(outcome, SuspendOutcome::CancelRequested, "the drive learns of it at its suspend");

    // Ended: the drive job is any job again.
    ctx.store.end_run(lease, run, RunEnd::Cancelled("stop".into())).await.unwrap();
    let cancel = ctx.store.request_cancel(drive_job).await.expect("request_cancel");
    assert_eq!(cancel, CancelResult::Requested);
    let beat = ctx.store.heartbeat(&[lease], secs(30)).await.expect("heartbeat");
    assert_eq!(beat.cancel_requested, vec![drive_job], "a job-level cancel once the run ended");

    // A suspended run: its drive job is due at once.
    let waiting = ctx.start("cancel-by-job").await;
    let lease = ctx.drive(waiting).await;
    let suspend =
        Suspend { run: waiting, until: Some(ctx.clock.now() + secs(3600)), waits: vec![] };
    ctx.store.suspend_run(lease, suspend).await.unwrap();
    ctx.claim_none(DRIVE).await;
    let cancel = ctx.store.request_cancel(lease.job_id).await.expect("request_cancel");
    assert_eq!(cancel, CancelResult::Requested);
    assert!(ctx.store.get_run(waiting).await.unwrap().expect("run").cancel_requested.is_some());
    let again = ctx.drive(waiting).await;
    let snapshot = ctx.store.load_run(again, waiting).await.unwrap();
    assert!(snapshot.run.cancel_requested.is_some(), "the drive sees the request");
}
