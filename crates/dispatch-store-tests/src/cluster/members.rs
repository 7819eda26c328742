//! The worker registry: registration, heartbeats that renew the worker and its leases in one
//! call, draining, and the leader's sweep that marks silent workers gone and reclaims their jobs.

use std::collections::HashSet;

use dispatch_core::{
    ClusterStore, DEFAULT_LEADERSHIP, ErrorKind, FailureKind, HeartbeatReport, JobId, JobState,
    LeaseRef, WorkerId, WorkerState,
};

use dispatch_core::Clock as _;

use super::registration;
use crate::TestContext;
use crate::support::{assert_kind, job, lease, request, secs};

/// A worker's heartbeat timeout in these tests.
const TIMEOUT: std::time::Duration = secs(5);
/// Leases long enough never to expire in these tests: liveness comes from the registry.
const LONG: std::time::Duration = secs(3600);

/// Registration stores what the worker says, in store time; registering again replaces it,
/// revives a gone or draining worker and keeps the first start; deregistering removes it.
pub async fn register_list_and_deregister(ctx: TestContext<dyn ClusterStore>) {
    let t0 = ctx.clock.now();
    let first = registration(WorkerId::new());
    let record = ctx.store.register_worker(&first).await.expect("register");
    assert_eq!(record.registration, first);
    assert_eq!((record.state, record.started_at, record.last_seen), (WorkerState::Active, t0, t0));

    ctx.clock.advance(secs(3));
    let second = ctx.register().await;
    let mut changed = registration(first.id);
    changed.concurrency = 64;
    changed.queues = vec!["reports".to_owned()];
    ctx.store.drain_worker(first.id).await.expect("drain");
    let again = ctx.store.register_worker(&changed).await.expect("register again");
    assert_eq!(again.registration, changed, "the registration is replaced");
    assert_eq!(again.state, WorkerState::Active, "registering again revives a drained worker");
    assert_eq!((again.started_at, again.last_seen), (t0, t0 + secs(3)), "the first start kept");

    let listed = ctx.store.list_workers().await.expect("list");
    let mut expected = vec![first.id, second];
    expected.sort();
    assert_eq!(listed.iter().map(|w| w.registration.id).collect::<Vec<_>>(), expected);
    assert_eq!(listed.iter().find(|w| w.registration.id == first.id), Some(&again));

    ctx.store.deregister_worker(first.id).await.expect("deregister");
    ctx.store.deregister_worker(WorkerId::new()).await.expect("an unknown worker is no error");
    let listed = ctx.store.list_workers().await.expect("list");
    assert_eq!(listed.iter().map(|w| w.registration.id).collect::<Vec<_>>(), vec![second]);
}

/// One heartbeat call renews the worker (last seen now) and every lease it names, reporting the
/// leases as a plain heartbeat does.
pub async fn heartbeat_renews_the_worker_and_its_leases(ctx: TestContext<dyn ClusterStore>) {
    let worker = ctx.register().await;
    let jobs = ctx.jobs();
    jobs.enqueue(vec![job("beat"), job("beat"), job("beat")]).await;
    let mut claim = request(&["beat"], 3);
    claim.worker = worker;
    let claimed = jobs.claim_with(&claim).await;
    assert_eq!(claimed.len(), 3);
    let done = jobs.finish(lease(&claimed[2]), dispatch_core::Outcome::Complete).await;
    assert!(matches!(done, dispatch_core::FinishResult::Applied { .. }));

    ctx.clock.advance(secs(20));
    let leases: Vec<LeaseRef> = claimed.iter().map(lease).collect();
    let beat = ctx.store.heartbeat_worker(worker, &leases, secs(40)).await.expect("heartbeat");
    assert_eq!(beat.state, WorkerState::Active);
    let report = HeartbeatReport {
        renewed: vec![claimed[0].job.id, claimed[1].job.id],
        lost: vec![claimed[2].job.id],
        ..HeartbeatReport::default()
    };
    assert_eq!(sorted(beat.leases), sorted(report));
    let now = ctx.clock.now();
    for c in &claimed[..2] {
        let job = jobs.job(c.job.id).await;
        assert_eq!(job.lease.map(|l| l.expires_at), Some(now + secs(40)), "lease renewed");
    }
    let record = worker_record(&ctx, worker).await;
    assert_eq!(record.last_seen, now, "the worker renewed in the same call");

    let empty = ctx.store.heartbeat_worker(worker, &[], secs(40)).await.expect("heartbeat");
    assert_eq!(empty.leases, HeartbeatReport::default(), "a worker with no leases heartbeats too");
}

/// A heartbeat of an unknown worker answers gone and registers nothing.
pub async fn heartbeat_of_an_unknown_worker_answers_gone(ctx: TestContext<dyn ClusterStore>) {
    let stranger = WorkerId::new();
    let beat = ctx.store.heartbeat_worker(stranger, &[], secs(30)).await.expect("heartbeat");
    assert_eq!(beat.state, WorkerState::Gone);
    assert!(ctx.store.list_workers().await.expect("list").is_empty(), "nothing registered");
}

/// A drained worker learns it at its next heartbeat and stays draining; draining an unknown
/// worker is `NotFound`.
pub async fn drain_is_told_at_the_next_heartbeat(ctx: TestContext<dyn ClusterStore>) {
    let worker = ctx.register().await;
    ctx.store.drain_worker(worker).await.expect("drain");
    for _ in 0..2 {
        let beat = ctx.store.heartbeat_worker(worker, &[], secs(30)).await.expect("heartbeat");
        assert_eq!(beat.state, WorkerState::Draining);
    }
    assert_eq!(worker_record(&ctx, worker).await.state, WorkerState::Draining);
    assert_kind(
        ctx.store.drain_worker(WorkerId::new()).await,
        ErrorKind::NotFound,
        "unknown worker",
    );
}

/// The leader's sweep marks a worker silent past its timeout gone and reclaims its running jobs
/// in the same call, leases long or not: attempts stay spent, a `WorkerLost` error is recorded,
/// a job on its last attempt dies with a DLQ entry, a cancel-requested one is cancelled. Live
/// workers and their jobs are untouched; the gone worker's heartbeat answers gone and its leases
/// lost.
pub async fn sweep_takes_over_a_silent_workers_jobs(ctx: TestContext<dyn ClusterStore>) {
    let (silent, alive) = (ctx.register().await, ctx.register().await);
    let jobs = ctx.jobs();
    let mut last = job("work");
    last.max_attempts = 1;
    let ids = jobs.enqueue(vec![job("work"), job("work"), last, job("work")]).await;
    let mut claim = request(&["work"], 3);
    (claim.worker, claim.lease_ttl) = (silent, LONG);
    let lost = jobs.claim_with(&claim).await;
    assert_eq!(lost.len(), 3);
    let (mut keep, cancelled) = (request(&["work"], 1), lost[1].job.id);
    (keep.worker, keep.lease_ttl) = (alive, LONG);
    let kept = jobs.claim_with(&keep).await;
    assert_eq!(kept[0].job.id, ids[3]);
    ctx.store.request_job_cancel(cancelled).await.expect("cancel request");

    ctx.clock.advance(secs(4));
    let beat = ctx.store.heartbeat_worker(alive, &[lease(&kept[0])], LONG).await.expect("beat");
    assert_eq!(beat.leases.renewed, vec![ids[3]]);
    let term = leader(&ctx).await;
    let early = ctx.store.sweep_workers(&term, TIMEOUT, 100).await.expect("sweep");
    assert!(early.gone.is_empty() && early.rescue.is_empty(), "within the timeout: {early:?}");

    ctx.clock.advance(secs(2));
    let term = leader(&ctx).await;
    let sweep = ctx.store.sweep_workers(&term, TIMEOUT, 100).await.expect("sweep");
    assert_eq!(sweep.gone, vec![silent], "only the silent worker");
    assert_eq!(sweep.rescue.rescued, vec![ids[0]]);
    assert_eq!(sweep.rescue.cancelled, vec![cancelled]);
    let dead = &sweep.rescue.promoted;
    assert_eq!(dead.iter().map(|&(id, _)| id).collect::<Vec<_>>(), vec![ids[2]]);

    let rescued = jobs.job(ids[0]).await;
    assert_eq!((rescued.state, rescued.attempt, rescued.lease), (JobState::Available, 1, None));
    let error = rescued.errors.last().expect("the takeover is recorded");
    assert_eq!(error.kind, FailureKind::WorkerLost);
    assert!(error.message.contains(&silent.to_string()), "names the worker: {}", error.message);
    assert_eq!(jobs.job(cancelled).await.state, JobState::Cancelled);
    let died = jobs.job(ids[2]).await;
    assert_eq!((died.state, died.dlq_id), (JobState::Dead, Some(dead[0].1)));
    assert_eq!(
        jobs.dlq(dead[0].1).await.errors.last().map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );
    assert_eq!(jobs.job(ids[3]).await.state, JobState::Running, "the live worker keeps its job");

    assert_eq!(worker_record(&ctx, silent).await.state, WorkerState::Gone);
    assert_eq!(worker_record(&ctx, alive).await.state, WorkerState::Active);
    let leases: Vec<LeaseRef> = lost.iter().map(lease).collect();
    let late = ctx.store.heartbeat_worker(silent, &leases, LONG).await.expect("late beat");
    assert_eq!(late.state, WorkerState::Gone, "a gone worker is not revived by a heartbeat");
    assert_eq!(sorted(late.leases).lost, sorted_ids(lost.iter().map(|c| c.job.id)));
    let claimed_again = jobs.claim(&["work"], 10).await;
    assert_eq!(claimed_again.iter().map(|c| c.job.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert_eq!(claimed_again[0].job.attempt, 2, "the lost attempt stayed spent");
}

/// A sweep reclaims at most `limit` jobs; the next sweep goes on with the worker already gone.
pub async fn sweep_reclaims_in_bounded_batches(ctx: TestContext<dyn ClusterStore>) {
    let silent = ctx.register().await;
    let jobs = ctx.jobs();
    let ids = jobs.enqueue((0..5).map(|_| job("batch")).collect()).await;
    let mut claim = request(&["batch"], 5);
    (claim.worker, claim.lease_ttl) = (silent, LONG);
    assert_eq!(jobs.claim_with(&claim).await.len(), 5);
    ctx.clock.advance(secs(6));
    let mut seen = HashSet::new();
    let mut sweeps = 0;
    loop {
        let term = leader(&ctx).await;
        let sweep = ctx.store.sweep_workers(&term, TIMEOUT, 2).await.expect("sweep");
        assert!(sweep.rescue.rescued.len() <= 2, "at most the limit: {sweep:?}");
        if sweeps == 0 {
            assert_eq!(sweep.gone, vec![silent]);
        } else {
            assert!(sweep.gone.is_empty(), "marked gone once");
        }
        sweeps += 1;
        if sweep.rescue.rescued.is_empty() {
            break;
        }
        seen.extend(sweep.rescue.rescued);
        assert!(sweeps < 10, "sweeps must finish");
    }
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(sweeps, 4, "2 + 2 + 1, then an empty sweep");
}

/// The current leadership for the sweeps of these tests (acquired or renewed).
async fn leader(ctx: &TestContext<dyn ClusterStore>) -> dispatch_core::Leader {
    static HOLDER: std::sync::LazyLock<WorkerId> = std::sync::LazyLock::new(WorkerId::new);
    let holder = *HOLDER;
    ctx.store
        .acquire_leadership(DEFAULT_LEADERSHIP, holder, secs(30))
        .await
        .expect("acquire")
        .expect("the tests' only contender leads")
}

async fn worker_record(
    ctx: &TestContext<dyn ClusterStore>,
    id: WorkerId,
) -> dispatch_core::WorkerRecord {
    let workers = ctx.store.list_workers().await.expect("list");
    workers.into_iter().find(|w| w.registration.id == id).expect("registered")
}

fn sorted(mut report: HeartbeatReport) -> HeartbeatReport {
    report.renewed.sort();
    report.lost.sort();
    report.cancel_requested.sort();
    report
}

fn sorted_ids(ids: impl Iterator<Item = JobId>) -> Vec<JobId> {
    let mut ids: Vec<JobId> = ids.collect();
    ids.sort();
    ids
}
