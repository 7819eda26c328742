//! Push wake-ups: the store's subscription to its wake channel, shared by every
//! [`wakeups`](dispatch_core::JobStore::wakeups) stream of the store.
//!
//! Scripts that make jobs available publish one message per call on `{prefix}:wake`: the
//! queue's name, or empty for several queues. The first subscriber starts one listener task per
//! store (clones share it, [`RedisStore::with_clock`](crate::RedisStore::with_clock) ones
//! too): a dedicated pub/sub connection, subscribed to the channel, whose messages it hands to
//! a [`WakeupHub`]. Each time it (re)connects it sends [`Wakeup::any`], since messages published
//! while it was away are lost: workers claim once. After a lost connection it reconnects with
//! a backoff from [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`]. The task stops, and the streams
//! end, when the last clone of the store is dropped.
//!
//! The listener's connection speaks RESP3 (Redis 6 or later), where a subscribed connection
//! still takes commands: it names itself `dispatch-wake:{prefix}` (`CLIENT SETNAME`), so
//! operators and tests find it in `CLIENT LIST`, and it pings the server every [`PING_EVERY`]
//! so a connection that died silently is noticed too.
//!
//! The task keeps its connection's state ([`ListenerState`]) where [`Wake::state`] reads it
//! without I/O. It records a (re)connect before sending its `Wakeup::any`, so a subscriber that
//! hears that wake-up and then reads the state sees the listener connected.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Clock, ListenerState, SystemClock, Wakeup, WakeupHub, WakeupStream};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one connect (and subscribe) of the listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the listener checks its connection with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long the server may take to answer the listener's `PING`.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The wake-up side of a store, shared by its clones.
#[derive(Clone)]
pub(crate) struct Wake(Arc<Shared>);

struct Shared {
    target: Target,
    listener: Mutex<Option<Listener>>,
    /// Written by the listener task, read by [`Wake::state`].
    state: Arc<Mutex<ListenerState>>,
}

/// A running listener task and the ends that feed and stop it.
struct Listener {
    hub: WakeupHub,
    task: JoinHandle<()>,
    /// Dropped with the last clone of the store: the task sees it and stops.
    _stop: oneshot::Sender<()>,
}

impl Wake {
    /// Wake-ups on `channel`, listened for over connections `client` makes.
    pub(crate) fn new(client: redis::Client, channel: String) -> Self {
        let target = Target { client: resp3(client), name: client_name(&channel), channel };
        let state = Arc::new(Mutex::new(ListenerState::new(SystemClock.now())));
        Self(Arc::new(Shared { target, listener: Mutex::new(None), state }))
    }

    /// The listener's state now. A listener whose task has ended (its runtime shut down) is
    /// not connected, whatever it last recorded.
    pub(crate) fn state(&self) -> ListenerState {
        let running = self.0.listener.lock().as_ref().is_some_and(|l| !l.task.is_finished());
        let mut state = self.0.state.lock().clone();
        state.connected &= running;
        state
    }

    /// A new subscriber's stream, starting the listener task if none runs; `None` outside a
    /// tokio runtime.
    pub(crate) fn subscribe(&self) -> Option<WakeupStream> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let mut listener = self.0.listener.lock();
        // A task that ended (its runtime shut down) is replaced.
        if let Some(running) = listener.as_ref().filter(|l| !l.task.is_finished()) {
            return Some(running.hub.subscribe());
        }
        let hub = WakeupHub::new();
        // Subscribed before the task starts, so this subscriber hears its first `Wakeup::any`.
        let stream = hub.subscribe();
        let (stop, stopped) = oneshot::channel();
        let recorder = Recorder { state: self.0.state.clone(), connected_before: false };
        let run = listen(self.0.target.clone(), hub.clone(), recorder, stopped);
        *listener = Some(Listener { hub, task: runtime.spawn(run), _stop: stop });
        Some(stream)
    }
}

/// `client` speaking RESP3, in which a subscribed connection takes other commands too.
fn resp3(client: redis::Client) -> redis::Client {
    let info = client.get_connection_info().clone();
    let redis = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    // Opening from connection info that parsed before does not fail; keep the client if it did.
    redis::Client::open(info.set_redis_settings(redis)).unwrap_or(client)
}

/// The listener connection's client name: `dispatch-wake:{prefix}` for the channel
/// `{prefix}:wake`. The server takes printable ASCII without spaces: others become `_`.
fn client_name(channel: &str) -> String {
    let prefix = channel.strip_suffix(":wake").unwrap_or(channel);
    format!("dispatch-wake:{prefix}")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// Where and as whom the listener connects.
#[derive(Clone)]
struct Target {
    /// Connects over RESP3.
    client: redis::Client,
    channel: String,
    /// The connection's client name.
    name: String,
}

/// The listener task's side of [`ListenerState`].
struct Recorder {
    state: Arc<Mutex<ListenerState>>,
    /// Whether this task connected before: its next connect is a reconnect.
    connected_before: bool,
}

impl Recorder {
    fn connected(&mut self) {
        let mut state = self.state.lock();
        state.connected = true;
        state.since = SystemClock.now();
        if std::mem::replace(&mut self.connected_before, true) {
            state.reconnects += 1;
        }
    }

    /// The connection was lost (or never made) with `error`.
    fn failed(&self, error: &str) {
        let now = SystemClock.now();
        let mut state = self.state.lock();
        if state.connected {
            state.connected = false;
            state.since = now;
        }
        state.last_error = Some(error.to_owned());
        state.last_error_at = Some(now);
    }

    fn stopped(&self) {
        let mut state = self.state.lock();
        state.connected = false;
        state.since = SystemClock.now();
    }
}

/// The listener task: connect and subscribe, forward messages, reconnect with backoff after a
/// loss, until `stop` fires (its sender was dropped with the store).
async fn listen(
    target: Target,
    hub: WakeupHub,
    mut state: Recorder,
    mut stop: oneshot::Receiver<()>,
) {
    let channel = &target.channel;
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = &mut stop => return state.stopped(),
            connected = connect(&target) => connected,
        };
        match connected {
            Ok(subscription) => {
                backoff = MIN_BACKOFF;
                state.connected();
                // Messages published before the SUBSCRIBE took effect are lost: claim once.
                hub.send(&Wakeup::any());
                let err = tokio::select! {
                    _ = &mut stop => return state.stopped(),
                    err = forward(subscription, &hub) => err,
                };
                state.failed(&err);
                tracing::warn!(%err, %channel, "wake-up listener lost its connection");
            }
            Err(err) => {
                state.failed(&err);
                tracing::warn!(%err, %channel, "wake-up listener can not connect");
            }
        }
        tokio::select! {
            _ = &mut stop => return state.stopped(),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A connection subscribed to the wake channel, and the receiver of its pushed messages.
struct Subscription {
    conn: MultiplexedConnection,
    pushed: mpsc::UnboundedReceiver<PushInfo>,
}

/// Connect, name the connection and subscribe, within [`CONNECT_TIMEOUT`].
async fn connect(target: &Target) -> Result<Subscription, String> {
    let attempt = async {
        let (tx, pushed) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_push_sender(tx);
        let mut conn = target.client.get_multiplexed_async_connection_with_config(&config).await?;
        // Only a name: a server that refuses it (an ACL without CLIENT) still sends messages.
        let mut named = redis::cmd("CLIENT");
        named.arg("SETNAME").arg(&target.name);
        if let Err(err) = named.exec_async(&mut conn).await {
            tracing::debug!(%err, "the wake-up connection can not take its client name");
        }
        conn.subscribe(&target.channel).await?;
        Ok::<_, redis::RedisError>(Subscription { conn, pushed })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|err| format!("redis: {err}")),
        Err(_) => Err(format!("redis: the wake-up connection took over {CONNECT_TIMEOUT:?}")),
    }
}

/// Forward messages to subscribers until the connection is lost; why it was.
async fn forward(mut subscription: Subscription, hub: &WakeupHub) -> String {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            pushed = subscription.pushed.recv() => match pushed {
                Some(PushInfo { kind: PushKind::Message, data }) => {
                    // No subscriber right now is fine: wake-ups are hints.
                    hub.send(&wakeup(data));
                }
                Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                    return "redis: the wake-up connection was closed".to_owned();
                }
                Some(_) => {}
            },
            _ = ping.tick() => {
                if let Err(err) = check(&mut subscription.conn).await {
                    return err;
                }
            }
        }
    }
}

/// Whether the server still answers on `conn`.
async fn check(conn: &mut MultiplexedConnection) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, redis::cmd("PING").exec_async(conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("redis: the wake-up connection failed a ping: {err}")),
        Err(_) => Err(format!("redis: the wake-up connection's ping took over {PING_TIMEOUT:?}")),
    }
}

/// The wake-up a message (`[channel, payload]`) asks for: its queue, or any for an empty one.
fn wakeup(data: Vec<redis::Value>) -> Wakeup {
    let payload = match data.into_iter().nth(1) {
        Some(redis::Value::BulkString(bytes)) => bytes,
        Some(redis::Value::SimpleString(text)) => text.into_bytes(),
        // A message the store did not publish: any queue, as a wake-up is only a hint.
        _ => Vec::new(),
    };
    match String::from_utf8_lossy(&payload).as_ref() {
        "" => Wakeup::any(),
        queue => Wakeup::queue(queue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_printable_and_name_the_prefix() {
        assert_eq!(client_name("{dispatch}:wake"), "dispatch-wake:{dispatch}");
        assert_eq!(client_name("{a b\n}:wake"), "dispatch-wake:{a_b_}");
    }

    #[test]
    fn messages_name_their_queue_or_any() {
        let message = |payload: &[u8]| {
            vec![
                redis::Value::BulkString(b"{p}:wake".to_vec()),
                redis::Value::BulkString(payload.to_vec()),
            ]
        };
        assert_eq!(wakeup(message(b"mail")), Wakeup::queue("mail"));
        assert_eq!(wakeup(message(b"")), Wakeup::any());
        assert_eq!(wakeup(Vec::new()), Wakeup::any());
    }
}
