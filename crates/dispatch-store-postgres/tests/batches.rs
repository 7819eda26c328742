//! Batch edge cases the conformance suite does not pin, answered as if the items ran one after
//! another (as the memory store runs them): one job finished twice in one batch, a stale token
//! before the live one, a lease renewed twice in one heartbeat, a unique key repeated after a
//! held key. Needs the test server (see `support`).

mod support;

use std::process::ExitCode;
use std::time::Duration;

use dispatch_core::{
    ClaimRequest, ClaimedJob, Enqueued, Finish, FinishResult, JobState, JobStore, LeaseRef,
    LeaseToken, NewJob, Outcome, UniqueKey, WorkerId,
};
use dispatch_store_postgres::PostgresStore;

fn main() -> ExitCode {
    support::run(vec![
        ("one_job_twice_in_a_finish_batch", |url| Box::pin(one_job_twice_in_a_finish_batch(url))),
        ("one_lease_twice_in_a_heartbeat", |url| Box::pin(one_lease_twice_in_a_heartbeat(url))),
        ("repeats_of_a_held_key_name_the_holder", |url| {
            Box::pin(repeats_of_a_held_key_name_the_holder(url))
        }),
    ])
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
