//! [`RedisStoreBuilder`]: connecting, the pool, and the store's options.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{Error, ErrorKind, Result};

use crate::{DEFAULT_CALL_TIMEOUT, DEFAULT_PREFIX, Inner, RedisStore, script, wake};

/// Options of a [`RedisStore`]; [`build`](Self::build) connects.
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_connections: usize,
    call_timeout: Duration,
    max_payload_bytes: usize,
    client_name: Option<String>,
}

impl RedisStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_connections: 8,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            client_name: None,
        }
    }

    /// The key prefix (default [`DEFAULT_PREFIX`]), without braces: keys start with
    /// `{prefix}:`, a Redis Cluster hash tag. Stores with different prefixes share a server
    /// without seeing each other.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most pooled connections (default 8). The store's calls share one multiplexed
    /// connection at a time (pipelined on it); the pool makes and checks its replacement after
    /// a connection error. The wake-up subscription has a connection of its own.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long one store call may take before it fails with `Timeout` (default
    /// [`DEFAULT_CALL_TIMEOUT`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Reject payloads larger than `bytes` (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// The name the store's connections carry in `CLIENT LIST` (default `dispatch-<prefix>`;
    /// the wake-up listener's is this name and `-wake`), so an operator can tell them apart.
    /// Characters the server refuses in a name (spaces, non-ASCII) become `_`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Connect: build the pool and check the server answers (`Unavailable` when it does not,
    /// `InvalidInput` for a URL that does not parse or a prefix with a brace).
    pub async fn build(self) -> Result<RedisStore> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::invalid_input(format!(
                "redis key prefix {:?} must be non-empty, without braces",
                self.prefix
            )));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("bad redis URL: {e}")).with_source(e)
        })?;
        // The store's call timeout bounds every call (script.rs); the driver's own response
        // timeout (500 ms by default) would fail a slow answer on a loaded machine first, as
        // `Unavailable`, and leave the call timeout unreachable.
        let connections = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.call_timeout))
            .set_response_timeout(None);
        let manager = deadpool_redis::Manager::new_with_config(self.url.as_str(), connections)
            .map_err(|e| {
                Error::new(ErrorKind::InvalidInput, format!("bad redis URL: {e}")).with_source(e)
            })?;
        let pool = deadpool_redis::Pool::builder(manager)
            .max_size(self.max_connections)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::invalid_input(format!("can not build the redis pool: {e}")))?;
        let prefix = format!("{{{}}}", self.prefix);
        let client_name = wake::printable(
            &self.client_name.unwrap_or_else(|| format!("dispatch-{}", self.prefix)),
        );
        let wake = wake::Wake::new(client, format!("{prefix}:wake"), &client_name);
        let store = RedisStore {
            inner: Arc::new(Inner {
                pool,
                shared: parking_lot::Mutex::new(None),
                client_name,
                prefix,
                clock: None,
                max_payload_bytes: self.max_payload_bytes,
                call_timeout: self.call_timeout,
                scripts: script::Scripts::new(),
                wake,
            }),
        };
        store.query::<String>(&redis::cmd("PING")).await?;
        Ok(store)
    }
}
