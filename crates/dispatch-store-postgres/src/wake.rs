//! Push wake-ups over `LISTEN`/`NOTIFY`.
//!
//! Enqueues, replays, and finishes or rescues that make jobs available send one `NOTIFY` per
//! statement on the store's channel, with the queue's name as payload (empty: any queue). The
//! first subscriber starts one listener task per store: a dedicated connection (carrying the
//! store's `application_name`; to the direct URL behind a transaction pooler, where `LISTEN`
//! would last only until the pooler hands the session to another client) that `LISTEN`s and fans notifications out to every subscriber
//! through a broadcast channel. Each time the listener (re)connects it sends
//! [`Wakeup::any`], since notifications sent while it was away are lost: workers claim once. A
//! subscriber that falls behind gets `Wakeup::any` for what it missed. The task stops, and the
//! streams end, when the last clone of the store is dropped.
//!
//! The task keeps its connection's state ([`ListenerState`]: connected since when, the last
//! error, reconnects) where [`Wake::state`] reads it without I/O, for workers' health views. It
//! records a (re)connect before sending its `Wakeup::any`, so a subscriber that hears that
//! wake-up and then reads the state sees the listener connected.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_core::{Clock, ListenerState, SystemClock, Wakeup, WakeupStream};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// Wake-ups buffered per subscriber before it counts as lagging.
const BUFFER: usize = 256;
/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connect attempt of the listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest channel name PostgreSQL accepts.
const MAX_CHANNEL_LEN: usize = 63;

/// The wake-up side of one store: its channel and, once someone subscribed, its listener.
pub(crate) struct Wake {
    channel: String,
    options: PgConnectOptions,
    listener: Mutex<Option<Listener>>,
    /// Written by the listener task, read by [`Wake::state`].
    state: Arc<Mutex<ListenerState>>,
}

/// A running listener task and the ends that feed and stop it.
#[derive(Debug)]
struct Listener {
    tx: broadcast::Sender<Wakeup>,
    task: JoinHandle<()>,
    /// Dropped with the store: the task sees it and stops.
    _stop: oneshot::Sender<()>,
}

/// The channel of the store whose tables live in `schema`: `dispatch_<schema>`, or a hash of
/// the schema name when that is longer than PostgreSQL accepts.
pub(crate) fn channel_name(schema: &str) -> String {
    let plain = format!("dispatch_{schema}");
    if plain.len() <= MAX_CHANNEL_LEN {
        return plain;
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("dispatch_{hash:016x}")
}

/// Leaves out the connect options: they hold the password.
impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Wake")
            .field("channel", &self.channel)
            .field("listener", &*listener)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl Wake {
    /// Wake-ups on `channel`, listened for over connections made with `options`.
    pub(crate) fn new(options: PgConnectOptions, channel: String) -> Self {
        let state = Arc::new(Mutex::new(ListenerState::new(SystemClock.now())));
        Self { channel, options, listener: Mutex::new(None), state }
    }

    /// The listener's state now. A listener whose task has ended (its runtime shut down) is
    /// not connected, whatever it last recorded.
    pub(crate) fn state(&self) -> ListenerState {
        let running = {
            let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
            listener.as_ref().is_some_and(|l| !l.task.is_finished())
        };
        let mut state = lock(&self.state).clone();
        state.connected &= running;
        state
    }

    /// The `NOTIFY` channel.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// A new subscriber's stream, starting the listener task if none runs; `None` outside a
    /// tokio runtime.
    pub(crate) fn subscribe(&self) -> Option<WakeupStream> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let mut listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        // A task that ended (its runtime shut down) is replaced.
        if let Some(running) = listener.as_ref().filter(|l| !l.task.is_finished()) {
            return Some(stream(running.tx.subscribe()));
        }
        let (tx, rx) = broadcast::channel(BUFFER);
        let (stop, stopped) = oneshot::channel();
        let state = Recorder { state: self.state.clone(), connected_before: false };
        let run = listen(self.options.clone(), self.channel.clone(), tx.clone(), state, stopped);
        // Subscribed before the task starts, so this subscriber hears its first `Wakeup::any`.
        *listener = Some(Listener { tx, task: runtime.spawn(run), _stop: stop });
        Some(stream(rx))
    }
}

fn lock(state: &Mutex<ListenerState>) -> std::sync::MutexGuard<'_, ListenerState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The listener task's side of [`ListenerState`].
struct Recorder {
    state: Arc<Mutex<ListenerState>>,
    /// Whether this task connected before: its next connect is a reconnect.
    connected_before: bool,
}

impl Recorder {
    fn connected(&mut self) {
        let mut state = lock(&self.state);
        state.connected = true;
        state.since = SystemClock.now();
        if std::mem::replace(&mut self.connected_before, true) {
            state.reconnects += 1;
        }
    }

    /// The connection was lost (or never made) with `error`.
    fn failed(&self, error: &sqlx::Error) {
        let now = SystemClock.now();
        let mut state = lock(&self.state);
        if state.connected {
            state.connected = false;
            state.since = now;
        }
        state.last_error = Some(error.to_string());
        state.last_error_at = Some(now);
    }

    fn stopped(&self) {
        let mut state = lock(&self.state);
        state.connected = false;
        state.since = SystemClock.now();
    }
}

/// A subscriber's receiver as a stream; a lag becomes one `Wakeup::any`.
fn stream(rx: broadcast::Receiver<Wakeup>) -> WakeupStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(wakeup) => Some((wakeup, rx)),
            Err(RecvError::Lagged(_)) => Some((Wakeup::any(), rx)),
            Err(RecvError::Closed) => None,
        }
    }))
}

/// The listener task: connect and `LISTEN`, forward notifications, reconnect with backoff
/// after a loss, until `stop` fires (its sender was dropped).
async fn listen(
    options: PgConnectOptions,
    channel: String,
    tx: broadcast::Sender<Wakeup>,
    mut state: Recorder,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = &mut stop => return state.stopped(),
            connected = connect(&options, &channel) => connected,
        };
        match connected {
            Ok((pool, mut listener)) => {
                backoff = MIN_BACKOFF;
                state.connected();
                // Notifications sent before the LISTEN took effect are lost: claim once.
                let _ = tx.send(Wakeup::any());
                let lost = tokio::select! {
                    _ = &mut stop => None,
                    lost = forward(&mut listener, &tx) => Some(lost),
                };
                drop(listener);
                let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
                match lost {
                    None => return state.stopped(),
                    Some(err) => {
                        state.failed(&err);
                        tracing::warn!(%err, %channel, "wake-up listener lost its connection")
                    }
                }
            }
            Err(err) => {
                state.failed(&err);
                tracing::warn!(%err, %channel, "wake-up listener can not connect")
            }
        }
        tokio::select! {
            _ = &mut stop => return state.stopped(),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A dedicated one-connection pool and a listener on `channel` over it.
async fn connect(
    options: &PgConnectOptions,
    channel: &str,
) -> Result<(PgPool, PgListener), sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // A lost connection ends `forward`, and `listen` reconnects: one place records the state.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok((pool, listener))
}

/// Forward notifications to subscribers until the connection fails; the error.
async fn forward(listener: &mut PgListener, tx: &broadcast::Sender<Wakeup>) -> sqlx::Error {
    loop {
        let wakeup = match listener.try_recv().await {
            Ok(Some(notification)) => match notification.payload() {
                "" => Wakeup::any(),
                queue => Wakeup::queue(queue),
            },
            Ok(None) => return lost_connection(),
            Err(err) => return err,
        };
        // No subscriber right now is fine: wake-ups are hints.
        let _ = tx.send(wakeup);
    }
}

/// What `try_recv` reports as "connection lost" without an error of its own.
fn lost_connection() -> sqlx::Error {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection lost");
    sqlx::Error::Io(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_postgres() {
        assert_eq!(channel_name("dispatch"), "dispatch_dispatch");
        let long = "s".repeat(63);
        let hashed = channel_name(&long);
        assert!(hashed.len() <= MAX_CHANNEL_LEN, "{hashed}");
        assert_eq!(hashed, channel_name(&long), "stable");
        assert_ne!(hashed, channel_name(&"t".repeat(63)));
    }
}
