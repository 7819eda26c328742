//! The wake-up listener: a subscriber hears another store's enqueues; after its pub/sub
//! connection is killed the listener reconnects, says "any queue", counts the reconnect and
//! hears later enqueues again; its streams end with the last clone of the store. Each test
//! finds its own listener connection by its client name (`dispatch-wake:{prefix}`), since
//! tests share one server.

use std::time::Duration;

use dispatch_core::{JobStore, Wakeup, WakeupStream};
use dispatch_store_redis::RedisStore;
use futures::StreamExt;

use crate::common::{job_in, store};
use crate::support::{self, ServerTest};

/// How long a wake-up may take to arrive on a loaded machine. A stream sees only pushed
/// messages (it never polls), so a longer limit does not let a missing push pass.
const PROMPT: Duration = Duration::from_secs(10);
/// How long (re)connecting the listener may take: above its own 10 s connect timeout.
const RECONNECT: Duration = Duration::from_secs(30);

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("another_stores_enqueue_wakes_a_subscriber", |url| {
            Box::pin(another_stores_enqueue_wakes_a_subscriber(url))
        }),
        ("a_killed_listener_reconnects_and_says_any", |url| {
            Box::pin(a_killed_listener_reconnects_and_says_any(url))
        }),
        ("the_stream_ends_when_the_store_is_dropped", |url| {
            Box::pin(the_stream_ends_when_the_store_is_dropped(url))
        }),
    ]
}

/// A second store on `store`'s prefix (another process, as far as the first can tell).
async fn same_prefix(url: &str, store: &RedisStore) -> RedisStore {
    let prefix = store.prefix().trim_start_matches('{').trim_end_matches('}');
    RedisStore::builder(url).prefix(prefix).max_connections(2).build().await.expect("connect")
}

/// Subscribe, and wait for the listener's first `Wakeup::any` (it is subscribed then).
async fn subscribe(store: &RedisStore) -> WakeupStream {
    let mut stream = store.wakeups().expect("the Redis store pushes wake-ups");
    let first = tokio::time::timeout(RECONNECT, stream.next()).await;
    assert_eq!(first.expect("the listener connects"), Some(Wakeup::any()));
    stream
}

/// The client IDs of `store`'s listener connections, found by their client name.
async fn listener_ids(url: &str, store: &RedisStore) -> Vec<u64> {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let list: String =
        redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.expect("CLIENT LIST");
    let name = format!("name=dispatch-wake:{}", store.prefix());
    list.lines()
        .filter(|line| line.split(' ').any(|field| field == name))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(|id| id.parse().expect("a client id"))
        .collect()
}

async fn kill_client(url: &str, id: u64) {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "client {id} killed");
}

async fn another_stores_enqueue_wakes_a_subscriber(url: String) {
    let subscriber = store(&url).await;
    let before = subscriber.listener_state().expect("a listener state before any subscriber");
    assert!(!before.connected);
    let mut stream = subscribe(&subscriber).await;
    let state = subscriber.listener_state().expect("a listener state");
    assert!(state.connected && state.reconnects == 0, "{state:?}");
    let other = same_prefix(&url, &subscriber).await;
    other.enqueue(vec![job_in("send", "mail")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, stream.next()).await.expect("a prompt wake-up");
    assert_eq!(got, Some(Wakeup::queue("mail")));
    other.enqueue(vec![job_in("a", "left"), job_in("b", "right")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, stream.next()).await.expect("a prompt wake-up");
    assert_eq!(got, Some(Wakeup::any()), "several queues in one call");
}

async fn a_killed_listener_reconnects_and_says_any(url: String) {
    let subscriber = store(&url).await;
    let mut stream = subscribe(&subscriber).await;
    let ids = listener_ids(&url, &subscriber).await;
    assert_eq!(ids.len(), 1, "one listener connection, found by its channel: {ids:?}");
    kill_client(&url, ids[0]).await;

    let again = tokio::time::timeout(RECONNECT, stream.next()).await;
    assert_eq!(again.expect("the listener reconnects"), Some(Wakeup::any()));
    let state = subscriber.listener_state().expect("a listener state");
    assert!(state.connected && state.reconnects >= 1, "{state:?}");
    assert!(state.last_error.is_some(), "the loss is recorded: {state:?}");
    let replaced = support::eventually(RECONNECT, || async {
        let now = listener_ids(&url, &subscriber).await;
        (now.len() == 1 && now[0] != ids[0]).then_some(())
    })
    .await;
    assert!(replaced.is_some(), "a new listener connection");

    let other = same_prefix(&url, &subscriber).await;
    other.enqueue(vec![job_in("later", "after")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, stream.next()).await.expect("a prompt wake-up");
    assert_eq!(got, Some(Wakeup::queue("after")));
}

async fn the_stream_ends_when_the_store_is_dropped(url: String) {
    let subscriber = store(&url).await;
    let mut stream = subscribe(&subscriber).await;
    // A clone with its own clock shares the listener.
    let clone = subscriber.clone().with_clock(std::sync::Arc::new(dispatch_core::SystemClock));
    let mut second = clone.wakeups().expect("a second subscriber");
    let other = same_prefix(&url, &subscriber).await;
    drop(subscriber);
    other.enqueue(vec![job_in("still", "here")]).await.expect("enqueue");
    let got = tokio::time::timeout(PROMPT, second.next()).await.expect("a clone keeps it alive");
    assert_eq!(got, Some(Wakeup::queue("here")));
    assert_eq!(listener_ids(&url, &other).await.len(), 1, "one listener for both clones");

    drop(clone);
    let ended = until_end(&mut stream).await && until_end(&mut second).await;
    assert!(ended, "the streams end with the last clone of the store");
    let gone = support::eventually(RECONNECT, || async {
        listener_ids(&url, &other).await.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the listener connection is closed");
}

/// Whether `stream` ends within [`RECONNECT`] (skipping what it still holds).
async fn until_end(stream: &mut WakeupStream) -> bool {
    tokio::time::timeout(RECONNECT, async { while stream.next().await.is_some() {} }).await.is_ok()
}
