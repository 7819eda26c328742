//! Correlated events: one event one waiter, broadcasts, kept events and their expiry, scope,
//! waits that time out, deliveries to a running drive, and the wake-ups of a start and a
//! delivery.

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::{
    EventId, EventWait, JobState, NewEvent, RunEnd, Scope, Started, Suspend, SuspendOutcome,
    WaitResolution, WakeupStream, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::{DRIVE, new_run, wait_on};
use crate::TestContext;
use crate::support::{job_in, lease, next_for, request_in, secs};

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

/// A broadcast reaching two waits of one run (two branches waiting for the same event) writes
/// both checkpoints and lists the run once.
pub async fn broadcast_lists_each_run_once(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("twice").await;
    let lease = ctx.drive(run).await;
    let waits = vec![wait_on(&ctx, "a", "ev"), wait_on(&ctx, "b", "ev")];
    ctx.store
        .suspend_run(lease, Suspend { run, until: None, waits, waiting: vec![] })
        .await
        .unwrap();
    let published = ctx.publish("ev", "k", "1", true).await;
    assert_eq!(published.delivered_to, [run]);
    let mut keys = ctx.checkpoint_keys(run).await;
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
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

/// A delivery to a run whose drive job is running (the run was suspended, its wait's deadline
/// came and a drive claimed it) writes the wait's checkpoint and leaves the job and its lease
/// alone; the drive finds the event through `resolve_wait` and goes on under its lease.
pub async fn an_event_for_a_running_drive_writes_its_checkpoint_and_leaves_the_job_alone(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let run = ctx.start("busy").await;
    let lease = ctx.drive(run).await;
    let outcome = ctx.wait_for(lease, run, "w", "reply", "r").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    ctx.clock.advance(secs(60));
    let lease = ctx.drive(run).await;
    let before = ctx.job(lease.job_id).await;
    let published = ctx.publish("reply", "r", "yes", false).await;
    assert_eq!((published.delivered_to, published.kept), (vec![run], false));
    assert_eq!(ctx.job(lease.job_id).await, before, "the running drive job is untouched");
    let resolved = ctx.store.resolve_wait(lease, run, "w").await.unwrap();
    assert_eq!(resolved, WaitResolution::Delivered(b"yes".to_vec()));
    ctx.store.end_run(lease, run, RunEnd::Completed(vec![])).await.expect("the lease holds");
}

/// Scopes match part by part: a run scoped to an app with no tenant receives only events of
/// that app with no tenant, not those of a tenant of the app, of the tenant alone, or unscoped.
pub async fn an_unset_scope_part_matches_only_an_unset_part(ctx: TestContext<dyn WorkflowStore>) {
    let app_only = Scope { app: Some("shop".into()), tenant: None };
    let run = ctx.start_in("scoped", app_only.clone()).await;
    let lease = ctx.drive(run).await;
    ctx.wait_for(lease, run, "w", "paid", "o").await;
    let tenant_only = Scope { app: None, tenant: Some("acme".into()) };
    for other in [Scope::new("shop", "acme"), tenant_only, Scope::default()] {
        let published = ctx.publish_in("paid", "o", "x", false, other.clone()).await;
        assert!(published.kept, "an event of {other:?} reached an app-only wait: {published:?}");
    }
    let published = ctx.publish_in("paid", "o", "y", false, app_only).await;
    assert_eq!(published.delivered_to, [run]);
}

/// An event of `name` and `corr`, kept for `keep_for`, unscoped.
fn event(name: &str, corr: &str, keep_for: Duration) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        name: name.to_owned(),
        correlation: corr.to_owned(),
        payload: format!("{name}/{corr}").into_bytes(),
        scope: Scope::default(),
        broadcast: false,
        keep_for,
    }
}

/// A kept event is kept while the store's clock is before its publish time plus `keep_for`: at
/// that instant it has expired (a later event is still taken), and a `keep_for` of zero keeps
/// nothing (`kept` is false).
pub async fn a_kept_event_expires_at_the_end_of_keep_for(ctx: TestContext<dyn WorkflowStore>) {
    for corr in ["a", "b", "c"] {
        assert!(ctx.store.publish_event(event("e", corr, secs(5))).await.unwrap().kept);
    }
    ctx.clock.advance(secs(5));
    assert!(ctx.store.publish_event(event("e", "d", secs(3600))).await.unwrap().kept);
    let run = ctx.start("late").await;
    let lease = ctx.drive(run).await;
    let wait = |corr: &str| EventWait {
        key: corr.to_owned(),
        name: "e".to_owned(),
        correlation: corr.to_owned(),
        deadline: ctx.clock.now() + secs(60),
    };
    let waits = ["a", "b", "c", "d"].map(wait).to_vec();
    let outcome =
        ctx.store.suspend_run(lease, Suspend { run, until: None, waits, waiting: vec![] }).await;
    assert_eq!(outcome.expect("suspend_run"), SuspendOutcome::Delivered, "`d` is kept");
    assert_eq!(ctx.checkpoint_keys(run).await, ["d"], "`a`, `b` and `c` expired");

    let published = ctx.store.publish_event(event("z", "k", Duration::ZERO)).await.unwrap();
    assert!(!published.kept && published.delivered_to.is_empty(), "{published:?}");
    let outcome = ctx.wait_for(lease, run, "z", "z", "k").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "nothing kept: {outcome:?}");
}

/// Enqueue a job in a queue of its own and read `stream` up to a wake-up for it: a store's
/// The queue of the marker jobs [`settle`] enqueues.
const MARKER: &str = "wf-wake-marker";

/// wake-ups arrive in order, so every wake-up of the calls before has been read then.
async fn settle(ctx: &TestContext<dyn WorkflowStore>, stream: &mut WakeupStream) {
    ctx.enqueue_one(job_in("wake-marker", MARKER)).await;
    next_for(stream, MARKER).await;
}

/// When the store pushes (`wakeups()` answers `Some`), a start wakes its drive job's queue, and
/// so does a delivery to a suspended run (its drive job due at once). A store that does not
/// push has nothing to check here: its workers poll.
pub async fn a_start_and_a_delivery_wake_the_drive_queue(ctx: TestContext<dyn WorkflowStore>) {
    let Some(mut wakeups) = ctx.store.wakeups() else {
        return;
    };
    let queue = "workflows";
    settle(&ctx, &mut wakeups).await;
    let (run, mut drive) = new_run("woken");
    drive.queue = queue.to_owned();
    let id = run.id;
    assert_eq!(ctx.store.start_run(run, drive).await.expect("start_run"), Started::Created(id));
    next_for(&mut wakeups, queue).await;

    let claimed = ctx.claim_with(&request_in(&[queue], &[DRIVE], 1)).await;
    assert_eq!(claimed.len(), 1, "the drive job is due");
    let lease = lease(&claimed[0]);
    let outcome = ctx.wait_for(lease, id, "w", "go", "now").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    // Read whatever the suspend woke: the next wake-up for the queue is the delivery's.
    settle(&ctx, &mut wakeups).await;
    assert_eq!(ctx.publish("go", "now", "x", false).await.delivered_to, [id]);
    next_for(&mut wakeups, queue).await;
    let job = ctx.job(lease.job_id).await;
    assert_eq!((job.state, job.run_at), (JobState::Available, ctx.clock.now()), "due at once");
}
