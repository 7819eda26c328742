//! Flow control on PostgreSQL beyond the conformance suite: gated claims racing from many
//! sessions never admit past a gate, releases from finishes reach the gates, a queue's first
//! config counts the jobs running in it, fair queues take tenants' lanes in turn, paused queues
//! are left out of the next-due probe, and a plain queue claims as before beside gated ones.
//! Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, ConcurrencyKey, Finish, FlowStore, JobStore, LeaseRef, LeaseToken,
    NewJob, Outcome, ProgressUpdate, QueueConfig, WorkerId,
};
use dispatch_store_postgres::PostgresStore;

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("racing_claims_never_pass_max_running", |url| {
            Box::pin(racing_claims_never_pass_max_running(url))
        }),
        ("finishes_release_and_first_configs_count", |url| {
            Box::pin(finishes_release_and_first_configs_count(url))
        }),
        ("keys_limit_across_queues", |url| Box::pin(keys_limit_across_queues(url))),
        ("fair_queues_take_lanes_in_turn", |url| Box::pin(fair_queues_take_lanes_in_turn(url))),
        ("paused_queues_are_not_due", |url| Box::pin(paused_queues_are_not_due(url))),
        ("progress_needs_the_lease", |url| Box::pin(progress_needs_the_lease(url))),
    ]
}

async fn store(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(8)
        .build()
        .await
        .expect("store")
}

fn request(queues: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId::new(),
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        names: vec!["job".into()],
        limit,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    }
}

fn job(queue: &str) -> NewJob {
    let mut job = NewJob::new("job", vec![]);
    job.queue = queue.into();
    job
}

fn tenant_job(queue: &str, tenant: Option<&str>) -> NewJob {
    let mut job = job(queue);
    job.scope.tenant = tenant.map(str::to_owned);
    job
}

fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

async fn complete(store: &PostgresStore, claimed: &[ClaimedJob]) {
    let finishes: Vec<Finish> =
        claimed.iter().map(|c| Finish { lease: lease(c), outcome: Outcome::Complete }).collect();
    store.finish(&finishes).await.expect("finish");
}

async fn racing_claims_never_pass_max_running(url: String) {
    let store = store(&url).await;
    store.set_queue_config(&QueueConfig::new("q").max_running(3)).await.unwrap();
    store.enqueue((0..40).map(|_| job("q")).collect()).await.unwrap();
    let claims = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim(&request(&["q"], 2)).await.unwrap().len() })
    });
    let mut total = 0;
    for claim in claims {
        total += claim.await.unwrap();
    }
    assert_eq!(total, 3);
    assert_eq!(store.queue_flow("q").await.unwrap().unwrap().running, 3);
}

async fn finishes_release_and_first_configs_count(url: String) {
    let store = store(&url).await;
    store.enqueue((0..6).map(|_| job("q")).collect()).await.unwrap();
    // Plain: claimed as before.
    let first = store.claim(&request(&["q"], 2)).await.unwrap();
    assert_eq!(first.len(), 2);
    // A first config counts the two running jobs.
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(3)).await.unwrap();
    assert_eq!(flow.running, 2);
    let second = store.claim(&request(&["q"], 5)).await.unwrap();
    assert_eq!(second.len(), 1);
    complete(&store, &first).await;
    assert_eq!(store.queue_flow("q").await.unwrap().unwrap().running, 1);
    let third = store.claim(&request(&["q"], 5)).await.unwrap();
    assert_eq!(third.len(), 2);
    assert_eq!(store.queue_flow("q").await.unwrap().unwrap().running, 3);
    // Release, retry and rescue give slots back too.
    store.release(&[lease(&third[0])]).await.unwrap();
    assert_eq!(store.queue_flow("q").await.unwrap().unwrap().running, 2);
    // Deleting the config makes the queue plain again.
    assert!(store.delete_queue_config("q").await.unwrap());
    let rest = store.claim(&request(&["q"], 10)).await.unwrap();
    assert_eq!(rest.len(), 2);
}

async fn keys_limit_across_queues(url: String) {
    let store = store(&url).await;
    let keyed = |queue: &str| {
        let mut job = job(queue);
        job.concurrency = Some(ConcurrencyKey::new("customer-1", 2));
        job
    };
    store.enqueue(vec![keyed("a"), keyed("a"), keyed("b"), keyed("b"), job("b")]).await.unwrap();
    // An enqueue with a key gives the queue a default config.
    let flows = store.list_queue_flows().await.unwrap();
    assert_eq!(flows.iter().map(|f| f.config.queue.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let a = store.claim(&request(&["a"], 10)).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].job.concurrency, Some(ConcurrencyKey::new("customer-1", 2)));
    // The key is full: only b's job without a key is claimed.
    let b = store.claim(&request(&["b"], 10)).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].job.concurrency, None);
    complete(&store, &a[..1]).await;
    let b = store.claim(&request(&["b"], 10)).await.unwrap();
    assert_eq!(b.len(), 1);
}

async fn fair_queues_take_lanes_in_turn(url: String) {
    let store = store(&url).await;
    store.set_queue_config(&QueueConfig::new("q").fair()).await.unwrap();
    let mut jobs: Vec<NewJob> = (0..50).map(|_| tenant_job("q", Some("big"))).collect();
    jobs.push(tenant_job("q", Some("small")));
    jobs.push(tenant_job("q", None));
    store.enqueue(jobs).await.unwrap();
    let claimed = store.claim(&request(&["q"], 3)).await.unwrap();
    let mut tenants: Vec<Option<String>> =
        claimed.iter().map(|c| c.job.scope.tenant.clone()).collect();
    tenants.sort();
    assert_eq!(tenants, [None, Some("big".to_owned()), Some("small".to_owned())]);
    // Tenant limits.
    store.set_queue_config(&QueueConfig::new("q").tenant_max_running(2)).await.unwrap();
    let claimed = store.claim(&request(&["q"], 10)).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].job.scope.tenant.as_deref(), Some("big"));
}

async fn paused_queues_are_not_due(url: String) {
    let store = store(&url).await;
    store.enqueue(vec![job("q"), job("other")]).await.unwrap();
    assert!(store.set_paused("q", None, true).await.unwrap());
    assert!(!store.set_paused("q", None, true).await.unwrap());
    let names = vec!["job".to_owned()];
    assert_eq!(store.next_due(&["q".to_owned()], &names).await.unwrap(), None);
    assert!(store.claim(&request(&["q"], 5)).await.unwrap().is_empty());
    assert!(store.set_paused("other", Some("job"), true).await.unwrap());
    assert_eq!(store.next_due(&["other".to_owned()], &names).await.unwrap(), None);
    assert!(store.set_paused("q", None, false).await.unwrap());
    assert_eq!(store.next_due(&["q".to_owned()], &names).await.unwrap(), Some(Duration::ZERO));
    assert_eq!(store.claim(&request(&["q", "other"], 5)).await.unwrap().len(), 1);
}

async fn progress_needs_the_lease(url: String) {
    let store = store(&url).await;
    store.enqueue(vec![job("q")]).await.unwrap();
    let claimed = store.claim(&request(&["q"], 1)).await.unwrap();
    let good = ProgressUpdate { lease: lease(&claimed[0]), progress: serde_json::json!({"n": 1}) };
    let mut bad = good.clone();
    bad.lease.token = LeaseToken::new();
    assert_eq!(store.record_progress(&[good, bad]).await.unwrap(), [true, false]);
    store.release(&[lease(&claimed[0])]).await.unwrap();
    let again = store.claim(&request(&["q"], 1)).await.unwrap();
    assert_eq!(again[0].job.progress, Some(serde_json::json!({"n": 1})));
}
