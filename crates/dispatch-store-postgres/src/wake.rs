//! Push wake-ups over `LISTEN`/`NOTIFY`.
//!
//! Enqueues, replays, and finishes or rescues that make jobs available send one `NOTIFY` per
//! statement on the store's channel, with the queue's name as payload (empty: any queue). The
//! first subscriber starts one listener task per store: a dedicated connection (carrying the
//! store's `application_name`) that `LISTEN`s and fans notifications out to every subscriber
//! through a broadcast channel. Each time the listener (re)connects it sends
//! [`Wakeup::any`], since notifications sent while it was away are lost: workers claim once. A
//! subscriber that falls behind gets `Wakeup::any` for what it missed. The task stops, and the
//! streams end, when the last clone of the store is dropped.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dispatch_core::{Wakeup, WakeupStream};
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
            .finish_non_exhaustive()
    }
}

impl Wake {
    /// Wake-ups on `channel`, listened for over connections made with `options`.
    pub(crate) fn new(options: PgConnectOptions, channel: String) -> Self {
        Self { channel, options, listener: Mutex::new(None) }
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
        if listener.as_ref().is_none_or(|l| l.task.is_finished()) {
            let (tx, _) = broadcast::channel(BUFFER);
            let (stop, stopped) = oneshot::channel();
            let run = listen(self.options.clone(), self.channel.clone(), tx.clone(), stopped);
            *listener = Some(Listener { tx, task: runtime.spawn(run), _stop: stop });
        }
        let rx = listener.as_ref()?.tx.subscribe();
        Some(stream(rx))
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
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = &mut stop => return,
            connected = connect(&options, &channel) => connected,
        };
        match connected {
            Ok((pool, mut listener)) => {
                backoff = MIN_BACKOFF;
                // Notifications sent before the LISTEN took effect are lost: claim once.
                let _ = tx.send(Wakeup::any());
                let lost = tokio::select! {
                    _ = &mut stop => None,
                    lost = forward(&mut listener, &tx) => Some(lost),
                };
                drop(listener);
                let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
                match lost {
                    None => return,
                    Some(err) => {
                        tracing::warn!(%err, %channel, "wake-up listener lost its connection")
                    }
                }
            }
            Err(err) => tracing::warn!(%err, %channel, "wake-up listener can not connect"),
        }
        tokio::select! {
            _ = &mut stop => return,
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
            // The connection was lost and the listener reconnected and listens again.
            Ok(None) => Wakeup::any(),
            Err(err) => return err,
        };
        // No subscriber right now is fine: wake-ups are hints.
        let _ = tx.send(wakeup);
    }
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
