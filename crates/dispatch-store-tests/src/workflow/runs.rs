//! Starting runs (idempotent by key, retried starts, reused IDs and held unique keys), the
//! payload limit, listing, ending runs, and a dying drive job failing its run (an ended run
//! stays as it ended).

use dispatch_core::{
    ErrorKind, EventId, EventWait, FinishResult, JobState, NewCheckpoint, NewEvent, NewJob,
    Outcome, PageRequest, RunEnd, RunFilter, RunId, RunState, Scope, Started, Suspend,
    SuspendOutcome, Timestamp, UniqueKey, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::{DRIVE, new_run};
use crate::TestContext;
use crate::support::{PAST_TTL, assert_kind, failure, retry, secs};

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
        .suspend_run(
            lease,
            Suspend { run: failed, until: None, waits: vec![wait], waiting: vec![] },
        )
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

/// A start whose drive job's unique key is held by another job is a `Conflict` (a start is never
/// a duplicate): neither the run nor its drive job is stored.
pub async fn start_with_a_held_drive_unique_key_is_a_conflict(ctx: TestContext<dyn WorkflowStore>) {
    let only_one = || Some(UniqueKey { key: "only-one".into(), window: None });
    let mut holder = NewJob::new(DRIVE, b"{}".to_vec());
    holder.unique = only_one();
    ctx.enqueue_one(holder).await;
    let (run, mut drive) = new_run("keyed");
    drive.unique = only_one();
    let (id, drive_id) = (run.id, drive.id);
    assert_kind(ctx.store.start_run(run, drive).await, ErrorKind::Conflict, "start_run");
    assert!(ctx.store.get_run(id).await.unwrap().is_none(), "no run stored");
    assert!(ctx.store.get_job(drive_id).await.unwrap().is_none(), "no drive job stored");
}

/// A drive job that dies by a retry on its last attempt (its run suspended on a wait and claimed
/// again at the wait's deadline) fails the run in the same operation, with the retry's error and
/// the finish time, and the run's waits go with it: a later event is kept, not delivered.
pub async fn drive_job_out_of_retries_fails_its_run_and_drops_its_waits(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let (run, mut drive) = new_run("fragile");
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive(id).await;
    let outcome = ctx.wait_for(lease, id, "w", "paid", "o-1").await;
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    ctx.clock.advance(secs(60));
    let lease = ctx.drive(id).await;
    assert_eq!(ctx.run_state(id).await, RunState::Suspended, "not loaded yet");
    let result = ctx.finish(lease, retry("out of luck", secs(1))).await;
    assert!(matches!(result, FinishResult::Applied { state: JobState::Dead, .. }), "{result:?}");
    let failed = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.error.as_deref()), (RunState::Failed, Some("out of luck")));
    assert_eq!(failed.finished_at, Some(ctx.clock.now()));
    let published = ctx.publish("paid", "o-1", "x", false).await;
    assert!(published.kept && published.delivered_to.is_empty(), "waits dropped: {published:?}");
}

/// A run that has ended stays as it ended when its drive job dies afterwards: a fail after
/// `end_run`, or a crash after `end_run` whose expired lease is rescued on the last attempt,
/// changes neither its state, output, error nor finish time.
pub async fn an_ended_run_stays_as_it_ended_when_its_drive_job_dies_later(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let (run, mut drive) = new_run("finished");
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive(id).await;
    ctx.store.end_run(lease, id, RunEnd::Completed(b"ok".to_vec())).await.unwrap();
    let ended_at = Some(ctx.clock.now());
    ctx.clock.advance(secs(1));
    let result = ctx.finish(lease, Outcome::Fail { failure: failure("after the end") }).await;
    assert!(matches!(result, FinishResult::Applied { state: JobState::Dead, .. }), "{result:?}");
    let run = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.output, run.error, run.finished_at),
        (RunState::Completed, Some(b"ok".to_vec()), None, ended_at)
    );

    // The same through rescue: the worker crashed between ending the run and finishing the job.
    let (run, mut drive) = new_run("crashed");
    drive.max_attempts = 1;
    let id = ctx.store.start_run(run, drive).await.unwrap().id();
    let lease = ctx.drive(id).await;
    ctx.store.end_run(lease, id, RunEnd::Failed("card declined".into())).await.unwrap();
    let ended_at = Some(ctx.clock.now());
    ctx.clock.advance(PAST_TTL);
    assert_eq!(ctx.store.rescue_expired(10).await.unwrap().promoted.len(), 1);
    let run = ctx.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.error.as_deref(), run.finished_at),
        (RunState::Failed, Some("card declined"), ended_at)
    );
}
