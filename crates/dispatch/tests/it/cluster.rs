//! Clustered dispatchers on one store: one leader, registered workers, draining.

use std::sync::Arc;
use std::time::Duration;

use dispatch::cluster::ClusterConfig;
use dispatch::core::{ClusterStore, JobState, JobStore, WorkerState};
use dispatch::prelude::*;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(30);

fn fast() -> ClusterConfig {
    ClusterConfig {
        leader_ttl: Duration::from_millis(2000),
        renew_interval: Duration::from_millis(100),
        campaign_interval: Duration::from_millis(30),
        heartbeat_interval: Duration::from_millis(50),
        worker_timeout: Duration::from_millis(1000),
        sweep_interval: Duration::from_millis(50),
        ..ClusterConfig::default()
    }
}

/// Poll `check` until it holds, failing after [`WAIT`].
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn noop() -> JobDefinition<u64> {
    JobDefinition::new("noop", |_ctx: JobContext, _n: u64| async { Ok(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_dispatchers_elect_one_leader_register_and_leave() {
    let store = MemoryStore::new();
    let members: Vec<Dispatcher> = (0..2)
        .map(|i| {
            Dispatcher::builder()
                .store(store.clone())
                .register(noop())
                .cluster(fast())
                .app_version(format!("v{i}"))
                .build()
                .expect("build")
        })
        .collect();
    let mut members = members;
    for member in &mut members {
        member.start().await.expect("start");
    }
    let ids = {
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(members[0].enqueue(&noop(), n).await.expect("enqueue").id());
        }
        ids
    };
    for id in ids {
        members[0].wait(id, WAIT).await.expect("done");
    }
    let shared: Arc<dyn ClusterStore> = Arc::new(store.clone());
    eventually("one of them leads", || async {
        members.iter().filter(|m| m.leader().is_some()).count() == 1
    })
    .await;
    let workers = shared.list_workers().await.expect("list");
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.state == WorkerState::Active));
    let mut versions: Vec<&str> = workers.iter().map(|w| w.registration.version.as_str()).collect();
    versions.sort_unstable();
    assert_eq!(versions, ["v0", "v1"]);
    let leader = members.iter().find_map(Dispatcher::leader).expect("a leader");
    assert!(workers.iter().any(|w| w.registration.id == leader.holder), "the leader is a worker");
    for member in &mut members {
        member.stop().await;
    }
    assert!(shared.list_workers().await.expect("list").is_empty(), "both deregistered");
    let stored = shared.leader(&leader.name).await.expect("leader").expect("held once");
    assert!(stored.expires_at <= dispatch::core::Clock::now(&dispatch::core::SystemClock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_claims_nothing_new_and_finishes_its_jobs() {
    let store = MemoryStore::new();
    let gate = Arc::new(Semaphore::new(0));
    let blocked = gate.clone();
    let slow = JobDefinition::new("slow", move |_ctx: JobContext, _n: u64| {
        let gate = blocked.clone();
        async move {
            let _permit = gate.acquire().await.map_err(|e| JobError::retry(e.to_string()))?;
            Ok(())
        }
    });
    let mut first = Dispatcher::builder()
        .store(store.clone())
        .register(slow.clone())
        .concurrency(4)
        .cluster(fast())
        .build()
        .expect("build");
    first.start().await.expect("start");
    let mut running = Vec::new();
    for n in 0..4 {
        running.push(first.enqueue(&slow, n).await.expect("enqueue").id());
    }
    let jobs: Arc<dyn JobStore> = Arc::new(store.clone());
    eventually("four jobs run", || async {
        let mut all = true;
        for &id in &running {
            let job = jobs.get_job(id).await.expect("get").expect("stored");
            all &= job.state == JobState::Running;
        }
        all
    })
    .await;

    let registry: Arc<dyn ClusterStore> = Arc::new(store.clone());
    let worker = registry.list_workers().await.expect("list")[0].registration.id;
    registry.drain_worker(worker).await.expect("drain");
    eventually("the worker learns it drains", || async {
        first.health().is_some_and(|health| health.draining)
    })
    .await;
    let later = dispatch::job::JobClient::standalone(jobs.clone());
    let mut waiting = Vec::new();
    for n in 4..8 {
        waiting.push(later.enqueue(&slow, n).await.expect("enqueue").id());
    }
    let stopping = tokio::spawn(async move {
        let report = first.run_until_shutdown().await.expect("run");
        (first, report)
    });
    gate.add_permits(4);
    let (_first, report) =
        tokio::time::timeout(WAIT, stopping).await.expect("stops").expect("task");
    assert_eq!(report.cancelled, 0, "its in-flight jobs finished");
    for id in running {
        assert_eq!(
            jobs.get_job(id).await.expect("get").expect("stored").state,
            JobState::Completed
        );
    }
    for id in waiting {
        let job = jobs.get_job(id).await.expect("get").expect("stored");
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Available, 0),
            "a draining worker claims nothing"
        );
    }
    assert!(registry.list_workers().await.expect("list").is_empty(), "it deregistered");
}

/// With retention on, the leader prunes completed jobs by the policy's age while a job inside
/// its unique key's window stays; retention without a cluster is refused at build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_prunes_finished_jobs_by_the_policy() {
    use dispatch::core::RetentionPolicy;

    let store = MemoryStore::new();
    let policy =
        RetentionPolicy { completed: Some(Duration::from_millis(1)), ..RetentionPolicy::default() };
    let refused = Dispatcher::builder().store(store.clone()).retention(policy.clone()).build();
    assert!(refused.is_err(), "retention is leader work: a cluster is required");

    let config = ClusterConfig { retention_interval: Duration::from_millis(50), ..fast() };
    let mut dispatcher = Dispatcher::builder()
        .store(store.clone())
        .register(noop())
        .cluster(config)
        .retention(policy)
        .build()
        .expect("build");
    dispatcher.start().await.expect("start");
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(dispatcher.enqueue(&noop(), n).await.expect("enqueue").id());
    }
    let options =
        dispatch::job::EnqueueOptions::new().unique_for("nightly", Duration::from_secs(3600));
    let held = dispatcher.enqueue_with(&noop(), 99, options).await.expect("enqueue").id();
    let jobs: Arc<dyn JobStore> = Arc::new(store.clone());
    eventually("every completed job outside a unique window is pruned", || async {
        let mut gone = 0;
        for &id in &ids {
            gone += usize::from(jobs.get_job(id).await.expect("get").is_none());
        }
        gone == ids.len()
    })
    .await;
    let kept = jobs.get_job(held).await.expect("get").expect("inside its window: kept");
    assert_eq!(kept.state, JobState::Completed);
    let cluster: Arc<dyn ClusterStore> = Arc::new(store.clone());
    let writes = cluster.leader_writes("dispatch", 1000).await.expect("writes");
    assert!(writes.iter().any(|w| w.action == "prune"), "pruned under the leader's term");
    dispatcher.stop().await;
}
