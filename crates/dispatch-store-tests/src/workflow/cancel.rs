//! Run-level operations outside a drive: cancel (of the run or through its drive job), rewind
//! from a checkpoint, and migration to another version.

use dispatch_core::{
    DRIVE_JOB_CANCEL_REASON, ErrorKind, FinishResult, JobCancel, JobState, NewCheckpoint, Outcome,
    RunCancel, RunEnd, RunId, RunState, Suspend, SuspendOutcome, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::DRIVE;
use crate::TestContext;
use crate::support::{assert_kind, secs};

/// A cancel of a suspended run records its reason (the first one) and makes its drive job due
/// at once; the next drive sees the request.
pub async fn cancel_wakes_a_suspended_run(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("waiting").await;
    let lease = ctx.drive(run).await;
    let suspend =
        Suspend { run, until: Some(ctx.clock.now() + secs(3600)), waits: vec![], waiting: vec![] };
    ctx.store.suspend_run(lease, suspend).await.unwrap();
    ctx.claim_none(DRIVE).await;
    assert_eq!(
        ctx.store.request_run_cancel(run, "customer asked").await.unwrap(),
        RunCancel::Requested
    );
    assert_eq!(ctx.store.request_run_cancel(run, "again").await.unwrap(), RunCancel::Requested);
    let stored = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!(stored.cancel_requested.as_deref(), Some("customer asked"), "the first reason");
    let again = ctx.drive(run).await;
    let snapshot = ctx.store.load_snapshot(again, run).await.unwrap();
    assert_eq!(snapshot.run.cancel_requested.as_deref(), Some("customer asked"));
    assert_kind(
        ctx.store.request_run_cancel(RunId::new(), "x").await,
        ErrorKind::NotFound,
        "request_run_cancel",
    );
}

/// A running drive learns of a cancel when it tries to suspend: nothing is suspended or
/// registered and its lease still holds; once the run ends, a cancel is `AlreadyFinal`.
pub async fn cancel_of_a_running_drive_refuses_its_suspend(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("busy").await;
    let lease = ctx.drive(run).await;
    assert_eq!(ctx.store.request_run_cancel(run, "stop").await.unwrap(), RunCancel::Requested);
    let outcome = ctx.wait_for(lease, run, "w", "never", "k").await;
    assert_eq!(outcome, SuspendOutcome::CancelRequested);
    assert_eq!(ctx.job(lease.job_id).await.state, JobState::Running, "the drive goes on");
    assert_eq!(ctx.run_state(run).await, RunState::Running);
    assert!(ctx.publish("never", "k", "x", false).await.kept, "no wait was registered");
    ctx.store.end_run(lease, run, RunEnd::Cancelled("stop".into())).await.unwrap();
    let ended = ctx.store.request_run_cancel(run, "late").await.unwrap();
    assert_eq!(ended, RunCancel::AlreadyFinal(RunState::Cancelled));
}

/// A job-level cancel of a drive job whose run has not ended is the run's cancel: recorded on
/// the run as `request_run_cancel` records it (the first reason wins), a waiting drive job due at once,
/// and `Requested`; the drive job itself is neither cancelled nor flagged (a heartbeat reports
/// no cancel; the drive learns of it when it suspends). Once the run has ended, its drive job is
/// cancelled as any job.
pub async fn cancel_through_the_drive_job_cancels_the_run(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("cancel-by-job").await;
    let drive_job = ctx.store.get_run(run).await.unwrap().expect("run").drive_job;
    let cancel = ctx.store.request_job_cancel(drive_job).await.expect("request_job_cancel");
    assert_eq!(cancel, JobCancel::Requested, "a drive job's cancel is the run's request");
    assert_eq!(
        ctx.job(drive_job).await.state,
        JobState::Available,
        "the drive job is not cancelled"
    );
    let reason = ctx.store.get_run(run).await.unwrap().expect("run").cancel_requested;
    assert!(reason.is_some(), "the run has the cancel request");
    assert_eq!(ctx.store.request_run_cancel(run, "later").await.unwrap(), RunCancel::Requested);
    let kept = ctx.store.get_run(run).await.unwrap().expect("run").cancel_requested;
    assert_eq!(kept, reason, "the first reason wins");

    let lease = ctx.drive(run).await;
    let cancel = ctx.store.request_job_cancel(drive_job).await.expect("request_job_cancel");
    assert_eq!(cancel, JobCancel::Requested);
    let beat = ctx.store.heartbeat(&[lease], secs(30)).await.expect("heartbeat");
    assert_eq!(beat.renewed, vec![drive_job]);
    assert!(beat.cancel_requested.is_empty(), "no job-level cancel: {beat:?}");
    assert!(!ctx.job(drive_job).await.cancel_requested, "no job-level cancel flag");
    let outcome = ctx.wait_for(lease, run, "w", "never", "k").await;
    assert_eq!(outcome, SuspendOutcome::CancelRequested, "the drive learns of it at its suspend");

    // Ended: the drive job is any job again.
    ctx.store.end_run(lease, run, RunEnd::Cancelled("stop".into())).await.unwrap();
    let cancel = ctx.store.request_job_cancel(drive_job).await.expect("request_job_cancel");
    assert_eq!(cancel, JobCancel::Requested);
    let beat = ctx.store.heartbeat(&[lease], secs(30)).await.expect("heartbeat");
    assert_eq!(beat.cancel_requested, vec![drive_job], "a job-level cancel once the run ended");

    // A suspended run: its drive job is due at once.
    let waiting = ctx.start("cancel-by-job").await;
    let lease = ctx.drive(waiting).await;
    let suspend = Suspend {
        run: waiting,
        until: Some(ctx.clock.now() + secs(3600)),
        waits: vec![],
        waiting: vec![],
    };
    ctx.store.suspend_run(lease, suspend).await.unwrap();
    ctx.claim_none(DRIVE).await;
    let cancel = ctx.store.request_job_cancel(lease.job_id).await.expect("request_job_cancel");
    assert_eq!(cancel, JobCancel::Requested);
    assert!(ctx.store.get_run(waiting).await.unwrap().expect("run").cancel_requested.is_some());
    let again = ctx.drive(waiting).await;
    let snapshot = ctx.store.load_snapshot(again, waiting).await.unwrap();
    assert!(snapshot.run.cancel_requested.is_some(), "the drive sees the request");
}

/// Rewind to a checkpoint: later checkpoints dropped, the run running again (output, error and
/// finish cleared), its drive job due at once with attempts reset. Unknown key or run:
/// `NotFound`; while a drive holds the run: `Conflict`.
pub async fn rewind_reruns_from_a_checkpoint(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("rewind").await;
    let lease = ctx.drive(run).await;
    let write = |key: &str| NewCheckpoint::new(key, key.as_bytes().to_vec());
    ctx.store.save_checkpoints(lease, run, vec![write("a"), write("b"), write("c")]).await.unwrap();
    assert_kind(ctx.store.rewind_run(run, "b").await, ErrorKind::Conflict, "rewind_run");
    ctx.store.end_run(lease, run, RunEnd::Completed(b"1".to_vec())).await.unwrap();
    assert!(matches!(ctx.finish(lease, Outcome::Complete).await, FinishResult::Applied { .. }));

    assert_kind(ctx.store.rewind_run(run, "zz").await, ErrorKind::NotFound, "rewind_run");
    assert_kind(ctx.store.rewind_run(RunId::new(), "a").await, ErrorKind::NotFound, "rewind_run");
    ctx.store.rewind_run(run, "b").await.unwrap();
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

/// A job-level cancel of a running drive job (the run's first cancel request) is the run's
/// cancel, with reason [`DRIVE_JOB_CANCEL_REASON`]: the drive's next suspend (a durable sleep
/// here) answers `CancelRequested`, and the job, neither cancelled nor flagged, is released
/// as available (not cancelled) and later completes as any drive job.
pub async fn suspend_after_a_cancel_of_the_drive_job_answers_cancel_requested(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let run = ctx.start("cancel-running").await;
    let lease = ctx.drive(run).await;
    let cancel = ctx.store.request_job_cancel(lease.job_id).await.expect("request_job_cancel");
    assert_eq!(cancel, JobCancel::Requested);
    let reason = ctx.store.get_run(run).await.unwrap().expect("run").cancel_requested;
    assert_eq!(reason.as_deref(), Some(DRIVE_JOB_CANCEL_REASON));
    let until = Some(ctx.clock.now() + secs(10));
    let outcome =
        ctx.store.suspend_run(lease, Suspend { run, until, waits: vec![], waiting: vec![] }).await;
    assert_eq!(outcome.expect("suspend_run"), SuspendOutcome::CancelRequested);
    let job = ctx.job(lease.job_id).await;
    assert_eq!((job.state, job.cancel_requested), (JobState::Running, false));
    assert_eq!(ctx.run_state(run).await, RunState::Running);
    let released = ctx.finish(lease, Outcome::Release).await;
    assert!(
        matches!(released, FinishResult::Applied { state: JobState::Available, .. }),
        "a release of the unflagged drive job: {released:?}"
    );
    let lease = ctx.drive(run).await;
    let done = ctx.finish(lease, Outcome::Complete).await;
    assert!(matches!(done, FinishResult::Applied { state: JobState::Completed, .. }), "{done:?}");
}
