//! Tests of [`FlowStore`] and of the gated claim: rate limits on the manual clock (exactly the
//! burst, then the rate), fleet-wide running limits that hold across claimers and free on every
//! way out of running, a first config counting what already runs, pause and resume of a queue and
//! of a job name, concurrency keys, tenant limits and fair lanes, other queues claimed in the same
//! call, and progress fenced by the lease and kept across retries. The store is reached as the
//! runtime reaches it, through [`JobStore::as_flow_store`]. Runtime scenarios over workers in
//! real time are in [`scenarios`].

pub mod scenarios;

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_core::{
    ClaimedJob, ConcurrencyKey, ErrorKind, FlowStore, JobId, JobState, JobStore, NewJob, Outcome,
    ProgressUpdate, QueueConfig, Rate, RunAt, Scope,
};
use serde_json::json;

use crate::TestContext;
use crate::support::{assert_kind, failure, ids, job_in, lease, millis, request_in, retry, secs};

/// The queue and job name of this module's jobs.
const Q: &str = "flow-q";
const NAME: &str = "flow-job";

impl TestContext<dyn JobStore> {
    fn flow(&self) -> Arc<dyn FlowStore> {
        let jobs: Arc<dyn JobStore> = self.store.clone();
        jobs.as_flow_store().expect("the store keeps flow control (as_flow_store answers Some)")
    }

    async fn configure(&self, config: QueueConfig) {
        self.flow().set_queue_config(&config).await.expect("set_queue_config");
    }

    async fn jobs(&self, n: usize, each: impl Fn(usize, &mut NewJob)) -> Vec<JobId> {
        let jobs = (0..n)
            .map(|i| {
                let mut job = job_in(NAME, Q);
                each(i, &mut job);
                job
            })
            .collect();
        self.enqueue(jobs).await
    }

    async fn take(&self, limit: usize) -> Vec<ClaimedJob> {
        self.claim_with(&request_in(&[Q], &[NAME], limit)).await
    }

    async fn complete(&self, claimed: &[ClaimedJob]) {
        for job in claimed {
            let done = self.finish(lease(job), Outcome::Complete).await;
            assert!(matches!(done, dispatch_core::FinishResult::Applied { .. }), "{done:?}");
        }
    }
}

fn tenant(name: &str) -> Scope {
    Scope { app: None, tenant: Some(name.to_owned()) }
}

/// A rate of 50 jobs/s with a burst of 10 starts exactly 10 at once, nothing more in that
/// instant, then exactly 50 over the next second however the claims are spaced.
pub async fn a_rate_starts_its_burst_then_its_rate(ctx: TestContext) {
    ctx.configure(QueueConfig::new(Q).rate(Rate::per_second(50).with_burst(10))).await;
    ctx.jobs(200, |_, _| {}).await;
    assert_eq!(ctx.take(100).await.len(), 10, "the burst starts at once");
    assert_eq!(ctx.take(100).await.len(), 0, "nothing more in the same instant");
    let mut started = 0;
    for _ in 0..100 {
        ctx.clock.advance(millis(10));
        started += ctx.take(100).await.len();
    }
    assert_eq!(started, 50, "one period's worth over the next period");
}

/// A queue's running limit holds across claimers and frees a slot on every way out of running:
/// complete, retry, snooze, release, cancel, a permanent failure and a rescue.
pub async fn a_running_limit_holds_and_every_exit_frees_it(ctx: TestContext) {
    ctx.configure(QueueConfig::new(Q).max_running(2)).await;
    ctx.jobs(20, |_, _| {}).await;
    let held = ctx.take(16).await;
    assert_eq!(held.len(), 2);
    assert!(ctx.take(16).await.is_empty(), "a second claimer gets nothing");
    let mut slot = held[0].clone();
    let exits = [
        Outcome::Complete,
        retry("again", secs(3600)),
        Outcome::Snooze { run_at: RunAt::After(secs(3600)) },
        Outcome::Release,
        Outcome::Fail { failure: failure("no") },
    ];
    for exit in exits {
        let applied = ctx.finish(lease(&slot), exit.clone()).await;
        assert!(matches!(applied, dispatch_core::FinishResult::Applied { .. }), "{exit:?}");
        let next = ctx.take(16).await;
        assert_eq!(next.len(), 1, "{exit:?} frees exactly one slot");
        slot = next[0].clone();
    }
    ctx.clock.advance(secs(31));
    let rescued = ctx.store.rescue_expired(100).await.expect("rescue_expired");
    assert_eq!(rescued.rescued.len() + rescued.promoted.len(), 2, "both leases expired");
    assert_eq!(ctx.take(16).await.len(), 2, "a rescue frees the slots");
    let flow = ctx.flow().queue_flow(Q).await.expect("queue_flow").expect("configured");
    assert_eq!(flow.running, 2);
}

/// A queue's first config counts the jobs already running there, so the limit holds from the
/// next claim; they free their slots when they end.
pub async fn a_first_config_counts_what_already_runs(ctx: TestContext) {
    ctx.jobs(10, |_, _| {}).await;
    let early = ctx.take(3).await;
    ctx.configure(QueueConfig::new(Q).max_running(4)).await;
    let flow = ctx.flow().queue_flow(Q).await.expect("queue_flow").expect("configured");
    assert_eq!(flow.running, 3, "the running jobs are counted");
    assert_eq!(ctx.take(16).await.len(), 1);
    ctx.complete(&early).await;
    assert_eq!(ctx.take(16).await.len(), 3);
}

/// A paused queue's jobs are not claimed (enqueue still works; next-due leaves it out), a
/// running job still finishes, and a resume lets claims take them again.
pub async fn a_paused_queue_claims_nothing_until_resumed(ctx: TestContext) {
    ctx.jobs(3, |_, _| {}).await;
    let running = ctx.take(1).await;
    let flow = ctx.flow();
    assert!(flow.set_paused(Q, None, true).await.expect("pause"), "pausing changes it");
    assert!(!flow.set_paused(Q, None, true).await.expect("pause"), "paused already");
    ctx.jobs(2, |_, _| {}).await;
    assert!(ctx.take(16).await.is_empty(), "nothing is claimed while paused");
    let due = ctx.store.next_due(&[Q.to_owned()], &[NAME.to_owned()]).await.expect("next_due");
    assert_eq!(due, None, "a paused queue's jobs are not due");
    ctx.complete(&running).await;
    assert!(flow.set_paused(Q, None, false).await.expect("resume"));
    assert_eq!(ctx.take(16).await.len(), 4, "resumed: every waiting job");
    let config = flow.queue_flow(Q).await.expect("queue_flow").expect("configured").config;
    assert!(!config.paused);
}

/// Pausing one job name leaves the queue's other names running.
pub async fn a_paused_name_waits_while_others_run(ctx: TestContext) {
    ctx.jobs(2, |_, _| {}).await;
    let mut other = job_in("other", Q);
    other.priority = -1;
    ctx.enqueue_one(other).await;
    ctx.flow().set_paused(Q, Some(NAME), true).await.expect("pause name");
    let both = request_in(&[Q], &[NAME, "other"], 16);
    let claimed = ctx.claim_with(&both).await;
    assert_eq!(claimed.iter().map(|c| c.job.name.as_str()).collect::<Vec<_>>(), ["other"]);
    let config = ctx.flow().queue_flow(Q).await.expect("queue_flow").expect("configured").config;
    assert!(config.paused_names.contains(NAME) && !config.paused);
    ctx.flow().set_paused(Q, Some(NAME), false).await.expect("resume name");
    assert_eq!(ctx.claim_with(&both).await.len(), 2);
}

/// At most `limit` running jobs share a concurrency key, in a queue without a config (the
/// enqueue gives it a default one); a finish lets the key's next job start.
pub async fn a_concurrency_key_limits_its_running_jobs(ctx: TestContext) {
    let enqueued = ctx
        .jobs(12, |i, job| job.concurrency = Some(ConcurrencyKey::new(format!("k{}", i % 3), 1)))
        .await;
    let flow = ctx.flow().queue_flow(Q).await.expect("queue_flow");
    assert_eq!(flow.map(|f| f.config), Some(QueueConfig::new(Q)), "a default config");
    let first = ctx.take(16).await;
    let keys: Vec<_> = first.iter().filter_map(|c| c.job.concurrency.clone()).collect();
    assert_eq!(first.len(), 3, "one per key: {keys:?}");
    assert_eq!(ids(&first), enqueued[..3].iter().copied().collect(), "the first of each key");
    assert!(ctx.take(16).await.is_empty(), "every key is full");
    ctx.complete(&first[..1]).await;
    let next = ctx.take(16).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.concurrency, first[0].job.concurrency, "the freed key's next job");
}

/// A key's limit holds across queues: a key full in one queue blocks its jobs in another.
pub async fn a_concurrency_key_holds_across_queues(ctx: TestContext) {
    let key = Some(ConcurrencyKey::new("customer-7", 1));
    let mut a = job_in(NAME, Q);
    a.concurrency = key.clone();
    let mut b = job_in(NAME, "flow-other");
    b.concurrency = key;
    ctx.enqueue(vec![a, b]).await;
    let claimed = ctx.claim_with(&request_in(&[Q, "flow-other"], &[NAME], 16)).await;
    assert_eq!(claimed.len(), 1);
    assert!(ctx.claim_with(&request_in(&["flow-other"], &[NAME], 16)).await.is_empty());
}

/// Tenant limits apply to each tenant of the queue on its own; jobs without a tenant are not
/// held by them.
pub async fn tenant_limits_hold_for_each_tenant(ctx: TestContext) {
    ctx.configure(QueueConfig::new(Q).tenant_max_running(2)).await;
    ctx.jobs(12, |i, job| {
        if i % 4 < 3 {
            job.scope = tenant(["a", "b", "c"][i % 4]);
        }
    })
    .await;
    let claimed = ctx.take(16).await;
    let mut per_tenant: HashMap<Option<String>, usize> = HashMap::new();
    for job in &claimed {
        *per_tenant.entry(job.job.scope.tenant.clone()).or_default() += 1;
    }
    for t in ["a", "b", "c"] {
        assert_eq!(per_tenant.get(&Some(t.to_owned())), Some(&2), "tenant {t}: {per_tenant:?}");
    }
    assert_eq!(per_tenant.get(&None), Some(&3), "no tenant, no tenant limit");
}

/// A fair queue takes its tenants' jobs round-robin: a tenant's 10 jobs enqueued after another
/// tenant's 300 all start in the first claims, not after the backlog.
pub async fn a_fair_queue_serves_tenants_round_robin(ctx: TestContext) {
    ctx.configure(QueueConfig::new(Q).fair()).await;
    ctx.jobs(300, |_, job| job.scope = tenant("big")).await;
    ctx.clock.advance(millis(1));
    let small = ctx.jobs(10, |_, job| job.scope = tenant("small")).await;
    let claimed = ctx.take(20).await;
    assert_eq!(claimed.len(), 20);
    let got = ids(&claimed);
    assert!(small.iter().all(|id| got.contains(id)), "every small-tenant job in the first 20");
    let first: Vec<_> = claimed.iter().take(2).map(|c| c.job.scope.tenant.clone()).collect();
    assert_eq!(first, [Some("big".to_owned()), Some("small".to_owned())], "oldest lane first");
}

/// A limited queue's jobs wait while other queues' jobs are claimed by the same call.
pub async fn other_queues_are_claimed_beside_a_full_one(ctx: TestContext) {
    ctx.configure(QueueConfig::new(Q).max_running(1)).await;
    ctx.jobs(5, |_, _| {}).await;
    let free: Vec<NewJob> = (0..5).map(|_| job_in(NAME, "flow-free")).collect();
    ctx.enqueue(free).await;
    let claimed = ctx.claim_with(&request_in(&[Q, "flow-free"], &[NAME], 16)).await;
    let in_q = claimed.iter().filter(|c| c.job.queue == Q).count();
    assert_eq!((in_q, claimed.len()), (1, 6));
}

/// Configs round-trip, list by queue name and delete; an invalid one is refused and nothing
/// changes; a delete makes the queue's claims plain again.
pub async fn configs_round_trip_list_and_delete(ctx: TestContext) {
    let flow = ctx.flow();
    let mut full = QueueConfig::new("flow-b")
        .max_running(3)
        .rate(Rate::new(5, secs(2)).with_burst(2))
        .tenant_max_running(1)
        .tenant_rate(Rate::per_second(9));
    full.paused_names.insert("x".to_owned());
    let stored = flow.set_queue_config(&full).await.expect("set");
    assert_eq!((stored.config.clone(), stored.running), (full.clone(), 0));
    flow.set_queue_config(&QueueConfig::new("flow-a").fair()).await.expect("set");
    let listed: Vec<String> =
        flow.list_queue_flows().await.expect("list").into_iter().map(|f| f.config.queue).collect();
    assert_eq!(listed, ["flow-a", "flow-b"]);
    assert_eq!(flow.queue_flow("flow-b").await.expect("get").map(|f| f.config), Some(full));
    let bad = QueueConfig::new("flow-a").rate(Rate::per_second(0));
    assert_kind(flow.set_queue_config(&bad).await, ErrorKind::InvalidInput, "a zero rate");
    assert!(flow.queue_flow("flow-a").await.expect("get").is_some_and(|f| f.config.fair));
    assert!(flow.delete_queue_config("flow-a").await.expect("delete"));
    assert!(!flow.delete_queue_config("flow-a").await.expect("delete"));
    assert_eq!(flow.queue_flow("flow-a").await.expect("get"), None);
}

/// Progress is written only under the job's lease, shows on the record, and survives a retry.
pub async fn progress_is_fenced_and_survives_a_retry(ctx: TestContext) {
    let id = ctx.jobs(1, |_, job| job.max_attempts = 3).await[0];
    let claimed = ctx.take(1).await.remove(0);
    let flow = ctx.flow();
    let update = |lease, progress| ProgressUpdate { lease, progress };
    let mut stale = lease(&claimed);
    stale.token = dispatch_core::LeaseToken::new();
    let written = flow
        .record_progress(&[update(lease(&claimed), json!({"done": 40})), update(stale, json!(1))])
        .await
        .expect("record_progress");
    assert_eq!(written, [true, false], "only the lease holder writes");
    assert_eq!(ctx.job(id).await.progress, Some(json!({"done": 40})));
    ctx.finish(lease(&claimed), retry("again", secs(0))).await;
    let again = ctx.take(1).await.remove(0);
    assert_eq!(again.job.progress, Some(json!({"done": 40})), "kept across the retry");
    ctx.finish(lease(&again), Outcome::Complete).await;
    let done = ctx.job(id).await;
    assert_eq!((done.state, done.progress), (JobState::Completed, Some(json!({"done": 40}))));
    let late = flow.record_progress(&[update(lease(&again), json!(99))]).await.expect("record");
    assert_eq!(late, [false], "a finished job takes no progress");
}
