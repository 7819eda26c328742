//! Retention leaves nothing behind: after every record of a prefix has aged and been pruned,
//! a `SCAN` of the prefix finds only the store's counters and the leadership's keys (no job,
//! run, checkpoint, wait, unique key, idempotency key, DLQ entry, kept event, worker, index or
//! count left). And the prune rate over many completed jobs, printed
//! (`DISPATCH_PRUNE_BENCH_JOBS`, default 5,000: `DISPATCH_PRUNE_BENCH_JOBS=200000 cargo test -p
//! dispatch-store-redis --test it -- retention::prune_rate --nocapture`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, Clock as _, DEFAULT_LEADERSHIP, DlqStore, EventId, EventWait,
    Failure, FailureKind, Finish, JobId, JobStore, LeadershipStore, LeaseRef, LeaseToken,
    ManualClock, MembershipStore, NewCheckpoint, NewEvent, NewJob, NewRun, Outcome, PruneReport,
    RetentionPolicy, RetentionStore, RunEnd, RunId, Scope, Suspend, UniqueKey, WorkerId,
    WorkerRegistration, WorkflowStore,
};
use dispatch_store_redis::RedisStore;

use crate::common::{job_in, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("pruning_everything_leaves_no_key", |url| Box::pin(pruning_everything_leaves_no_key(url))),
        ("prune_rate", |url| Box::pin(prune_rate(url))),
    ]
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const QUEUE: &str = "retained";
const DRIVE: &str = "drive";

/// Take the leadership (a fresh term) and prune under it until a call removes nothing.
async fn prune_all(store: &RedisStore, policy: &RetentionPolicy, limit: usize) -> PruneReport {
    let term = store.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    let term = term.expect("take_leadership");
    let mut total = PruneReport::default();
    loop {
        let report = store.prune(&term, policy, limit).await.expect("prune");
        if report.total() == 0 && !report.more {
            return total;
        }
        total.absorb(&report);
    }
}

async fn claim(store: &RedisStore, name: &str, limit: usize) -> Vec<ClaimedJob> {
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec![QUEUE.to_owned()],
        names: vec![name.to_owned()],
        limit,
        lease_ttl: 400 * DAY,
        token: LeaseToken::new(),
    };
    store.claim(&request).await.expect("claim")
}

fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

async fn finish(store: &RedisStore, lease: LeaseRef, outcome: Outcome) {
    store.finish(&[Finish { lease, outcome }]).await.expect("finish");
}

/// Enqueue `new`, claim it and end its attempt with `outcome`.
async fn finished(store: &RedisStore, new: NewJob, outcome: Outcome) -> JobId {
    let name = new.name.clone();
    let id = new.id;
    store.enqueue(vec![new]).await.expect("enqueue");
    let claimed = claim(store, &name, 1).await;
    assert_eq!(claimed[0].job.id, id);
    finish(store, lease(&claimed[0]), outcome).await;
    id
}

fn failure() -> Failure {
    Failure { kind: FailureKind::Error, message: "boom".to_owned() }
}

/// Start a run (a child of `parent`, with an idempotency key when given) in a tenant's scope.
async fn start(store: &RedisStore, parent: Option<RunId>, key: Option<&str>) -> RunId {
    let run = NewRun {
        id: RunId::new(),
        name: "kept".to_owned(),
        version: 1,
        input: b"{}".to_vec(),
        scope: Scope { app: Some("app".to_owned()), tenant: Some("t".to_owned()) },
        idempotency_key: key.map(str::to_owned),
        parent,
    };
    let drive = job_in(DRIVE, QUEUE);
    store.start_run(run, drive).await.expect("start_run").id()
}

/// Claim the due drive job of `run`.
async fn drive(store: &RedisStore, run: RunId) -> LeaseRef {
    let claimed = claim(store, DRIVE, 1).await;
    let stored = store.get_run(run).await.expect("get_run").expect("run");
    assert_eq!(claimed[0].job.id, stored.drive_job, "claimed the drive job of {run}");
    lease(&claimed[0])
}

/// Suspend the driven `run` on an event wait `(name, correlation)` for an hour.
async fn wait_for(store: &RedisStore, lease: LeaseRef, run: RunId, correlation: &str, now: u64) {
    let deadline = dispatch_core::Timestamp::from_unix_micros(now as i64) + HOUR;
    let wait = EventWait {
        key: format!("evt:{correlation}"),
        name: "paid".to_owned(),
        correlation: correlation.to_owned(),
        deadline,
    };
    let suspend = Suspend { run, until: None, waits: vec![wait], waiting: vec![] };
    store.suspend_run(lease, suspend).await.expect("suspend_run");
}

/// End the driven `run` with `end` and complete its drive job.
async fn end(store: &RedisStore, lease: LeaseRef, run: RunId, end: RunEnd) {
    let step = NewCheckpoint { key: "last".to_owned(), data: b"1".to_vec() };
    store.save_checkpoints(lease, run, vec![step]).await.expect("save_checkpoints");
    store.end_run(lease, run, end).await.expect("end_run");
    finish(store, lease, Outcome::Complete).await;
}

fn event(correlation: &str, keep_for: Duration) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        name: "paid".to_owned(),
        correlation: correlation.to_owned(),
        payload: b"{}".to_vec(),
        scope: Scope { app: Some("app".to_owned()), tenant: Some("t".to_owned()) },
        broadcast: false,
        keep_for,
    }
}

/// Every key of the store's prefix (a test may scan; the store never does).
async fn keys(url: &str, store: &RedisStore) -> BTreeSet<String> {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let pattern = format!("{}:*", store.prefix());
    let mut cursor = 0u64;
    let mut found = BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        let strip = |key: String| key[store.prefix().len() + 1..].to_owned();
        found.extend(batch.into_iter().map(strip));
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Records of every kind, in every shape retention meets (a unique window that outlives the
/// job's age, a child of a live parent, a delivered and an unanswered event wait, a replayed
/// DLQ entry, a kept event, a gone worker), pruned in three rounds: then only the counters
/// and the leadership remain.
async fn pruning_everything_leaves_no_key(url: String) {
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let now = || clock.now().as_unix_micros() as u64;
    let policy = RetentionPolicy::default();

    // Jobs: completed, retried then completed, in a unique window longer than 24 h, cancelled,
    // dead (with a DLQ entry) and a dead one replayed.
    finished(&store, job_in("plain", QUEUE), Outcome::Complete).await;
    let retried = finished(&store, job_in("retried", QUEUE), retry()).await;
    let claimed = claim(&store, "retried", 1).await;
    assert_eq!(claimed[0].job.id, retried);
    finish(&store, lease(&claimed[0]), Outcome::Complete).await;
    let mut unique = job_in("unique", QUEUE);
    unique.unique = Some(UniqueKey { key: "monthly".to_owned(), window: Some(3 * DAY) });
    let unique = finished(&store, unique, Outcome::Complete).await;
    let cancelled = job_in("cancelled", QUEUE);
    let cancelled_id = cancelled.id;
    store.enqueue(vec![cancelled]).await.expect("enqueue");
    store.request_job_cancel(cancelled_id).await.expect("cancel");
    for _ in 0..2 {
        let mut dying = job_in("dying", QUEUE);
        dying.max_attempts = 1;
        finished(&store, dying, Outcome::Fail { failure: failure() }).await;
    }
    let entries = store.list_dlq(&Default::default(), &dispatch_core::PageRequest::first(10)).await;
    let entry = entries.expect("list_dlq").items[0].id;
    let replayed = store.replay_dlq(entry, &Default::default()).await.expect("replay").job_id();
    let claimed = claim(&store, "dying", 1).await;
    assert_eq!(claimed[0].job.id, replayed);
    finish(&store, lease(&claimed[0]), Outcome::Complete).await;

    // Runs: one delivered an event and ended, one ended after its wait's deadline, a child
    // that ended while its parent runs.
    let delivered = start(&store, None, Some("once")).await;
    let lease_a = drive(&store, delivered).await;
    wait_for(&store, lease_a, delivered, "a", now()).await;
    store.publish_event(event("a", HOUR)).await.expect("publish");
    let lease_a = drive(&store, delivered).await;
    end(&store, lease_a, delivered, RunEnd::Completed(b"done".to_vec())).await;
    let unanswered = start(&store, None, None).await;
    let lease_b = drive(&store, unanswered).await;
    wait_for(&store, lease_b, unanswered, "never", now()).await;
    clock.advance(2 * HOUR);
    let lease_b = drive(&store, unanswered).await;
    end(&store, lease_b, unanswered, RunEnd::Failed("timed out".to_owned())).await;
    let parent = start(&store, None, None).await;
    let parent_lease = drive(&store, parent).await;
    let child = start(&store, Some(parent), None).await;
    let child_lease = drive(&store, child).await;
    end(&store, child_lease, child, RunEnd::Completed(b"c".to_vec())).await;

    // A kept event nobody takes, a worker gone silent.
    assert!(store.publish_event(event("nobody", HOUR)).await.expect("publish").kept);
    let worker = WorkerRegistration {
        id: WorkerId::new(),
        host: "h".into(),
        pid: 1,
        queues: vec![QUEUE.into()],
        concurrency: 1,
        version: "v".into(),
    };
    store.register_worker(&worker).await.expect("register");
    clock.advance(Duration::from_secs(60));
    let term = store.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
    store.sweep_workers(&term.expect("term"), Duration::from_secs(5), 10).await.expect("sweep");

    clock.advance(2 * DAY);
    let first = prune_all(&store, &policy, 2).await;
    assert_eq!((first.jobs, first.events, first.workers), (3, 1, 1), "{first:?}");
    assert!(store.get_job(unique).await.expect("get").is_some(), "inside its window");

    clock.advance(8 * DAY);
    let second = prune_all(&store, &policy, 2).await;
    assert_eq!((second.runs, second.jobs, second.checkpoints), (2, 4, 3), "{second:?}");
    assert!(store.get_run(child).await.expect("get_run").is_some(), "its parent runs");

    end(&store, parent_lease, parent, RunEnd::Cancelled("stop".to_owned())).await;
    clock.advance(40 * DAY);
    let last = prune_all(&store, &policy, 2).await;
    assert_eq!((last.runs, last.jobs, last.dlq), (2, 4, 2), "{last:?}");

    let left = keys(&url, &store).await;
    let leadership = [
        "seq".to_owned(),
        "eventseq".to_owned(),
        format!("leader:{DEFAULT_LEADERSHIP}"),
        format!("leaderwrites:{DEFAULT_LEADERSHIP}"),
    ];
    assert_eq!(left, BTreeSet::from(leadership), "only counters and the leadership remain");
    assert!(store.count_jobs().await.expect("count_jobs").is_empty());
}

/// `MEMORY USAGE` of `key` (every member sampled).
async fn memory_usage(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let cmd = redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).clone();
    cmd.query_async::<Option<i64>>(&mut conn).await.expect("MEMORY USAGE").unwrap_or(0)
}

fn retry() -> Outcome {
    Outcome::Retry { failure: failure(), run_at: dispatch_core::RunAt::Now }
}

/// The number of completed jobs the rate is measured over.
fn bench_jobs() -> usize {
    std::env::var("DISPATCH_PRUNE_BENCH_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(5_000)
}

/// Complete many jobs, age them past 24 h, prune them 1,000 per call: every one goes, and the
/// rate (and the longest call) is printed. A call with nothing old enough is O(limit): one more
/// prune after the last finds nothing and takes no longer than a call that removed 1,000.
async fn prune_rate(url: String) {
    let clock = Arc::new(ManualClock::fixed());
    let store = store(&url).await.with_clock(clock.clone());
    let total = bench_jobs();
    let batch = 1_000;
    let (mut done, mut finish_time) = (0, Duration::ZERO);
    while done < total {
        let n = batch.min(total - done);
        let jobs: Vec<NewJob> = (0..n).map(|_| job_in("bench", QUEUE)).collect();
        store.enqueue(jobs).await.expect("enqueue");
        let claimed = claim(&store, "bench", n).await;
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|c| Finish { lease: lease(c), outcome: Outcome::Complete })
            .collect();
        let finishing = tokio::time::Instant::now();
        store.finish(&finishes).await.expect("finish");
        finish_time += finishing.elapsed();
        done += claimed.len();
    }
    println!("retention: {total} jobs finished in {finish_time:?} ({batch} per finish call)");
    let term = store.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), 400 * DAY).await;
    let term = term.expect("take_leadership");
    let policy = RetentionPolicy::default();
    // Nothing is 24 h old yet: the pass reads the index up to its cutoff, finding nothing.
    let young = tokio::time::Instant::now();
    assert_eq!(store.prune(&term, &policy, batch).await.expect("prune").total(), 0);
    let young = young.elapsed();
    let index_bytes = memory_usage(&url, &format!("{}:finished:completed", store.prefix())).await;
    clock.advance(2 * DAY);

    let started = tokio::time::Instant::now();
    let (mut pruned, mut calls, mut longest) = (0, 0, Duration::ZERO);
    loop {
        let call = tokio::time::Instant::now();
        let report = store.prune(&term, &policy, batch).await.expect("prune");
        longest = longest.max(call.elapsed());
        calls += 1;
        pruned += report.jobs;
        if !report.more {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(pruned, total as u64, "every completed job is pruned");
    let idle = tokio::time::Instant::now();
    assert_eq!(store.prune(&term, &policy, batch).await.expect("prune").total(), 0);
    let idle = idle.elapsed();
    let rate = pruned as f64 / elapsed.as_secs_f64();
    println!(
        "retention: pruned {pruned} completed jobs in {elapsed:?} over {calls} calls of \
         {batch} ({rate:.0} jobs/s), longest call {longest:?}; a call with nothing old enough \
         among {total} finished jobs {young:?}, with nothing left {idle:?}; the finished-time \
         index held {index_bytes} bytes ({:.0} per job)",
        index_bytes as f64 / total as f64
    );
    assert!(store.count_jobs().await.expect("count_jobs").is_empty());
}
