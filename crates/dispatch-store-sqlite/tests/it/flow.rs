//! Flow control on SQLite beyond the conformance suite: the release trigger gives back the slots
//! of counted jobs on every path out of running (and leaves uncounted ones alone), concurrent
//! claims on one file never admit past a gate, a queue's first config counts what already
//! runs, and tenant lanes stay fair over a large backlog.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, ConcurrencyKey, Failure, FailureKind, Finish, FlowStore, JobStore,
    LeaseRef, LeaseToken, ManualClock, NewJob, Outcome, QueueConfig, RunAt, Scope, WorkerId,
};
use dispatch_store_sqlite::SqliteStore;

async fn store() -> (SqliteStore, Arc<ManualClock>) {
    let dir = std::env::temp_dir().join("dispatch-sqlite-flow");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", uuid::Uuid::new_v4().simple())).display().to_string();
    let clock = Arc::new(ManualClock::fixed());
    let store = SqliteStore::open(&path).await.expect("open").with_clock(clock.clone());
    (store, clock)
}

fn job(queue: &str, tenant: Option<&str>) -> NewJob {
    let mut job = NewJob::new("work", Vec::new());
    job.queue = queue.to_owned();
    job.scope = Scope { app: None, tenant: tenant.map(str::to_owned) };
    job
}

fn request(queues: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        names: vec!["work".to_owned()],
        limit,
        lease_ttl: Duration::from_secs(600),
        token: LeaseToken::new(),
    }
}

async fn running(store: &SqliteStore, queue: &str) -> u64 {
    store.queue_flow(queue).await.expect("queue_flow").expect("a config").running
}

fn failure(message: &str) -> Failure {
    Failure::new(FailureKind::Error, message)
}

fn finish(claimed: &ClaimedJob, outcome: Outcome) -> Finish {
    Finish { lease: LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }, outcome }
}

/// Every way out of running gives the slot back once: complete, retry (back to available),
/// release, and a rescue of an expired lease; the count never goes below zero.
#[tokio::test]
async fn every_path_out_of_running_releases_the_slot() {
    let (store, clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").max_running(10)).await.unwrap();
    store.enqueue((0..4).map(|_| job("q", None)).collect()).await.unwrap();
    let claimed = store.claim(&request(&["q"], 4)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    assert_eq!(running(&store, "q").await, 4);
    let retry = Outcome::Retry { failure: failure("boom"), run_at: RunAt::Now };
    store.finish(&[finish(&claimed[0], Outcome::Complete)]).await.unwrap();
    store.finish(&[finish(&claimed[1], retry)]).await.unwrap();
    store.finish(&[finish(&claimed[2], Outcome::Release)]).await.unwrap();
    assert_eq!(running(&store, "q").await, 1);
    // A repeated finish changes nothing and releases nothing twice.
    store.finish(&[finish(&claimed[0], Outcome::Complete)]).await.unwrap();
    assert_eq!(running(&store, "q").await, 1);
    clock.advance(Duration::from_secs(601));
    store.rescue_expired(10).await.unwrap();
    assert_eq!(running(&store, "q").await, 0);
}

/// A queue's first config counts the jobs already running there (claimed by the plain path), so
/// its limit holds at once; their finishes give the slots back.
#[tokio::test]
async fn a_first_config_counts_what_already_runs() {
    let (store, _clock) = store().await;
    store.enqueue((0..5).map(|_| job("q", Some("t"))).collect()).await.unwrap();
    let claimed = store.claim(&request(&["q"], 3)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(3)).await.unwrap();
    assert_eq!(flow.running, 3);
    assert!(store.claim(&request(&["q"], 5)).await.unwrap().is_empty());
    store.finish(&[finish(&claimed[0], Outcome::Complete)]).await.unwrap();
    assert_eq!(running(&store, "q").await, 2);
    assert_eq!(store.claim(&request(&["q"], 5)).await.unwrap().len(), 1);
    // Setting the config again counts nothing twice.
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(3)).await.unwrap();
    assert_eq!(flow.running, 3);
}

/// Jobs of queues without a config never run the trigger's body: their finishes leave every
/// gate alone (here the gate of a config deleted while none of its jobs ran).
#[tokio::test]
async fn uncounted_jobs_leave_the_gates_alone() {
    let (store, _clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").max_running(10)).await.unwrap();
    store.enqueue(vec![job("q", None)]).await.unwrap();
    let counted = store.claim(&request(&["q"], 1)).await.unwrap();
    store.delete_queue_config("q").await.unwrap();
    store.enqueue((0..3).map(|_| job("q", None)).collect()).await.unwrap();
    let plain = store.claim(&request(&["q"], 3)).await.unwrap();
    assert_eq!(plain.len(), 3);
    let finishes: Vec<Finish> = plain.iter().map(|c| finish(c, Outcome::Complete)).collect();
    store.finish(&finishes).await.unwrap();
    // The counted job still holds its slot; the config comes back with it counted once.
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(10)).await.unwrap();
    assert_eq!(flow.running, 1);
    store.finish(&[finish(&counted[0], Outcome::Complete)]).await.unwrap();
    assert_eq!(running(&store, "q").await, 0);
}

/// Many claims racing on one file (each its own task and store clone) never run more than the
/// queue's limit or a key's limit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_never_pass_a_full_gate() {
    let (store, _clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").max_running(5)).await.unwrap();
    let mut jobs: Vec<NewJob> = (0..40).map(|_| job("q", None)).collect();
    for job in jobs.iter_mut().take(20) {
        job.concurrency = Some(ConcurrencyKey::new("k", 2));
    }
    store.enqueue(jobs).await.unwrap();
    let claims = (0..16).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim(&request(&["q"], 3)).await.unwrap() })
    });
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(claim.await.unwrap());
    }
    assert_eq!(claimed.len(), 5, "the queue's limit");
    let keyed = claimed.iter().filter(|c| c.job.concurrency.is_some()).count();
    assert!(keyed <= 2, "{keyed} jobs of a key with limit 2");
    assert_eq!(running(&store, "q").await, 5);
}

/// A fair queue with one tenant's backlog of 2,000 jobs ahead of another tenant's one job
/// claims the other tenant's job in the first claim (each tenant's lane is its own search of the
/// tenant index). Jobs without a tenant are one more lane, read from the claim index past at
/// most `LANE_SCAN_LIMIT` entries: one behind fewer tenant jobs than that is claimed too.
#[tokio::test]
async fn a_backlog_does_not_starve_another_tenant() {
    let (store, clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").fair()).await.unwrap();
    for _ in 0..4 {
        store.enqueue((0..500).map(|_| job("q", Some("big"))).collect()).await.unwrap();
    }
    clock.advance(Duration::from_secs(1));
    store.enqueue(vec![job("q", Some("small"))]).await.unwrap();
    let claimed = store.claim(&request(&["q"], 3)).await.unwrap();
    let tenants: Vec<Option<&str>> =
        claimed.iter().map(|c| c.job.scope.tenant.as_deref()).collect();
    assert_eq!(tenants, [Some("big"), Some("small"), Some("big")]);

    store.set_queue_config(&QueueConfig::new("r").fair()).await.unwrap();
    store.enqueue((0..500).map(|_| job("r", Some("big"))).collect()).await.unwrap();
    clock.advance(Duration::from_secs(1));
    store.enqueue(vec![job("r", None)]).await.unwrap();
    let claimed = store.claim(&request(&["r"], 2)).await.unwrap();
    let tenants: Vec<Option<&str>> =
        claimed.iter().map(|c| c.job.scope.tenant.as_deref()).collect();
    assert_eq!(tenants, [Some("big"), None]);
}

/// Progress is written only under the lease, survives a retry's claim, and reads back as JSON.
#[tokio::test]
async fn progress_survives_a_retry() {
    let (store, _clock) = store().await;
    store.enqueue(vec![job("q", None)]).await.unwrap();
    let first = store.claim(&request(&["q"], 1)).await.unwrap().remove(0);
    let lease = LeaseRef { job_id: first.job.id, token: first.lease.token };
    let stale = LeaseRef { job_id: first.job.id, token: LeaseToken::new() };
    let report = serde_json::json!({"done": 3, "of": 7});
    let updates = [
        dispatch_core::ProgressUpdate { lease, progress: report.clone() },
        dispatch_core::ProgressUpdate { lease: stale, progress: serde_json::json!("lost") },
    ];
    assert_eq!(store.record_progress(&updates).await.unwrap(), [true, false]);
    let retry = Outcome::Retry { failure: failure("again"), run_at: RunAt::Now };
    store.finish(&[finish(&first, retry)]).await.unwrap();
    let second = store.claim(&request(&["q"], 1)).await.unwrap().remove(0);
    assert_eq!(second.job.progress, Some(report));
}

/// A queue not read in lanes still counts its tenants' running jobs in their gates, from their
/// stored state (a claim that did not read a tenant's gate would write it back as one running),
/// so tenant limits set later hold at once.
#[tokio::test]
async fn tenant_gates_count_in_a_queue_without_lanes() {
    let (store, _clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").max_running(10)).await.unwrap();
    store.enqueue((0..5).map(|_| job("q", Some("t"))).collect()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(store.claim(&request(&["q"], 1)).await.unwrap().len(), 1);
    }
    let limited = QueueConfig::new("q").max_running(10).tenant_max_running(3);
    store.set_queue_config(&limited).await.unwrap();
    assert!(store.claim(&request(&["q"], 5)).await.unwrap().is_empty());
}

/// A claim first reads each tenant lane only as deep as its share of the limit; when the
/// admission refuses that much (here: lane heads sharing a key of limit 1) while the queue could
/// still admit, it reads the lanes in full and admits what a full read does.
#[tokio::test]
async fn a_shallow_read_that_runs_out_reads_the_lanes_in_full() {
    let (store, _clock) = store().await;
    store.set_queue_config(&QueueConfig::new("q").fair()).await.unwrap();
    let keyed = |tenant: &str| {
        let mut job = job("q", Some(tenant));
        job.concurrency = Some(ConcurrencyKey::new("k", 1));
        job
    };
    let a = vec![keyed("a"), keyed("a"), job("q", Some("a")), job("q", Some("a"))];
    let b = vec![keyed("b"), keyed("b"), job("q", Some("b"))];
    let want = [a[0].id, a[2].id, b[2].id, a[3].id];
    store.enqueue(a).await.unwrap();
    store.enqueue(b).await.unwrap();
    let claimed = store.claim(&request(&["q"], 4)).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, want);
}

/// Next-due leaves out a paused name (read from the stored config's JSON) but not the queue's
/// other names, and a resumed name is due again.
#[tokio::test]
async fn next_due_leaves_out_a_paused_name() {
    let (store, _clock) = store().await;
    let mut other = job("q", None);
    other.name = "other".to_owned();
    other.run_at = RunAt::After(Duration::from_secs(5));
    store.enqueue(vec![job("q", None), other]).await.unwrap();
    let names = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let queues = names(&["q"]);
    assert!(store.set_paused("q", Some("work"), true).await.unwrap());
    let due = store.next_due(&queues, &names(&["work", "other"])).await.unwrap();
    assert_eq!(due, Some(Duration::from_secs(5)), "only the other name is due");
    assert_eq!(store.next_due(&queues, &names(&["work"])).await.unwrap(), None);
    assert!(store.set_paused("q", Some("work"), false).await.unwrap());
    let due = store.next_due(&queues, &names(&["work"])).await.unwrap();
    assert_eq!(due, Some(Duration::ZERO));
}
