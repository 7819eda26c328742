//! Push wake-ups over LISTEN/NOTIFY: a subscriber hears enqueues made by another store on the
//! same schema, one wake-up per batch, replays and releases too, never a rolled-back enqueue;
//! after its listener connection is killed it says "any queue" and hears later enqueues again;
//! its stream ends when the store is dropped. Needs the test server (see `support`).

use std::time::Duration;

use dispatch_core::{
    ClaimRequest, DlqStore, Failure, FailureKind, Finish, FinishResult, JobStore, LeaseRef,
    LeaseToken, NewJob, Outcome, Wakeup, WakeupStream, WorkerId,
};
use dispatch_store_postgres::PostgresStore;
use futures::StreamExt;
use sqlx::{Connection, PgConnection, PgPool};

use crate::listener::{app_name, listener_pids, two_stores};
use crate::support::{self, ServerTest};

/// How long a wake-up may take to arrive. A stream sees only pushed notifications (it never
/// polls), so a longer limit does not let a missing push pass; it only keeps a loaded machine
/// from failing a test whose wake-up was on its way. Absence is checked through a barrier job,
/// never by waiting out this limit.
const PROMPT: Duration = Duration::from_secs(10);
/// How long (re)connecting the listener may take: above the listener's own 10 s connect
/// timeout, so one slow attempt on a loaded machine is retried within it.
const RECONNECT: Duration = Duration::from_secs(60);

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("another_stores_enqueue_wakes_a_subscriber", |url| {
            Box::pin(another_stores_enqueue_wakes_a_subscriber(url))
        }),
        ("one_wakeup_per_batch", |url| Box::pin(one_wakeup_per_batch(url))),
        ("replay_and_release_wake_subscribers", |url| {
            Box::pin(replay_and_release_wake_subscribers(url))
        }),
        ("a_rolled_back_enqueue_wakes_nobody", |url| {
            Box::pin(a_rolled_back_enqueue_wakes_nobody(url))
        }),
        ("a_killed_listener_reconnects_and_says_any", |url| {
            Box::pin(a_killed_listener_reconnects_and_says_any(url))
        }),
        ("the_stream_ends_when_the_store_is_dropped", |url| {
            Box::pin(the_stream_ends_when_the_store_is_dropped(url))
        }),
    ]
}

/// Subscribe, and wait for the listener's first `Wakeup::any` (it is listening then).
async fn subscribe(store: &PostgresStore) -> WakeupStream {
    let mut stream = store.wakeups().expect("the PostgreSQL store pushes wake-ups");
    let first = tokio::time::timeout(RECONNECT, stream.next()).await;
    assert_eq!(first.expect("the listener connects"), Some(Wakeup::any()));
    stream
}

/// Wake-ups until one equals `last` (included), waiting at most `limit` for each.
async fn until(stream: &mut WakeupStream, last: &Wakeup, limit: Duration) -> Vec<Wakeup> {
    let mut seen = Vec::new();
    while seen.last() != Some(last) {
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(wakeup)) => seen.push(wakeup),
            Ok(None) => panic!("the stream ended after {seen:?}"),
            Err(_) => panic!("no {last:?} within {limit:?}; got {seen:?}"),
        }
    }
    seen
}

fn job_in(name: &str, queue: &str) -> NewJob {
    let mut job = NewJob::new(name, b"{}".to_vec());
    job.queue = queue.to_owned();
    job
}

/// Enqueue one job in queue `barrier` and wait for its wake-up: notifications arrive in commit
/// order, so everything before it has arrived too. The wake-ups before the barrier's.
async fn through_barrier(store: &PostgresStore, stream: &mut WakeupStream) -> Vec<Wakeup> {
    store.enqueue(vec![job_in("mark", "barrier")]).await.expect("enqueue");
    let mut seen = until(stream, &Wakeup::queue("barrier"), PROMPT).await;
    seen.pop();
    seen
}

async fn another_stores_enqueue_wakes_a_subscriber(url: String) {
    let (subscriber, other) = two_stores(&url, &app_name()).await;
    let mut stream = subscribe(&subscriber).await;
    other.enqueue(vec![job_in("send", "mail")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, stream.next()).await.expect("a prompt wake-up");
    assert_eq!(got, Some(Wakeup::queue("mail")));
}

async fn one_wakeup_per_batch(url: String) {
    let (subscriber, other) = two_stores(&url, &app_name()).await;
    let mut stream = subscribe(&subscriber).await;
    other.enqueue((0..100).map(|_| job_in("bulk", "bulk")).collect()).await.expect("enqueue");
    assert_eq!(through_barrier(&other, &mut stream).await, [Wakeup::queue("bulk")]);

    let mixed = vec![job_in("a", "left"), job_in("b", "right"), job_in("c", "left")];
    other.enqueue(mixed).await.expect("enqueue");
    assert_eq!(through_barrier(&other, &mut stream).await, [Wakeup::any()], "several queues");
}

async fn replay_and_release_wake_subscribers(url: String) {
    let (subscriber, other) = two_stores(&url, &app_name()).await;
    let mut new = job_in("fragile", "dead-letters");
    new.max_attempts = 1;
    other.enqueue(vec![new, job_in("fragile", "dead-letters")]).await.expect("enqueue");
    let claim = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["dead-letters".into()],
        names: vec!["fragile".into()],
        limit: 2,
        lease_ttl: Duration::from_secs(60),
        token: LeaseToken::new(),
    };
    let claimed = other.claim(&claim).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let mut stream = subscribe(&subscriber).await;

    let lease = |i: usize| LeaseRef { job_id: claimed[i].job.id, token: claimed[i].lease.token };
    let fail = Outcome::Fail { failure: Failure::new(FailureKind::Error, "no") };
    let results = other.finish(&[Finish { lease: lease(0), outcome: fail }]).await.expect("fail");
    let FinishResult::Applied { dlq_id: Some(dlq_id), .. } = results[0] else {
        panic!("dead with an entry: {results:?}");
    };
    assert!(through_barrier(&other, &mut stream).await.is_empty(), "a death wakes nobody");
    other.replay_dlq(dlq_id, &Default::default()).await.expect("replay");
    assert_eq!(through_barrier(&other, &mut stream).await, [Wakeup::queue("dead-letters")]);
    other.release(&[lease(1)]).await.expect("release");
    assert_eq!(through_barrier(&other, &mut stream).await, [Wakeup::queue("dead-letters")]);
}

async fn a_rolled_back_enqueue_wakes_nobody(url: String) {
    let (subscriber, other) = two_stores(&url, &app_name()).await;
    let mut stream = subscribe(&subscriber).await;
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    other.enqueue_in(&mut tx, vec![job_in("undone", "phantom")]).await.expect("enqueue_in");
    tx.rollback().await.expect("rollback");
    assert!(through_barrier(&other, &mut stream).await.is_empty(), "no wake-up for a rollback");

    let mut tx = conn.begin().await.expect("begin");
    other.enqueue_in(&mut tx, vec![job_in("done", "real")]).await.expect("enqueue_in");
    tx.commit().await.expect("commit");
    assert_eq!(through_barrier(&other, &mut stream).await, [Wakeup::queue("real")]);
}

async fn a_killed_listener_reconnects_and_says_any(url: String) {
    let app = app_name();
    let (subscriber, other) = two_stores(&url, &app).await;
    let mut stream = subscribe(&subscriber).await;
    let admin = PgPool::connect(&url).await.expect("connect");
    let pids = listener_pids(&admin, &app).await;
    assert_eq!(pids.len(), 1, "one listener connection, named after the store: {pids:?}");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pids[0])
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(killed);

    let seen = until(&mut stream, &Wakeup::any(), RECONNECT).await;
    assert_eq!(seen, [Wakeup::any()], "after reconnecting, one wake-up for any queue");
    let replaced = support::eventually(RECONNECT, || async {
        let now = listener_pids(&admin, &app).await;
        now.len() == 1 && now[0] != pids[0]
    })
    .await;
    assert!(replaced, "a new listener connection with the store's application_name");
    other.enqueue(vec![job_in("later", "after")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, stream.next()).await.expect("a prompt wake-up");
    assert_eq!(got, Some(Wakeup::queue("after")));
}

async fn the_stream_ends_when_the_store_is_dropped(url: String) {
    let app = app_name();
    let (subscriber, other) = two_stores(&url, &app).await;
    let mut stream = subscribe(&subscriber).await;
    let mut second = subscriber.wakeups().expect("a second subscriber");
    let clone = subscriber.clone();
    drop(subscriber);
    other.enqueue(vec![job_in("still", "here")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, second.next()).await.expect("a clone keeps it alive");
    assert_eq!(got, Some(Wakeup::queue("here")));

    drop(clone);
    let ended = until_end(&mut stream).await && until_end(&mut second).await;
    assert!(ended, "the streams end with the last clone of the store");
    let admin = PgPool::connect(&url).await.expect("connect");
    let gone =
        support::eventually(RECONNECT, || async { listener_pids(&admin, &app).await.is_empty() })
            .await;
    assert!(gone, "the listener connection is closed");
}

/// Whether `stream` ends within [`RECONNECT`] (skipping what it still holds).
async fn until_end(stream: &mut WakeupStream) -> bool {
    tokio::time::timeout(RECONNECT, async { while stream.next().await.is_some() {} }).await.is_ok()
}
