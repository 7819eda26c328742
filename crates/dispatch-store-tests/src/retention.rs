//! Tests of [`RetentionStore`]: a prune removes exactly what the policy says, oldest first, in
//! bounded batches, under the leader's term, and never what the rules of
//! [`dispatch_core::retention`] keep (available and running jobs, a unique key's window, the
//! drive job of a stored run, a run with a live parent). The store is reached as the runtime
//! reaches it, through [`JobStore::as_retention_store`](dispatch_core::JobStore::as_retention_store).

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClusterStore, DEFAULT_LEADERSHIP, Enqueued, ErrorKind, EventId, JobId, JobState, LeaseRef,
    NewCheckpoint, NewEvent, NewJob, NewRun, Outcome, PruneReport, RetentionPolicy, RetentionStore,
    RunEnd, RunId, RunState, Scope, Started, Suspend, SuspendOutcome, UniqueKey, WorkerId,
    WorkerState, WorkflowStore,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{assert_kind, failure, job, lease, request, secs};

const HOUR: Duration = secs(3600);
const DAY: Duration = secs(24 * 3600);
/// A batch larger than anything these tests store.
const ALL: usize = 1000;
/// The drive jobs of this module's runs.
const DRIVE: &str = "retention-drive";

impl TestContext<dyn WorkflowStore> {
    fn retention(&self) -> Arc<dyn RetentionStore> {
        let jobs: Arc<dyn dispatch_core::JobStore> = self.store.clone();
        jobs.as_retention_store().expect("the store prunes (as_retention_store answers Some)")
    }

    fn cluster(&self) -> Arc<dyn ClusterStore> {
        let jobs: Arc<dyn dispatch_core::JobStore> = self.store.clone();
        jobs.as_cluster_store().expect("the store keeps a cluster")
    }

    /// Take the leadership now (a fresh term) and prune under it.
    async fn prune(&self, policy: &RetentionPolicy, limit: usize) -> PruneReport {
        let term = self.cluster().take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
        let term = term.expect("take_leadership");
        self.retention().prune(&term, policy, limit).await.expect("prune")
    }

    /// Prune until a call removes nothing; everything removed.
    async fn prune_all(&self, policy: &RetentionPolicy) -> PruneReport {
        let mut total = PruneReport::default();
        loop {
            let report = self.prune(policy, ALL).await;
            if report.total() == 0 {
                return total;
            }
            total.absorb(&report);
        }
    }

    async fn exists(&self, id: JobId) -> bool {
        self.store.get_job(id).await.expect("get_job").is_some()
    }

    /// Enqueue `new`, claim it and end its attempt with `outcome`.
    async fn finished(&self, new: NewJob, outcome: Outcome) -> JobId {
        let name = new.name.clone();
        let id = self.enqueue_one(new).await;
        let claimed = self.claim_one(&name).await;
        assert_eq!(claimed.job.id, id);
        self.finish(lease(&claimed), outcome).await;
        id
    }

    /// Start a run (child of `parent`, when given); its ID.
    async fn start_child(&self, parent: Option<RunId>) -> RunId {
        let run = NewRun {
            id: RunId::new(),
            name: "kept".to_owned(),
            version: 1,
            input: b"{}".to_vec(),
            scope: Scope::default(),
            idempotency_key: None,
            parent,
        };
        let drive = NewJob::new(DRIVE, run.id.to_string().into_bytes());
        let started = self.store.start_run(run, drive).await.expect("start_run");
        assert!(matches!(started, Started::Created(_)), "{started:?}");
        started.id()
    }

    /// Claim the drive job of `run`, the only one due.
    async fn drive_retained(&self, run: RunId) -> LeaseRef {
        let claimed = self.claim_one(DRIVE).await;
        let stored = self.store.get_run(run).await.expect("get_run").expect("run");
        assert_eq!(claimed.job.id, stored.drive_job, "claimed the drive job of {run}");
        lease(&claimed)
    }

    /// Drive `run` once: a checkpoint, then end it completed and complete its drive job.
    async fn complete_run(&self, run: RunId) {
        let lease = self.drive_retained(run).await;
        let step = NewCheckpoint { key: "step".to_owned(), data: b"1".to_vec() };
        self.store.save_checkpoints(lease, run, vec![step]).await.expect("save_checkpoints");
        let end = RunEnd::Completed(b"done".to_vec());
        self.store.end_run(lease, run, end).await.expect("end_run");
        self.finish(lease, Outcome::Complete).await;
    }
}

/// Completed jobs go after 24 h, cancelled after 7 d, dead jobs with their DLQ entries after
/// 30 d (the defaults); available, running and scheduled jobs stay whatever their age.
pub async fn prunes_finished_jobs_by_state_and_age(ctx: TestContext<dyn WorkflowStore>) {
    let policy = RetentionPolicy::default();
    let completed = ctx.finished(job("old"), Outcome::Complete).await;
    let cancelled = ctx.enqueue_one(job("cancelled")).await;
    ctx.store.request_job_cancel(cancelled).await.expect("cancel");
    let mut dying = job("dying");
    dying.max_attempts = 1;
    let dead = ctx.finished(dying, Outcome::Fail { failure: failure("boom") }).await;
    let dlq = ctx.store.get_job(dead).await.expect("get").expect("dead job").dlq_id;
    let dlq = dlq.expect("a dead job has a DLQ entry");
    let running = ctx.enqueue_one(job("running")).await;
    let mut claim = request(&["running"], 1);
    claim.lease_ttl = 400 * DAY;
    assert_eq!(ctx.claim_with(&claim).await.len(), 1);
    let available = ctx.enqueue_one(job("waiting")).await;
    let mut later = job("later");
    later.run_at = dispatch_core::RunAt::After(400 * DAY);
    let scheduled = ctx.enqueue_one(later).await;
    let kept = [running, available, scheduled];

    ctx.clock.advance(23 * HOUR);
    assert_eq!(ctx.prune_all(&policy).await.jobs, 0, "nothing is 24 h old yet");
    ctx.clock.advance(2 * HOUR);
    let report = ctx.prune_all(&policy).await;
    assert_eq!((report.jobs, report.dlq), (1, 0), "{report:?}");
    assert!(!ctx.exists(completed).await, "the completed job is pruned after 24 h");
    assert!(ctx.exists(cancelled).await && ctx.exists(dead).await);

    ctx.clock.advance(7 * DAY);
    assert_eq!(ctx.prune_all(&policy).await.jobs, 1);
    assert!(!ctx.exists(cancelled).await, "the cancelled job is pruned after 7 d");
    assert!(ctx.exists(dead).await, "the dead job stays while the DLQ keeps its entry");
    assert!(ctx.store.get_dlq(dlq).await.expect("get_dlq").is_some());

    ctx.clock.advance(30 * DAY);
    let report = ctx.prune_all(&policy).await;
    assert_eq!((report.jobs, report.dlq), (1, 1), "{report:?}");
    assert!(!ctx.exists(dead).await, "the dead job goes with its DLQ entry after 30 d");
    assert!(ctx.store.get_dlq(dlq).await.expect("get_dlq").is_none());
    for id in kept {
        assert!(ctx.exists(id).await, "available, running and scheduled jobs are never pruned");
    }
    let running_job = ctx.store.get_job(running).await.expect("get").expect("running");
    assert_eq!(running_job.state, JobState::Running);
}

/// A policy that keeps everything prunes no job, run, DLQ entry or worker, however old.
pub async fn keep_all_prunes_nothing(ctx: TestContext<dyn WorkflowStore>) {
    let completed = ctx.finished(job("old"), Outcome::Complete).await;
    let mut dying = job("dying");
    dying.max_attempts = 1;
    let dead = ctx.finished(dying, Outcome::Fail { failure: failure("boom") }).await;
    let run = ctx.start_child(None).await;
    ctx.complete_run(run).await;
    ctx.clock.advance(1000 * DAY);
    let report = ctx.prune_all(&RetentionPolicy::keep_all()).await;
    assert_eq!(report, PruneReport::default());
    assert!(ctx.exists(completed).await && ctx.exists(dead).await);
    assert!(ctx.store.get_run(run).await.expect("get_run").is_some());
}

/// A finished job still inside its unique key's window is skipped, so the key stays held (an
/// enqueue of the key is a duplicate) for exactly as long as the window; afterwards it is pruned
/// and the key is free.
pub async fn a_unique_window_keeps_its_job_and_its_key(ctx: TestContext<dyn WorkflowStore>) {
    let unique = || {
        let mut new = job("report");
        new.unique = Some(UniqueKey { key: "monthly".to_owned(), window: Some(3 * DAY) });
        new
    };
    let holder = ctx.finished(unique(), Outcome::Complete).await;
    ctx.clock.advance(2 * DAY);
    assert_eq!(ctx.prune_all(&RetentionPolicy::default()).await.jobs, 0);
    assert!(ctx.exists(holder).await, "the job holds its key's window");
    let again = ctx.store.enqueue(vec![unique()]).await.expect("enqueue");
    assert_eq!(again, vec![Enqueued::Duplicate(holder)], "the key is still held");

    ctx.clock.advance(DAY);
    assert_eq!(ctx.prune_all(&RetentionPolicy::default()).await.jobs, 1);
    assert!(!ctx.exists(holder).await, "pruned once its window has passed");
    let fresh = unique();
    let fresh_id = fresh.id;
    let after = ctx.store.enqueue(vec![fresh]).await.expect("enqueue");
    assert_eq!(after, vec![Enqueued::Created(fresh_id)], "the key is free");
}

/// An ended run goes after 7 d with its checkpoints and its drive job; until then its completed
/// drive job stays (a rewind re-arms it), and a live run keeps everything.
pub async fn ended_runs_go_with_their_checkpoints_and_drive_job(
    ctx: TestContext<dyn WorkflowStore>,
) {
    let policy = RetentionPolicy::default();
    let ended = ctx.start_child(None).await;
    ctx.complete_run(ended).await;
    let drive_job = ctx.store.get_run(ended).await.expect("get_run").expect("run").drive_job;
    let live = ctx.start_child(None).await;
    let live_lease = ctx.drive_retained(live).await;
    let suspend = Suspend {
        run: live,
        until: Some(ctx.clock.now() + 400 * DAY),
        waits: vec![],
        waiting: vec![],
    };
    let outcome = ctx.store.suspend_run(live_lease, suspend).await.expect("suspend_run");
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");

    ctx.clock.advance(2 * DAY);
    assert_eq!(ctx.prune_all(&policy).await, PruneReport::default());
    assert!(ctx.exists(drive_job).await, "the drive job of a stored run stays with it");

    ctx.clock.advance(6 * DAY);
    let report = ctx.prune_all(&policy).await;
    assert_eq!((report.runs, report.jobs, report.checkpoints), (1, 1, 1), "{report:?}");
    assert!(ctx.store.get_run(ended).await.expect("get_run").is_none());
    assert!(!ctx.exists(drive_job).await, "the drive job went with its run");
    let live_run = ctx.store.get_run(live).await.expect("get_run").expect("run");
    assert_eq!(live_run.state, RunState::Suspended, "a live run is kept");
}

/// A run that ended stays while its parent has not ended; once the parent ends and ages, both go.
pub async fn a_child_of_a_live_parent_is_kept(ctx: TestContext<dyn WorkflowStore>) {
    let policy = RetentionPolicy::default();
    let parent = ctx.start_child(None).await;
    let parent_lease = ctx.drive_retained(parent).await;
    let child = ctx.start_child(Some(parent)).await;
    ctx.complete_run(child).await;
    ctx.clock.advance(8 * DAY);
    assert_eq!(ctx.prune_all(&policy).await.runs, 0, "the parent is running");
    assert!(ctx.store.get_run(child).await.expect("get_run").is_some());

    let end = RunEnd::Failed("gave up".to_owned());
    ctx.store.end_run(parent_lease, parent, end).await.expect("end_run");
    ctx.finish(parent_lease, Outcome::Complete).await;
    ctx.clock.advance(8 * DAY);
    assert_eq!(ctx.prune_all(&policy).await.runs, 2);
    assert!(ctx.store.get_run(parent).await.expect("get_run").is_none());
    assert!(ctx.store.get_run(child).await.expect("get_run").is_none());
}

/// Kept events go once their own keep-for has passed (whatever the policy); an unexpired one
/// stays and is still delivered.
pub async fn expired_kept_events_are_pruned(ctx: TestContext<dyn WorkflowStore>) {
    let publish = |corr: &str, keep_for: Duration| NewEvent {
        id: EventId::new(),
        name: "paid".to_owned(),
        correlation: corr.to_owned(),
        payload: b"{}".to_vec(),
        scope: Scope::default(),
        broadcast: false,
        keep_for,
    };
    let short = ctx.store.publish_event(publish("short", HOUR)).await.expect("publish");
    let long = ctx.store.publish_event(publish("long", 10 * DAY)).await.expect("publish");
    assert!(short.kept && long.kept);
    ctx.clock.advance(secs(30 * 60));
    assert_eq!(ctx.prune(&RetentionPolicy::keep_all(), ALL).await.events, 0);
    ctx.clock.advance(2 * HOUR);
    assert_eq!(ctx.prune(&RetentionPolicy::keep_all(), ALL).await.events, 1);

    let run = ctx.start_child(None).await;
    let lease = ctx.drive_retained(run).await;
    let wait = dispatch_core::EventWait {
        key: "payment".to_owned(),
        name: "paid".to_owned(),
        correlation: "long".to_owned(),
        deadline: ctx.clock.now() + HOUR,
    };
    let suspend = Suspend { run, until: None, waits: vec![wait], waiting: vec![] };
    let outcome = ctx.store.suspend_run(lease, suspend).await.expect("suspend_run");
    assert!(matches!(outcome, SuspendOutcome::Delivered), "kept: {outcome:?}");
}

/// Gone workers go once their last heartbeat is older than the policy's age; active ones stay.
pub async fn gone_workers_are_pruned_after_their_age(ctx: TestContext<dyn WorkflowStore>) {
    let cluster = ctx.cluster();
    let silent = crate::cluster::registration(WorkerId::new());
    let alive = crate::cluster::registration(WorkerId::new());
    cluster.register_worker(&silent).await.expect("register");
    cluster.register_worker(&alive).await.expect("register");
    ctx.clock.advance(secs(10));
    cluster.heartbeat_worker(alive.id, &[], HOUR).await.expect("heartbeat");
    let term = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    let sweep = cluster.sweep_workers(&term.expect("term"), secs(5), ALL).await.expect("sweep");
    assert_eq!(sweep.gone, vec![silent.id]);

    ctx.clock.advance(23 * HOUR);
    cluster.heartbeat_worker(alive.id, &[], HOUR).await.expect("heartbeat");
    assert_eq!(ctx.prune_all(&RetentionPolicy::default()).await.workers, 0);
    ctx.clock.advance(2 * HOUR);
    assert_eq!(ctx.prune_all(&RetentionPolicy::default()).await.workers, 1);
    let workers = cluster.list_workers().await.expect("list_workers");
    let listed: Vec<(WorkerId, WorkerState)> =
        workers.iter().map(|w| (w.registration.id, w.state)).collect();
    assert_eq!(listed, vec![(alive.id, WorkerState::Active)]);
}

/// A prune under a term that is no longer valid is refused and removes nothing; an accepted one
/// is recorded as a leader write.
pub async fn prune_is_fenced_by_the_term(ctx: TestContext<dyn WorkflowStore>) {
    let completed = ctx.finished(job("old"), Outcome::Complete).await;
    ctx.clock.advance(2 * DAY);
    let cluster = ctx.cluster();
    let old = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    let old = old.expect("take_leadership");
    let new = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    let new = new.expect("take_leadership");
    let refused = ctx.retention().prune(&old, &RetentionPolicy::default(), ALL).await;
    assert_kind(refused, ErrorKind::NotLeader, "a prune under a deposed term");
    assert!(ctx.exists(completed).await, "a refused prune removes nothing");

    let report = ctx.retention().prune(&new, &RetentionPolicy::default(), ALL).await;
    assert_eq!(report.expect("prune under the current term").jobs, 1);
    let writes = cluster.leader_writes(DEFAULT_LEADERSHIP, 10).await.expect("leader_writes");
    let last = writes.last().expect("the prune is recorded");
    assert_eq!((last.term, last.action.as_str()), (new.term, "prune"));
    assert!(writes.iter().all(|w| w.term != old.term), "the refused prune wrote nothing");
}

/// One call removes at most `limit` of a kind, oldest first, and says when more may be left.
pub async fn batches_are_bounded_and_report_more(ctx: TestContext<dyn WorkflowStore>) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(ctx.finished(job("batch"), Outcome::Complete).await);
    }
    ctx.clock.advance(2 * DAY);
    let policy = RetentionPolicy::default();
    let first = ctx.prune(&policy, 2).await;
    assert_eq!((first.jobs, first.more), (2, true), "{first:?}");
    assert!(!ctx.exists(ids[0]).await && !ctx.exists(ids[1]).await, "oldest first");
    assert!(ctx.exists(ids[2]).await);
    assert_eq!(ctx.prune(&policy, 2).await.jobs, 2);
    let last = ctx.prune(&policy, 2).await;
    assert_eq!(last.jobs, 1, "{last:?}");
    assert_eq!(ctx.prune(&policy, 2).await.total(), 0);
    for id in ids {
        assert!(!ctx.exists(id).await);
    }
}
