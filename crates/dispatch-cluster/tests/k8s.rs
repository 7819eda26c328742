//! The Kubernetes Lease election against an in-process fake API server: acquire, renew, lose
//! on a conflict, take over after expiry (the store term fencing the previous holder), and the
//! cluster runtime leading through it.
//!
//! The fake server (axum on 127.0.0.1) keeps Leases in memory with a `resourceVersion` counter
//! and answers the three calls the election makes: GET a Lease (404 `Status` when absent), POST
//! one (409 `AlreadyExists` when it exists) and PUT one (409 `Conflict` unless the body carries
//! the current `resourceVersion`). A test can make "another client" write just before the next
//! POST or PUT is handled, which is exactly the race a `resourceVersion` check decides. Every
//! wait polls against a deadline.
#![cfg(feature = "k8s")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dispatch_cluster::k8s::KubernetesElection;
use dispatch_cluster::{Cluster, ClusterConfig, ClusterHandle, Election};
use dispatch_core::{
    ClusterStore, DEFAULT_LEADERSHIP, ErrorKind, LeadershipStore, MembershipStore as _, WorkerId,
};
use dispatch_store_memory::MemoryStore;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NAMESPACE: &str = "dispatch-test";
const LEASE: &str = "dispatch-leader";
const WAIT: Duration = Duration::from_secs(20);

/// The fake API server's memory.
#[derive(Default)]
struct Leases {
    /// Leases by (namespace, name), as JSON objects.
    objects: HashMap<(String, String), Value>,
    /// The last `resourceVersion` handed out.
    version: u64,
    /// A Lease spec "another client" writes just before the next POST or PUT is handled.
    race: Option<Value>,
}

type Shared = Arc<Mutex<Leases>>;

impl Leases {
    /// Store `lease` under a fresh `resourceVersion`; the stored object.
    fn put(&mut self, ns: &str, name: &str, mut lease: Value) -> Value {
        self.version += 1;
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        lease["metadata"]["name"] = json!(name);
        lease["metadata"]["namespace"] = json!(ns);
        lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects.insert((ns.to_owned(), name.to_owned()), lease.clone());
        lease
    }

    /// Let the racing writer write first, if one is set.
    fn race(&mut self, ns: &str, name: &str) {
        if let Some(spec) = self.race.take() {
            self.put(ns, name, json!({ "metadata": {}, "spec": spec }));
        }
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "group": "coordination.k8s.io", "kind": "leases" },
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Leases> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn read_lease(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match lock(&state).objects.get(&(ns, name.clone())) {
        Some(lease) => axum::Json(lease.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io {name:?} not found"),
        ),
    }
}

async fn create_lease(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    axum::Json(lease): axum::Json<Value>,
) -> Response {
    let mut leases = lock(&state);
    let Some(name) = lease["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "no name".to_owned());
    };
    leases.race(&ns, &name);
    if leases.objects.contains_key(&(ns.clone(), name.clone())) {
        let message = format!("leases.coordination.k8s.io {name:?} already exists");
        return status(StatusCode::CONFLICT, "AlreadyExists", message);
    }
    let stored = leases.put(&ns, &name, lease);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn replace_lease(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    axum::Json(lease): axum::Json<Value>,
) -> Response {
    let mut leases = lock(&state);
    leases.race(&ns, &name);
    let Some(current) = leases.objects.get(&(ns.clone(), name.clone())) else {
        let message = format!("leases.coordination.k8s.io {name:?} not found");
        return status(StatusCode::NOT_FOUND, "NotFound", message);
    };
    if lease["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        let message = format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io {name:?}: the object \
             has been modified; please apply your changes to the latest version and try again"
        );
        return status(StatusCode::CONFLICT, "Conflict", message);
    }
    axum::Json(leases.put(&ns, &name, lease)).into_response()
}

/// A running fake API server.
struct FakeApi {
    state: Shared,
    url: String,
    server: JoinHandle<()>,
}

impl FakeApi {
    async fn start() -> Self {
        let state = Shared::default();
        let leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = Router::new()
            .route(leases, post(create_lease))
            .route(&format!("{leases}/{{name}}"), get(read_lease).put(replace_lease))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake API server");
        });
        Self { state, url, server }
    }

    /// A client of this server's Leases in [`NAMESPACE`].
    fn leases(&self) -> Api<Lease> {
        let config = kube::Config::new(self.url.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Api::namespaced(client, NAMESPACE)
    }

    /// An election through this server's Lease, fenced by `store`.
    fn election(&self, store: Arc<dyn LeadershipStore>) -> KubernetesElection {
        KubernetesElection::new(self.leases(), LEASE, store, DEFAULT_LEADERSHIP)
    }

    /// Another client writes the Lease with `spec` now.
    fn write(&self, spec: Value) {
        lock(&self.state).put(NAMESPACE, LEASE, json!({ "metadata": {}, "spec": spec }));
    }

    /// Another client writes the Lease with `spec` just before the next POST or PUT.
    fn race_next_write(&self, spec: Value) {
        lock(&self.state).race = Some(spec);
    }

    /// The Lease as the server keeps it.
    fn lease(&self) -> Value {
        lock(&self.state)
            .objects
            .get(&(NAMESPACE.to_owned(), LEASE.to_owned()))
            .cloned()
            .expect("lease")
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A Lease spec held by someone else, renewed now for a minute.
fn intruder() -> Value {
    json!({
        "holderIdentity": "someone-else",
        "leaseDurationSeconds": 60,
        "renewTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "leaseTransitions": 7,
    })
}

fn memory_store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn acquire_the_first_campaign_wins_and_a_second_holder_does_not() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let election = api.election(store.clone());
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let ttl = Duration::from_secs(10);

    let term = election.campaign(a, ttl).await.expect("campaign").expect("a leads");
    assert_eq!((term.holder, term.term, term.name.as_str()), (a, 1, DEFAULT_LEADERSHIP));
    let lease = api.lease();
    assert_eq!(lease["spec"]["holderIdentity"], json!(a.to_string()));
    assert_eq!(lease["spec"]["leaseDurationSeconds"], json!(10));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(0));
    assert!(lease["spec"]["acquireTime"].is_string() && lease["spec"]["renewTime"].is_string());

    assert_eq!(election.campaign(b, ttl).await.expect("campaign"), None, "a's Lease is live");
    let stored = store.leader(DEFAULT_LEADERSHIP).await.expect("leader").expect("held");
    assert_eq!((stored.holder, stored.term), (a, 1));

    let again = election.campaign(a, ttl).await.expect("campaign").expect("a still leads");
    assert_eq!((again.holder, again.term), (a, 1), "campaigning while holding keeps the term");
}

#[tokio::test]
async fn renew_moves_the_lease_renew_time_and_keeps_the_term() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let election = api.election(store.clone());
    let ttl = Duration::from_secs(10);
    let term = election.campaign(WorkerId::new(), ttl).await.expect("campaign").expect("leads");
    let before: Lease = serde_json::from_value(api.lease()).expect("lease");

    let renewed = election.renew(&term, ttl).await.expect("renew").expect("still leads");
    assert_eq!((renewed.holder, renewed.term), (term.holder, term.term));
    assert!(renewed.expires_at >= term.expires_at);
    let after: Lease = serde_json::from_value(api.lease()).expect("lease");
    let (was, now) = (before.spec.expect("spec"), after.spec.expect("spec"));
    assert!(now.renew_time > was.renew_time, "renewTime moved: {was:?} -> {now:?}");
    assert_eq!(now.acquire_time, was.acquire_time, "a renewal is no new acquisition");
    assert_eq!(now.lease_transitions, Some(0));
    assert_ne!(after.metadata.resource_version, before.metadata.resource_version);
    let stored = store.leader(DEFAULT_LEADERSHIP).await.expect("leader").expect("held");
    assert_eq!(stored.term, 1, "the store term is unchanged");
}

#[tokio::test]
async fn a_concurrent_writer_makes_campaign_and_renew_lose() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let election = api.election(store.clone());
    let a = WorkerId::new();
    let ttl = Duration::from_secs(10);

    // Lost the create: another client created the Lease between our GET (404) and POST.
    api.race_next_write(intruder());
    assert_eq!(election.campaign(a, ttl).await.expect("campaign"), None);
    assert_eq!(api.lease()["spec"]["holderIdentity"], json!("someone-else"));

    // Lost the takeover of a free Lease: another client wrote between our GET and PUT.
    api.write(json!({ "leaseTransitions": 3 }));
    api.race_next_write(intruder());
    assert_eq!(election.campaign(a, ttl).await.expect("campaign"), None);
    assert_eq!(api.lease()["spec"]["holderIdentity"], json!("someone-else"));
    assert_eq!(store.leader(DEFAULT_LEADERSHIP).await.expect("leader"), None, "no store term");

    // Without a race the free Lease is taken.
    api.write(json!({ "leaseTransitions": 3 }));
    let term = election.campaign(a, ttl).await.expect("campaign").expect("a leads");
    assert_eq!(term.term, 1);
    assert_eq!(api.lease()["spec"]["leaseTransitions"], json!(4));

    // Lost the renewal: another client wrote between our GET and PUT.
    api.race_next_write(intruder());
    assert_eq!(election.renew(&term, ttl).await.expect("renew"), None);
    assert_eq!(election.campaign(a, ttl).await.expect("campaign"), None, "the intruder holds it");
}

#[tokio::test]
async fn another_holder_takes_over_after_expiry_and_the_old_term_is_fenced() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let election = api.election(store.clone());
    let (a, b) = (WorkerId::new(), WorkerId::new());

    let first = election.campaign(a, Duration::from_secs(1)).await.expect("campaign");
    let first = first.expect("a leads");
    assert_eq!(api.lease()["spec"]["leaseDurationSeconds"], json!(1));
    assert_eq!(election.campaign(b, Duration::from_secs(10)).await.expect("campaign"), None);

    // a stops renewing; b campaigns until a's Lease has run out.
    let deadline = tokio::time::Instant::now() + WAIT;
    let second = loop {
        if let Some(term) = election.campaign(b, Duration::from_secs(10)).await.expect("campaign") {
            break term;
        }
        assert!(tokio::time::Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((second.holder, second.term), (b, 2), "the next store term");
    let lease = api.lease();
    assert_eq!(lease["spec"]["holderIdentity"], json!(b.to_string()));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));

    assert_eq!(election.renew(&first, Duration::from_secs(1)).await.expect("renew"), None);
    let fenced = store.sweep_workers(&first, Duration::from_secs(10), 100).await;
    let error = fenced.expect_err("a write under term 1 is refused");
    assert_eq!(error.kind(), ErrorKind::NotLeader, "{error}");
    store.sweep_workers(&second, Duration::from_secs(10), 100).await.expect("term 2 writes");
}

#[tokio::test]
async fn resign_frees_the_lease_for_the_next_holder_at_once() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let election = api.election(store.clone());
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let ttl = Duration::from_secs(60);
    let first = election.campaign(a, ttl).await.expect("campaign").expect("a leads");
    election.resign(&first).await.expect("resign");
    assert_eq!(api.lease()["spec"]["holderIdentity"], Value::Null);
    let second = election.campaign(b, ttl).await.expect("campaign").expect("b leads");
    assert_eq!((second.holder, second.term), (b, 2));
    election.resign(&first).await.expect("resigning a lost term changes nothing");
    assert_eq!(api.lease()["spec"]["holderIdentity"], json!(b.to_string()));
}

/// Poll `check` every 10 ms until it holds, failing after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_runtime_leads_through_the_lease() {
    let api = FakeApi::start().await;
    let store = memory_store();
    let config = ClusterConfig {
        leader_ttl: Duration::from_secs(2),
        renew_interval: Duration::from_millis(200),
        campaign_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(100),
        worker_timeout: Duration::from_secs(1),
        sweep_interval: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    let start = |holder: WorkerId| -> ClusterHandle {
        let election = Arc::new(api.election(store.clone()));
        let cluster_store: Arc<dyn ClusterStore> = store.clone();
        Cluster::builder(cluster_store)
            .config(config.clone())
            .holder(holder)
            .election(election)
            .build()
            .expect("build")
            .start()
    };
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let first = start(a);
    eventually("a leads", || first.is_leader()).await;
    let term = first.leader().expect("leading");
    assert_eq!((term.holder, term.term), (a, 1));
    assert_eq!(api.lease()["spec"]["holderIdentity"], json!(a.to_string()));

    let second = start(b);
    let renewed = api.lease()["spec"]["renewTime"].clone();
    eventually("a renews the Lease", || api.lease()["spec"]["renewTime"] != renewed).await;
    assert!(first.is_leader() && !second.is_leader(), "one leader");

    first.stop().await;
    eventually("b leads", || second.is_leader()).await;
    let term = second.leader().expect("leading");
    assert_eq!((term.holder, term.term), (b, 2), "a resigned; b took the next term");
    assert_eq!(api.lease()["spec"]["holderIdentity"], json!(b.to_string()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let writes = store.leader_writes(DEFAULT_LEADERSHIP, 1000).await.expect("writes");
        if writes.iter().any(|w| w.term == 2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b's sweep never wrote: {writes:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.stop().await;
}
