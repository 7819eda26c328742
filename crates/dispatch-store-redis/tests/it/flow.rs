//! Flow control on Redis: the gated claim's rules end to end (limits, keys, rates, tenant lanes,
//! pauses, progress), and the keys the store keeps for them: a tenant lane and its entry in the
//! pair's set of lanes are gone once the lane is empty, jobs without a tenant have no lane, and
//! a gate's running count is gone once its jobs are.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ConcurrencyKey, Finish, FlowStore, JobId, JobStore, ManualClock, NewJob, Outcome,
    ProgressUpdate, QueueConfig, Rate, Timestamp,
};
use dispatch_store_redis::RedisStore;

use crate::common::{job_in, lease, request, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("max_running_holds_until_a_finish", |url| Box::pin(max_running_holds_until_a_finish(url))),
        ("key_gates_hold_across_queues", |url| Box::pin(key_gates_hold_across_queues(url))),
        ("rates_space_starts_by_the_store_clock", |url| {
            Box::pin(rates_space_starts_by_the_store_clock(url))
        }),
        ("lanes_take_tenants_in_turn_and_leave_no_keys", |url| {
            Box::pin(lanes_take_tenants_in_turn_and_leave_no_keys(url))
        }),
        ("tenant_limits_hold_per_tenant", |url| Box::pin(tenant_limits_hold_per_tenant(url))),
        ("pauses_stop_claims_and_next_due", |url| Box::pin(pauses_stop_claims_and_next_due(url))),
        ("a_first_config_counts_running_jobs", |url| {
            Box::pin(a_first_config_counts_running_jobs(url))
        }),
        ("progress_is_fenced_and_survives_retries", |url| {
            Box::pin(progress_is_fenced_and_survives_retries(url))
        }),
        ("rescues_and_released_claims_free_their_gates", |url| {
            Box::pin(rescues_and_released_claims_free_their_gates(url))
        }),
        ("due_jobs_without_a_lane_get_one", |url| Box::pin(due_jobs_without_a_lane_get_one(url))),
        ("a_key_slot_is_not_counted_twice", |url| Box::pin(a_key_slot_is_not_counted_twice(url))),
    ]
}

const TTL: Duration = Duration::from_secs(60);

fn keyed(name: &str, queue: &str, key: &str, limit: u32) -> NewJob {
    let mut job = job_in(name, queue);
    job.concurrency = Some(ConcurrencyKey::new(key, limit));
    job
}

fn of_tenant(name: &str, queue: &str, tenant: Option<&str>) -> NewJob {
    let mut job = job_in(name, queue);
    job.scope.tenant = tenant.map(str::to_owned);
    job
}

async fn claim_ids(store: &RedisStore, queue: &str, name: &str, limit: usize) -> Vec<JobId> {
    let claimed = store.claim(&request(queue, name, limit, TTL)).await.expect("claim");
    claimed.iter().map(|c| c.job.id).collect()
}

async fn complete(store: &RedisStore, claimed: &dispatch_core::ClaimedJob) {
    let finish = Finish { lease: lease(claimed), outcome: Outcome::Complete };
    store.finish(&[finish]).await.expect("finish");
}

async fn running(store: &RedisStore, queue: &str) -> u64 {
    store.queue_flow(queue).await.expect("queue_flow").expect("a config").running
}

/// Which of the store's keys `suffixes` (after its prefix) exist.
async fn existing(store: &RedisStore, url: &str, suffixes: &[&str]) -> Vec<String> {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let mut found = Vec::new();
    for suffix in suffixes {
        let key = format!("{}:{suffix}", store.prefix());
        let n: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.expect("exists");
        if n == 1 {
            found.push((*suffix).to_owned());
        }
    }
    found
}

/// The keys of queue `q`'s gates, name `a`'s lanes of tenants `t1` and `t2` and its set of
/// lanes.
const LANE_KEYS: [&str; 3] = ["lane:1:q:1:a:t1", "lane:1:q:1:a:t2", "lanes:1:q:a"];

async fn max_running_holds_until_a_finish(url: String) {
    let store = store(&url).await;
    store.set_queue_config(&QueueConfig::new("q").max_running(2)).await.expect("config");
    store.enqueue((0..5).map(|_| job_in("a", "q")).collect()).await.expect("enqueue");
    let claimed = store.claim(&request("q", "a", 10, TTL)).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(running(&store, "q").await, 2);
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty(), "the gate is full");
    complete(&store, &claimed[0]).await;
    assert_eq!(running(&store, "q").await, 1);
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 1);
    assert_eq!(running(&store, "q").await, 2);
}

async fn key_gates_hold_across_queues(url: String) {
    let store = store(&url).await;
    let jobs = vec![keyed("a", "q1", "k", 1), keyed("a", "q2", "k", 1), keyed("a", "q2", "j", 1)];
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    store.enqueue(jobs).await.expect("enqueue");
    assert!(store.queue_flow("q1").await.expect("flow").is_some(), "a keyed job's queue is gated");
    let got = store.get_job(ids[0]).await.expect("get").expect("job");
    assert_eq!(got.concurrency, Some(ConcurrencyKey::new("k", 1)));
    let first = store.claim(&request("q1", "a", 10, TTL)).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(claim_ids(&store, "q2", "a", 10).await, [ids[2]], "k is full, j is not");
    complete(&store, &first[0]).await;
    let gates = ["gate:k\u{1f}j", "gate:k\u{1f}k"];
    assert_eq!(existing(&store, &url, &gates).await, ["gate:k\u{1f}j"], "k is free again");
    assert_eq!(claim_ids(&store, "q2", "a", 10).await, [ids[1]]);
}

async fn rates_space_starts_by_the_store_clock(url: String) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_micros(1_900_000_000_000_000)));
    let store = store(&url).await.with_clock(clock.clone());
    let rate = Rate::per_second(2);
    store.set_queue_config(&QueueConfig::new("q").rate(rate)).await.expect("config");
    store.enqueue((0..6).map(|_| job_in("a", "q")).collect()).await.expect("enqueue");
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 2, "a burst of 2");
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty());
    clock.advance(Duration::from_millis(499));
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 1, "one per 500 ms");
    clock.advance(Duration::from_secs(10));
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 2, "the burst again, no more");
}

async fn lanes_take_tenants_in_turn_and_leave_no_keys(url: String) {
    let store = store(&url).await;
    store.set_queue_config(&QueueConfig::new("q").fair()).await.expect("config");
    let mut jobs: Vec<_> = (0..4).map(|_| of_tenant("a", "q", Some("t1"))).collect();
    jobs.push(of_tenant("a", "q", Some("t2")));
    jobs.push(of_tenant("a", "q", None));
    jobs.push(of_tenant("a", "q", Some("t2")));
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    for job in jobs {
        store.enqueue(vec![job]).await.expect("enqueue");
    }
    assert_eq!(existing(&store, &url, &LANE_KEYS).await, LANE_KEYS, "one lane per tenant");
    let claimed = claim_ids(&store, "q", "a", 5).await;
    assert_eq!(claimed, [ids[0], ids[4], ids[5], ids[1], ids[6]]);
    assert_eq!(claim_ids(&store, "q", "a", 5).await, [ids[2], ids[3]]);
    assert!(existing(&store, &url, &LANE_KEYS).await.is_empty(), "empty lanes leave no keys");
}

async fn tenant_limits_hold_per_tenant(url: String) {
    let store = store(&url).await;
    let config = QueueConfig::new("q").tenant_max_running(1);
    store.set_queue_config(&config).await.expect("config");
    let jobs = (0..6).map(|i| of_tenant("a", "q", Some(if i % 2 == 0 { "x" } else { "y" })));
    store.enqueue(jobs.collect()).await.expect("enqueue");
    let claimed = store.claim(&request("q", "a", 10, TTL)).await.expect("claim");
    let tenants: Vec<_> = claimed.iter().map(|c| c.job.scope.tenant.clone()).collect();
    assert_eq!(tenants, [Some("x".to_owned()), Some("y".to_owned())]);
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty());
    complete(&store, &claimed[1]).await;
    let next = store.claim(&request("q", "a", 10, TTL)).await.expect("claim");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.scope.tenant.as_deref(), Some("y"));
}

async fn pauses_stop_claims_and_next_due(url: String) {
    let store = store(&url).await;
    store.enqueue(vec![job_in("a", "q"), job_in("b", "q")]).await.expect("enqueue");
    let (queues, names) = (vec!["q".to_owned()], vec!["a".to_owned(), "b".to_owned()]);
    assert!(store.set_paused("q", None, true).await.expect("pause"));
    assert!(!store.set_paused("q", None, true).await.expect("pause again"));
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty());
    assert_eq!(store.next_due(&queues, &names).await.expect("next_due"), None);
    assert!(store.set_paused("q", Some("a"), true).await.expect("pause a"));
    assert!(store.set_paused("q", None, false).await.expect("resume"));
    let flow = store.queue_flow("q").await.expect("flow").expect("config");
    assert_eq!(flow.config.paused_names.iter().collect::<Vec<_>>(), ["a"]);
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty(), "a is paused on its own");
    assert_eq!(claim_ids(&store, "q", "b", 10).await.len(), 1);
    assert_eq!(store.next_due(&queues, &names).await.expect("next_due"), None);
    assert!(store.set_paused("q", Some("a"), false).await.expect("resume a"));
    assert_eq!(store.next_due(&queues, &names).await.expect("next_due"), Some(Duration::ZERO));
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 1);
    let flows = store.list_queue_flows().await.expect("list");
    assert_eq!(flows.len(), 1);
    assert!(flows[0].config.paused_names.is_empty());
    assert!(store.delete_queue_config("q").await.expect("delete"));
    assert!(store.queue_flow("q").await.expect("flow").is_none());
}

async fn a_first_config_counts_running_jobs(url: String) {
    let store = store(&url).await;
    let jobs = vec![of_tenant("a", "q", Some("t")), job_in("a", "q"), job_in("a", "other")];
    store.enqueue(jobs).await.expect("enqueue");
    let claimed = store.claim(&request("q", "a", 10, TTL)).await.expect("claim");
    assert_eq!(claim_ids(&store, "other", "a", 10).await.len(), 1);
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(5)).await.expect("set");
    assert_eq!(flow.running, 2);
    let tenant_gate = "gate:t\u{1f}q\u{1f}t";
    assert_eq!(existing(&store, &url, &[tenant_gate]).await, [tenant_gate]);
    let flow = store.set_queue_config(&QueueConfig::new("q").max_running(1)).await.expect("set");
    assert_eq!(flow.running, 2, "only a first config counts");
    for c in &claimed {
        complete(&store, c).await;
    }
    assert_eq!(running(&store, "q").await, 0);
    let gates = ["gate:q\u{1f}q", tenant_gate];
    assert!(existing(&store, &url, &gates).await.is_empty(), "gates at zero leave no keys");
}

async fn progress_is_fenced_and_survives_retries(url: String) {
    let store = store(&url).await;
    let job = job_in("a", "q");
    let id = job.id;
    store.enqueue(vec![job]).await.expect("enqueue");
    let claimed = store.claim(&request("q", "a", 1, TTL)).await.expect("claim");
    let mut stale = lease(&claimed[0]);
    stale.token = dispatch_core::LeaseToken::new();
    let updates = [
        ProgressUpdate { lease: lease(&claimed[0]), progress: serde_json::json!({"done": 3}) },
        ProgressUpdate { lease: stale, progress: serde_json::json!("nope") },
    ];
    assert_eq!(store.record_progress(&updates).await.expect("progress"), [true, false]);
    let retry = Outcome::Retry {
        failure: dispatch_core::Failure::new(dispatch_core::FailureKind::Error, "again"),
        run_at: dispatch_core::RunAt::Now,
    };
    store.finish(&[Finish { lease: lease(&claimed[0]), outcome: retry }]).await.expect("retry");
    let again = store.claim(&request("q", "a", 1, TTL)).await.expect("claim");
    assert_eq!(again[0].job.id, id);
    assert_eq!(again[0].job.progress, Some(serde_json::json!({"done": 3})));
}

async fn rescues_and_released_claims_free_their_gates(url: String) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_micros(1_900_000_000_000_000)));
    let store = store(&url).await.with_clock(clock.clone());
    let config = QueueConfig::new("q").max_running(1).tenant_max_running(1);
    store.set_queue_config(&config).await.expect("config");
    let jobs = vec![keyed("a", "q", "k", 1), of_tenant("a", "q", Some("t"))];
    store.enqueue(jobs).await.expect("enqueue");
    assert_eq!(claim_ids(&store, "q", "a", 10).await.len(), 1);
    clock.advance(TTL + Duration::from_secs(1));
    let report = store.rescue_expired(10).await.expect("rescue");
    assert_eq!(report.rescued.len(), 1);
    assert_eq!(running(&store, "q").await, 0, "a rescue gives the slots back");
    let request = request("q", "a", 10, TTL);
    assert_eq!(store.claim(&request).await.expect("claim").len(), 1);
    assert_eq!(store.release_claim(request.token).await.expect("release"), 1);
    assert_eq!(running(&store, "q").await, 0, "a released claim gives the slots back");
    let gates = ["gate:q\u{1f}q", "gate:t\u{1f}q\u{1f}t", "gate:k\u{1f}k"];
    assert!(existing(&store, &url, &gates).await.is_empty(), "gates without a rate at zero");
}

/// Jobs made due by a store version that kept no tenant lanes: a fair queue's claim meets them
/// in its lane of jobs without a tenant and puts them in their lanes.
async fn due_jobs_without_a_lane_get_one(url: String) {
    let store = store(&url).await;
    let jobs = vec![
        of_tenant("a", "q", Some("t1")),
        of_tenant("a", "q", Some("t1")),
        of_tenant("a", "q", Some("t2")),
    ];
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    store.enqueue(jobs).await.expect("enqueue");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> = LANE_KEYS.iter().map(|k| format!("{}:{k}", store.prefix())).collect();
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
    store.set_queue_config(&QueueConfig::new("q").fair()).await.expect("config");
    assert!(claim_ids(&store, "q", "a", 10).await.is_empty(), "found, not yet in lanes");
    assert_eq!(existing(&store, &url, &LANE_KEYS).await, LANE_KEYS);
    assert_eq!(claim_ids(&store, "q", "a", 10).await, [ids[0], ids[2], ids[1]]);
}

/// The running count of gate `gate` (0 when it has no key).
async fn gate_running(store: &RedisStore, url: &str, gate: &str) -> i64 {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let key = format!("{}:gate:{gate}", store.prefix());
    let running: Option<i64> =
        redis::cmd("HGET").arg(key).arg("running").query_async(&mut conn).await.expect("hget");
    running.unwrap_or(0)
}

/// A keyed job claimed in a queue without a config (beside a gated one) holds its key's slot
/// only; that queue's first config then counts it in its queue's gate, not its key's again.
async fn a_key_slot_is_not_counted_twice(url: String) {
    let store = store(&url).await;
    store.set_queue_config(&QueueConfig::new("gated")).await.expect("config");
    store.enqueue(vec![keyed("a", "plain", "k", 2)]).await.expect("enqueue");
    assert!(store.delete_queue_config("plain").await.expect("delete"));
    let mut both = request("gated", "a", 10, TTL);
    both.queues.push("plain".to_owned());
    let claimed = store.claim(&both).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(gate_running(&store, &url, "k\u{1f}k").await, 1);
    assert_eq!(gate_running(&store, &url, "q\u{1f}plain").await, 0);
    let flow = store.set_queue_config(&QueueConfig::new("plain")).await.expect("config");
    assert_eq!(flow.running, 1);
    assert_eq!(gate_running(&store, &url, "k\u{1f}k").await, 1, "not counted twice");
    complete(&store, &claimed[0]).await;
    assert_eq!(gate_running(&store, &url, "k\u{1f}k").await, 0);
    assert_eq!(running(&store, "plain").await, 0);
}
