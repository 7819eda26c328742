//! The leadership runtime end to end on the memory store, in real time with short intervals:
//! one leader among several, takeover on stop, stepping down when a write is refused or a
//! renewal fails, and the sweep taking over a dead worker's jobs. Every wait polls against a
//! deadline; no assertion leans on how fast a step happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_cluster::{Cluster, ClusterConfig, ClusterHandle};
use dispatch_core::{
    Call, CallKind, ClaimRequest, ClusterStore, Error, ErrorKind, Event, FailureKind, Hook,
    Intercepted, Interceptor, JobState, LeaseToken, MembershipStore as _, NewJob, Result, WorkerId,
    WorkerRegistration,
};
use dispatch_store_memory::MemoryStore;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(20);

fn config() -> ClusterConfig {
    ClusterConfig {
        leader_ttl: Duration::from_millis(1500),
        renew_interval: Duration::from_millis(100),
        campaign_interval: Duration::from_millis(30),
        heartbeat_interval: Duration::from_millis(100),
        worker_timeout: Duration::from_millis(400),
        sweep_interval: Duration::from_millis(30),
        ..ClusterConfig::default()
    }
}

/// Poll `check` every 10 ms until it holds, failing after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

#[async_trait]
impl Hook for Recorder {
    async fn on_event(&self, event: &Event) {
        self.0.lock().await.push(event.clone());
    }
}

/// The events `hook` received, once the last of them is a `LeadershipLost` (hooks are told
/// from a task of their own, after the leadership changed).
async fn lost(hook: &Recorder) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = hook.0.lock().await.clone();
        if matches!(events.last(), Some(Event::LeadershipLost { .. })) {
            return events;
        }
        assert!(tokio::time::Instant::now() < deadline, "no LeadershipLost: {events:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(store: Arc<dyn ClusterStore>, hook: Arc<Recorder>) -> ClusterHandle {
    Cluster::builder(store).config(config()).hook(hook).build().expect("build").start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_among_three_and_a_takeover_when_it_stops() {
    let store: Arc<dyn ClusterStore> = Arc::new(MemoryStore::new());
    let hooks: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::default()).collect();
    let mut members: Vec<ClusterHandle> =
        hooks.iter().map(|hook| start(store.clone(), hook.clone())).collect();
    eventually("one member leads", || members.iter().any(ClusterHandle::is_leader)).await;
    let first = members.iter().position(ClusterHandle::is_leader).expect("a leader");
    let term = members[first].leader().expect("leading");
    assert_eq!(term.term, 1);
    let stored = store.leader(&term.name).await.expect("leader").expect("held");
    assert_eq!((stored.holder, stored.term), (term.holder, 1));

    members.remove(first).stop().await;
    let recorder = hooks[first].clone();
    let lost = recorder.0.lock().await.clone();
    assert!(
        matches!(lost.as_slice(), [Event::LeaderElected { .. }, Event::LeadershipLost { reason, .. }] if reason == "resigned"),
        "the stopped leader was elected, then resigned: {lost:?}"
    );
    eventually("another member leads", || members.iter().any(ClusterHandle::is_leader)).await;
    let second = members.iter().find_map(ClusterHandle::leader).expect("a leader");
    assert_eq!(second.term, 2, "a resignation frees the leadership for the next term at once");
    assert_ne!(second.holder, term.holder);
    let leaders = members.iter().filter(|m| m.is_leader()).count();
    assert_eq!(leaders, 1);
    for member in members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_term_makes_the_leader_step_down() {
    let store: Arc<dyn ClusterStore> = Arc::new(MemoryStore::new());
    let hook = Arc::new(Recorder::default());
    let member = start(store.clone(), hook.clone());
    eventually("it leads", || member.is_leader()).await;
    let term = member.leader().expect("leading");
    let usurper = store.take_leadership(&term.name, WorkerId::new(), Duration::from_secs(60));
    assert_eq!(usurper.await.expect("take").term, 2);
    eventually("it steps down", || !member.is_leader()).await;
    let events = lost(&hook).await;
    assert!(
        matches!(events.last(), Some(Event::LeadershipLost { leader, .. }) if leader.term == 1),
        "{events:?}"
    );
    let writes = store.leader_writes(&term.name, 1000).await.expect("writes");
    assert!(writes.iter().all(|w| w.term == 1), "no write under a term it does not hold");
    member.stop().await;
}

/// Fails every leadership call while `failing` is set.
#[derive(Default)]
struct FailLeadership {
    failing: AtomicBool,
}

#[async_trait]
impl Interceptor for FailLeadership {
    async fn before(&self, call: Call) -> Result<()> {
        if call.kind == CallKind::Leadership && self.failing.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "the store went away"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_can_not_renew_steps_down() {
    let memory = Arc::new(MemoryStore::new());
    let intercepted = Arc::new(Intercepted::new(memory, FailLeadership::default()));
    let hook = Arc::new(Recorder::default());
    let member = start(intercepted.clone(), hook.clone());
    eventually("it leads", || member.is_leader()).await;
    intercepted.interceptor().failing.store(true, Ordering::SeqCst);
    eventually("it steps down", || !member.is_leader()).await;
    let events = lost(&hook).await;
    assert!(
        matches!(events.last(), Some(Event::LeadershipLost { reason, .. }) if reason.contains("renew")),
        "{events:?}"
    );
    intercepted.interceptor().failing.store(false, Ordering::SeqCst);
    eventually("it leads again once the store answers", || member.is_leader()).await;
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_takes_over_a_silent_workers_jobs() {
    let store = Arc::new(MemoryStore::new());
    let silent = WorkerId::new();
    let registration = WorkerRegistration {
        id: silent,
        host: "h".into(),
        pid: 1,
        queues: vec!["default".into()],
        concurrency: 4,
        version: "t".into(),
    };
    store.register_worker(&registration).await.expect("register");
    let jobs: Vec<NewJob> = (0..3).map(|i| NewJob::new("work", vec![b'0' + i])).collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    dispatch_core::JobStore::enqueue(store.as_ref(), jobs).await.expect("enqueue");
    let claim = ClaimRequest {
        worker: silent,
        queues: vec!["default".into()],
        names: vec!["work".into()],
        limit: 3,
        lease_ttl: Duration::from_secs(3600),
        token: LeaseToken::new(),
    };
    let claimed = dispatch_core::JobStore::claim(store.as_ref(), &claim).await.expect("claim");
    assert_eq!(claimed.len(), 3);

    let member = start(store.clone(), Arc::default());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = dispatch_core::JobStore::get_job(store.as_ref(), ids[0]).await.expect("get");
        if job.is_some_and(|j| j.state == JobState::Available) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sweep never reclaimed the jobs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in ids {
        let job = dispatch_core::JobStore::get_job(store.as_ref(), id).await.expect("get");
        let job = job.expect("stored");
        assert_eq!((job.state, job.attempt), (JobState::Available, 1));
        assert_eq!(job.errors.last().map(|e| e.kind), Some(FailureKind::WorkerLost));
    }
    let workers = store.list_workers().await.expect("list");
    assert_eq!(workers[0].state, dispatch_core::WorkerState::Gone);
    member.stop().await;
}
