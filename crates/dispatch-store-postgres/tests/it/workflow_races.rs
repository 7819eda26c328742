//! Workflow races the conformance suite can not stage (it runs one call at a time): concurrent
//! publishes reach distinct waiters, one event each; concurrent starts with one idempotency key
//! make one run; a publish racing a suspend of its key, or a wait's resolution, never strands or
//! double-answers the event; a cancel racing a suspend is never lost. Several stores (pools) on one
//! schema, so the calls really overlap. Also, PostgreSQL specifics: expired kept events do not pile
//! up; a run error holding a NUL character (which `text` can not store) is kept with the NUL
//! marked. Needs the test server (see `support`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, Clock, EventId, EventWait, JobId, JobStore, LeaseRef, LeaseToken, ManualClock,
    NewEvent, NewJob, NewRun, PageRequest, Published, RunCancel, RunEnd, RunFilter, RunId, Scope,
    Started, Suspend, SuspendOutcome, SystemClock, Timestamp, WaitResolution, WorkerId,
    WorkflowStore,
};
use dispatch_store_postgres::PostgresStore;
use sqlx::AssertSqlSafe;
use tokio::sync::Barrier;

use crate::support::{self, ServerTest};

/// The drive jobs' name.
const DRIVE: &str = "wf-race-drive";
/// Rounds of each two-party race.
const ROUNDS: usize = 25;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("concurrent_events_reach_distinct_waiters", |url| {
            Box::pin(concurrent_events_reach_distinct_waiters(url))
        }),
        ("concurrent_starts_with_one_key_make_one_run", |url| {
            Box::pin(concurrent_starts_with_one_key_make_one_run(url))
        }),
        ("a_publish_racing_a_suspend_is_delivered_once", |url| {
            Box::pin(a_publish_racing_a_suspend_is_delivered_once(url))
        }),
        ("a_publish_racing_a_timeout_is_answered_once", |url| {
            Box::pin(a_publish_racing_a_timeout_is_answered_once(url))
        }),
        ("publishes_purge_expired_kept_events", |url| {
            Box::pin(publishes_purge_expired_kept_events(url))
        }),
        ("a_run_error_with_nul_is_kept", |url| Box::pin(a_run_error_with_nul_is_kept(url))),
        ("a_cancel_racing_a_suspend_is_never_lost", |url| {
            Box::pin(a_cancel_racing_a_suspend_is_never_lost(url))
        }),
    ]
}

/// `n` stores (each its own pool) on one fresh schema.
async fn stores(url: &str, n: usize) -> Vec<PostgresStore> {
    let schema = support::fresh_schema();
    let mut stores = Vec::new();
    for _ in 0..n {
        let store = PostgresStore::builder(url)
            .schema(&schema)
            .application_name("dispatch-workflow-races")
            .max_connections(2)
            .build()
            .await
            .expect("store");
        stores.push(store);
    }
    stores
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn new_run(idempotency_key: Option<&str>) -> (NewRun, NewJob) {
    let run = NewRun {
        id: RunId::new(),
        name: "race".into(),
        version: 1,
        input: Vec::new(),
        scope: Scope::default(),
        idempotency_key: idempotency_key.map(str::to_owned),
        parent: None,
    };
    let drive = NewJob::new(DRIVE, run.id.to_string().into_bytes());
    (run, drive)
}

/// Start `n` runs with their drive jobs on a queue of their own, and claim those: each run with
/// its lease, and the queue.
async fn driven_runs(store: &PostgresStore, n: usize) -> (Vec<(RunId, LeaseRef)>, String) {
    let queue = format!("q-{}", RunId::new());
    let mut runs: HashMap<JobId, RunId> = HashMap::new();
    for _ in 0..n {
        let (run, mut drive) = new_run(None);
        drive.queue.clone_from(&queue);
        runs.insert(drive.id, run.id);
        store.start_run(run, drive).await.expect("start_run");
    }
    let claimed = claim(store, &queue, n).await;
    assert_eq!(claimed.len(), n, "every drive job is due");
    let runs = claimed.into_iter().map(|lease| (runs[&lease.job_id], lease)).collect();
    (runs, queue)
}

/// Claim up to `limit` drive jobs of `queue`.
async fn claim(store: &PostgresStore, queue: &str, limit: usize) -> Vec<LeaseRef> {
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec![queue.to_owned()],
        names: vec![DRIVE.into()],
        limit,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let claimed = store.claim(&request).await.expect("claim");
    claimed.iter().map(|c| LeaseRef { job_id: c.job.id, token: c.lease.token }).collect()
}

fn wait(name: &str, correlation: &str, deadline: Timestamp) -> Suspend {
    let wait =
        EventWait { key: "w".into(), name: name.into(), correlation: correlation.into(), deadline };
    Suspend { run: RunId::new(), until: None, waits: vec![wait], waiting: vec![] }
}

fn event(name: &str, correlation: &str, payload: &str) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        name: name.into(),
        correlation: correlation.into(),
        payload: payload.as_bytes().to_vec(),
        scope: Scope::default(),
        broadcast: false,
        keep_for: Duration::from_secs(3600),
    }
}

/// Ten runs wait on one (name, key); four events published at once reach four of them, one
/// each, and the six others still wait.
async fn concurrent_events_reach_distinct_waiters(url: String) {
    let stores = stores(&url, 4).await;
    for round in 0..3 {
        let corr = format!("o-{round}");
        let (runs, queue) = driven_runs(&stores[0], 10).await;
        for &(run, lease) in &runs {
            let suspend = Suspend { run, ..wait("paid", &corr, now() + Duration::from_secs(3600)) };
            let outcome = stores[0].suspend_run(lease, suspend).await.expect("suspend_run");
            assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
        }
        let barrier = Arc::new(Barrier::new(4));
        let publishes = stores.iter().enumerate().map(|(i, store)| {
            let (store, barrier, event) =
                (store.clone(), barrier.clone(), event("paid", &corr, &i.to_string()));
            tokio::spawn(async move {
                barrier.wait().await;
                store.publish_event(event).await.expect("publish_event")
            })
        });
        let published: Vec<Published> = futures::future::join_all(publishes)
            .await
            .into_iter()
            .map(|r| r.expect("task"))
            .collect();
        let mut reached = HashSet::new();
        for (i, p) in published.iter().enumerate() {
            assert_eq!((p.delivered_to.len(), p.kept), (1, false), "event {i}: {p:?}");
            assert!(reached.insert(p.delivered_to[0]), "two events reached {:?}", p.delivered_to);
            let checkpoints =
                stores[0].get_checkpoints(p.delivered_to[0]).await.expect("checkpoints");
            assert_eq!(checkpoints.len(), 1);
            assert_eq!(checkpoints[0].data, i.to_string().into_bytes(), "its own event's payload");
        }
        for &(run, _) in &runs {
            let checkpoints = stores[0].get_checkpoints(run).await.expect("checkpoints");
            assert_eq!(checkpoints.len(), usize::from(reached.contains(&run)), "run {run}");
        }
        assert_eq!(claim(&stores[0], &queue, 20).await.len(), 4, "the four reached runs are due");
        for _ in 0..6 {
            let p = stores[1].publish_event(event("paid", &corr, "late")).await.unwrap();
            assert_eq!(p.delivered_to.len(), 1, "{p:?}");
            assert!(reached.insert(p.delivered_to[0]));
        }
        assert!(stores[1].publish_event(event("paid", &corr, "none")).await.unwrap().kept);
    }
}

/// Two starts with one idempotency key at once make one run and one drive job.
async fn concurrent_starts_with_one_key_make_one_run(url: String) {
    let stores = stores(&url, 2).await;
    for round in 0..ROUNDS {
        let key = format!("order-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let starts = stores.iter().map(|store| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let (run, drive) = new_run(Some(&key));
            let ids = (run.id, drive.id);
            tokio::spawn(async move {
                barrier.wait().await;
                (ids, store.start_run(run, drive).await.expect("start_run"))
            })
        });
        let results: Vec<_> =
            futures::future::join_all(starts).await.into_iter().map(|r| r.expect("task")).collect();
        let created: Vec<_> =
            results.iter().filter(|(_, s)| matches!(s, Started::Created(_))).collect();
        assert_eq!(created.len(), 1, "round {round}: {results:?}");
        let ((winner, winner_job), _) = *created[0];
        for ((run, job), started) in &results {
            assert_eq!(started.id(), winner, "round {round}: {results:?}");
            let stored = stores[0].get_job(*job).await.expect("get_job");
            assert_eq!(stored.is_some(), *run == winner, "only the winner's drive job exists");
        }
        assert_eq!(stores[0].get_run(winner).await.unwrap().expect("run").drive_job, winner_job);
    }
    let all = stores[0].list_runs(&RunFilter::default(), &PageRequest::first(1000)).await.unwrap();
    assert_eq!(all.items.len(), ROUNDS);
}

/// A run suspends on a key while an event of that key is published: either the suspend takes
/// the kept event or the publish reaches the wait; never neither, never both.
async fn a_publish_racing_a_suspend_is_delivered_once(url: String) {
    let stores = stores(&url, 2).await;
    for round in 0..ROUNDS {
        let corr = format!("c-{round}");
        let (runs, _) = driven_runs(&stores[0], 1).await;
        let (run, lease) = runs[0];
        let suspend = Suspend { run, ..wait("race", &corr, now() + Duration::from_secs(3600)) };
        let barrier = Arc::new(Barrier::new(2));
        let (a, b) = (stores[0].clone(), stores[1].clone());
        let (ba, bb) = (barrier.clone(), barrier);
        let suspending = tokio::spawn(async move {
            ba.wait().await;
            a.suspend_run(lease, suspend).await.expect("suspend_run")
        });
        let event = event("race", &corr, "x");
        let publishing = tokio::spawn(async move {
            bb.wait().await;
            b.publish_event(event).await.expect("publish_event")
        });
        let (outcome, published) = (suspending.await.unwrap(), publishing.await.unwrap());
        match outcome {
            SuspendOutcome::Delivered => {
                assert_eq!((published.delivered_to.len(), published.kept), (0, true), "{round}")
            }
            SuspendOutcome::Suspended { .. } => {
                assert_eq!((published.delivered_to, published.kept), (vec![run], false), "{round}")
            }
            SuspendOutcome::CancelRequested => panic!("round {round}: no cancel was requested"),
        }
        let checkpoints = stores[0].get_checkpoints(run).await.unwrap();
        assert_eq!(checkpoints.len(), 1, "round {round}: the event is the wait's checkpoint");
    }
}

/// A run is cancelled while its drive suspends it for an hour: either the suspend sees the
/// request (and changes nothing), or it suspends first and the cancel makes the drive job due
/// at once; never a suspended run with a cancel request whose drive sleeps on.
async fn a_cancel_racing_a_suspend_is_never_lost(url: String) {
    let stores = stores(&url, 2).await;
    for round in 0..ROUNDS {
        let (runs, queue) = driven_runs(&stores[0], 1).await;
        let (run, lease) = runs[0];
        let suspend = Suspend { run, ..wait("never", "k", now() + Duration::from_secs(3600)) };
        let barrier = Arc::new(Barrier::new(2));
        let (a, b) = (stores[0].clone(), stores[1].clone());
        let (ba, bb) = (barrier.clone(), barrier);
        let suspending = tokio::spawn(async move {
            ba.wait().await;
            a.suspend_run(lease, suspend).await.expect("suspend_run")
        });
        let cancelling = tokio::spawn(async move {
            bb.wait().await;
            b.request_run_cancel(run, "stop").await.expect("request_run_cancel")
        });
        let (outcome, cancel) = (suspending.await.unwrap(), cancelling.await.unwrap());
        assert_eq!(cancel, RunCancel::Requested, "round {round}");
        match outcome {
            SuspendOutcome::CancelRequested => {
                let job = stores[0].get_job(lease.job_id).await.unwrap().expect("drive job");
                assert_eq!(job.state, dispatch_core::JobState::Running, "round {round}");
            }
            SuspendOutcome::Suspended { .. } => {
                let due = claim(&stores[0], &queue, 1).await;
                assert_eq!(due.len(), 1, "round {round}: the cancel made the drive job due");
            }
            SuspendOutcome::Delivered => panic!("round {round}: no event was published"),
        }
        let stored = stores[0].get_run(run).await.unwrap().expect("run");
        assert_eq!(stored.cancel_requested.as_deref(), Some("stop"), "round {round}");
    }
}

/// A wait whose deadline passed is resolved while its event is published: either the event is
/// delivered and resolution says so, or resolution times out and the event is kept.
async fn a_publish_racing_a_timeout_is_answered_once(url: String) {
    let stores = stores(&url, 2).await;
    for round in 0..ROUNDS {
        let corr = format!("c-{round}");
        let (runs, queue) = driven_runs(&stores[0], 1).await;
        let (run, lease) = runs[0];
        // Due at once: the drive job is snoozed until a deadline already past.
        let suspend = Suspend { run, ..wait("late", &corr, now() - Duration::from_secs(1)) };
        let outcome = stores[0].suspend_run(lease, suspend).await.expect("suspend_run");
        assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
        let lease = claim(&stores[0], &queue, 1).await[0];
        let barrier = Arc::new(Barrier::new(2));
        let (a, b) = (stores[0].clone(), stores[1].clone());
        let (ba, bb) = (barrier.clone(), barrier);
        let resolving = tokio::spawn(async move {
            ba.wait().await;
            a.resolve_wait(lease, run, "w").await.expect("resolve_wait")
        });
        let event = event("late", &corr, "x");
        let publishing = tokio::spawn(async move {
            bb.wait().await;
            b.publish_event(event).await.expect("publish_event")
        });
        let (resolution, published) = (resolving.await.unwrap(), publishing.await.unwrap());
        match resolution {
            WaitResolution::Delivered(data) => {
                assert_eq!(data, b"x".to_vec());
                assert_eq!((published.delivered_to, published.kept), (vec![run], false), "{round}");
            }
            WaitResolution::TimedOut => {
                assert_eq!((published.delivered_to.len(), published.kept), (0, true), "{round}");
                assert!(stores[0].get_checkpoints(run).await.unwrap().is_empty(), "round {round}");
            }
        }
    }
}

/// Every publish deletes a few expired kept events, of any key: they do not pile up.
async fn publishes_purge_expired_kept_events(url: String) {
    let clock = Arc::new(ManualClock::new(now()));
    let store = stores(&url, 1).await.remove(0).with_clock(clock.clone());
    let kept = || async {
        let sql = format!("SELECT count(*) FROM \"{}\".kept_events", store.schema());
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(store.pool()).await.unwrap();
        n
    };
    for i in 0..40 {
        let mut event = event("unclaimed", &i.to_string(), "x");
        event.keep_for = Duration::from_secs(5);
        assert!(store.publish_event(event).await.unwrap().kept);
    }
    assert_eq!(kept().await, 40);
    clock.advance(Duration::from_secs(6));
    for _ in 0..3 {
        let mut event = event("other", "k", "x");
        event.keep_for = Duration::from_secs(5);
        assert!(store.publish_event(event).await.unwrap().kept);
    }
    assert_eq!(kept().await, 3, "only the unexpired events are left");
}

/// A run failed with an error holding NUL keeps the error, the NUL replaced by U+FFFD.
async fn a_run_error_with_nul_is_kept(url: String) {
    let store = stores(&url, 1).await.remove(0);
    let (runs, _) = driven_runs(&store, 1).await;
    let (run, lease) = runs[0];
    store.end_run(lease, run, RunEnd::Failed("bad\0byte".into())).await.expect("end_run");
    let stored = store.get_run(run).await.unwrap().expect("run");
    assert_eq!(stored.error.as_deref(), Some("bad\u{fffd}byte"));
}
