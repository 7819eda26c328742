//! Batch edge cases the conformance suite does not pin, answered as if the items ran one after
//! another (as the memory store runs them): one job finished twice in one batch, a stale token
//! before the live one, a lease renewed twice in one heartbeat, a unique key repeated after a
//! held key, concurrent enqueues written in one group. Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, Enqueued, Finish, FinishResult, JobState, JobStore, LeaseRef,
    LeaseToken, NewJob, Outcome, UniqueKey, WorkerId,
};
use dispatch_store_postgres::PostgresStore;

use crate::support::{self, ServerTest};

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("one_job_twice_in_a_finish_batch", |url| Box::pin(one_job_twice_in_a_finish_batch(url))),
        ("one_lease_twice_in_a_heartbeat", |url| Box::pin(one_lease_twice_in_a_heartbeat(url))),
        ("repeats_of_a_held_key_name_the_holder", |url| {
            Box::pin(repeats_of_a_held_key_name_the_holder(url))
        }),
        ("concurrent_enqueues_are_answered_each_for_its_own", |url| {
            Box::pin(concurrent_enqueues_are_answered_each_for_its_own(url))
        }),
        ("one_key_enqueued_by_many_callers_at_once_is_created_once", |url| {
            Box::pin(one_key_enqueued_by_many_callers_at_once_is_created_once(url))
        }),
    ]
}

async fn store(url: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(support::fresh_schema())
        .max_connections(2)
        .build()
        .await
        .expect("store")
}

async fn claim(store: &PostgresStore, limit: usize) -> Vec<ClaimedJob> {
    let request = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".into()],
        names: vec!["twice".into()],
        limit,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    store.claim(&request).await.expect("claim")
}

fn lease(claimed: &ClaimedJob) -> LeaseRef {
    LeaseRef { job_id: claimed.job.id, token: claimed.lease.token }
}

async fn one_job_twice_in_a_finish_batch(url: String) {
    let store = store(&url).await;
    store.enqueue(vec![NewJob::new("twice", vec![]), NewJob::new("twice", vec![])]).await.unwrap();
    let claimed = claim(&store, 2).await;
    let (a, b) = (lease(&claimed[0]), lease(&claimed[1]));
    let stale = LeaseRef { token: LeaseToken::new(), ..b };
    let finish = |lease, outcome| Finish { lease, outcome };
    let results = store
        .finish(&[
            finish(a, Outcome::Complete),
            finish(a, Outcome::Cancel),
            finish(stale, Outcome::Complete),
            finish(b, Outcome::Release),
            finish(stale, Outcome::Complete),
            finish(b, Outcome::Complete),
        ])
        .await
        .expect("finish");
    let applied = |state| FinishResult::Applied { state, dlq_id: None };
    assert_eq!(
        results,
        [
            applied(JobState::Completed),
            FinishResult::AlreadyApplied,
            FinishResult::LeaseLost,
            applied(JobState::Available),
            FinishResult::LeaseLost,
            FinishResult::AlreadyApplied,
        ]
    );
    assert_eq!(store.get_job(a.job_id).await.unwrap().unwrap().state, JobState::Completed);
    assert_eq!(store.get_job(b.job_id).await.unwrap().unwrap().state, JobState::Available);

    // The previous attempt's token before the current one: already applied at its turn.
    let again = claim(&store, 1).await;
    let results = store
        .finish(&[finish(b, Outcome::Complete), finish(lease(&again[0]), Outcome::Complete)])
        .await
        .expect("finish");
    assert_eq!(results, [FinishResult::AlreadyApplied, applied(JobState::Completed)]);
}

async fn one_lease_twice_in_a_heartbeat(url: String) {
    let store = store(&url).await;
    store.enqueue(vec![NewJob::new("twice", vec![])]).await.unwrap();
    let claimed = claim(&store, 1).await;
    let held = lease(&claimed[0]);
    let stale = LeaseRef { token: LeaseToken::new(), ..held };
    let report = store.heartbeat(&[held, stale, held], Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.renewed, [held.job_id, held.job_id]);
    assert_eq!(report.lost, [held.job_id]);
    assert!(report.cancel_requested.is_empty());
}

async fn repeats_of_a_held_key_name_the_holder(url: String) {
    let store = store(&url).await;
    let keyed = || {
        let mut job = NewJob::new("twice", vec![]);
        job.unique = Some(UniqueKey { key: "k".into(), window: None });
        job
    };
    let holder = store.enqueue(vec![keyed()]).await.unwrap()[0].id();
    let results = store.enqueue(vec![keyed(), NewJob::new("twice", vec![]), keyed()]).await;
    let results = results.expect("enqueue");
    assert_eq!(results[0], Enqueued::Duplicate(holder));
    assert!(!results[1].is_duplicate());
    assert_eq!(results[2], Enqueued::Duplicate(holder));
}

/// Callers at once: many more than the store's group writers, so their enqueues share groups.
const CALLERS: usize = 200;

/// Concurrent enqueues are written in groups; each caller is answered for its own jobs only, and
/// a caller whose job reuses a stored ID with another payload is the only one refused.
async fn concurrent_enqueues_are_answered_each_for_its_own(url: String) {
    let store = store(&url).await;
    let stored = NewJob::new("grouped", b"first".to_vec());
    store.enqueue(vec![stored.clone()]).await.expect("first enqueue");
    let mut reused = stored.clone();
    reused.payload = b"other".to_vec();

    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLERS {
        let job = if n == CALLERS / 2 {
            reused.clone()
        } else {
            NewJob::new("grouped", n.to_le_bytes().to_vec())
        };
        let store = store.clone();
        calls.spawn(async move { (job.id, store.enqueue(vec![job]).await) });
    }
    let mut created = 0;
    while let Some(call) = calls.join_next().await {
        let (id, answer) = call.expect("caller");
        if id == reused.id {
            let error = answer.expect_err("the reused ID must be refused");
            assert_eq!(error.kind(), dispatch_core::ErrorKind::Conflict, "{error}");
        } else {
            assert_eq!(answer.expect("enqueue"), vec![Enqueued::Created(id)]);
            created += 1;
        }
    }
    assert_eq!(created, CALLERS - 1);
    let job = store.get_job(stored.id).await.expect("get").expect("the first job");
    assert_eq!(job.payload, b"first", "the refused caller overwrote a stored job");
}

/// Many callers enqueue one unique key at once: whichever groups their enqueues share, one job
/// is created and every other caller is told it is a duplicate of that one.
async fn one_key_enqueued_by_many_callers_at_once_is_created_once(url: String) {
    let store = store(&url).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLERS {
        let mut job = NewJob::new("keyed", n.to_le_bytes().to_vec());
        job.unique = Some(UniqueKey { key: "one".into(), window: None });
        let store = store.clone();
        calls.spawn(async move { store.enqueue(vec![job]).await });
    }
    let mut answers = Vec::new();
    while let Some(call) = calls.join_next().await {
        answers.extend(call.expect("caller").expect("enqueue"));
    }
    let created: Vec<_> = answers.iter().filter(|a| matches!(a, Enqueued::Created(_))).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let holder = created[0].id();
    assert!(answers.iter().all(|a| a.id() == holder), "{answers:?}");
}
