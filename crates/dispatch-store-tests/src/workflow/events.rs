//! Correlated events: one event one waiter, broadcasts, kept events and their expiry, scope,
//! and waits that time out.

use std::collections::HashSet;

use dispatch_core::{
    EventId, JobState, NewEvent, Scope, Suspend, SuspendOutcome, WaitResolution, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::{DRIVE, wait_on};
use crate::TestContext;
use crate::support::secs;

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
    ctx.store.suspend_run(lease, Suspend { run, until: None, waits }).await.unwrap();
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
