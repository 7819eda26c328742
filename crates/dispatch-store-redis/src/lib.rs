//! The Redis Dispatch store: jobs, their dead letter queue and workflow runs in Redis, for
//! teams whose queue state lives there.
//!
//! Every state transition is one Lua script, run atomically by the server (loaded once, called
//! by SHA, loaded again after a `NOSCRIPT`), and every hot-path call takes a whole batch in one
//! script call: enqueue, claim, finish, heartbeat, rescue. It is not a cache or a way to reach
//! another store's jobs, and it does not run the server: persistence, memory limits, failover
//! and backups are the operator's (see *Durability*).
//!
//! # Layout
//!
//! Every key starts with the store's prefix, a Redis Cluster hash tag (`{dispatch}` by default,
//! [`RedisStoreBuilder::prefix`]), so all of a store's keys live in one slot: each script may
//! touch any of them, on a single server and on a cluster alike. The price is that one store
//! lives on one cluster node; to spread load over a cluster, give each part of an application
//! its own store (prefix). A job is a hash; due available jobs sit in one sorted set per
//! (queue, job name), scored by priority and ordered by run-at and enqueue order inside it, so
//! a claim costs O(batch) whatever else the queue holds; jobs not yet due wait in a sorted set
//! per pair scored by run-at, and move over when the claim finds them due; running jobs are
//! scored by lease expiry (which is also how running jobs are listed). Listings page through
//! per-state and per-entity indexes ordered by ID; counts per (queue, state) are kept by the
//! scripts. Retention reads indexes of its own, scored by the time each record's age counts
//! from (a finished job's finish, a run's end, a DLQ entry's death, a kept event's expiry, a
//! gone worker's last heartbeat), so a prune costs O(limit) and never scans the keyspace; the
//! leader prunes under its term ([`RetentionStore`](dispatch_core::RetentionStore), see
//! `src/retention.rs`).
//! Cron entries are hashes found by `(scope, name)`, listed by ID and read as due from a
//! sorted set by next fire; the leader fires a batch of them in one script call fenced by its
//! term ([`CronStore`](dispatch_core::CronStore), see `src/cron.rs`).
//! Flow control ([`FlowStore`](dispatch_core::FlowStore), see `src/flow.rs` and
//! `src/lua/flow.lua`): queue configs are one hash (queue to its config as JSON), each gate a
//! small hash (running count, rate arrival time). A claim reads its queues' configs with one
//! `HMGET`; without any it is the plain claim above, with one it is the gated claim of the same
//! script (`flow::Admission`'s rules in Lua, `src/lua/admission.lua`). Jobs with a tenant also
//! sit in a sorted set per (queue, name, tenant) while due, and their tenant in a set per
//! (queue, name), so a fair queue's claim reads one lane per tenant without scanning the queue;
//! jobs without a tenant cost no extra key. A job counted by a gated claim gives its gates'
//! slots back in whichever script takes it out of running.
//! A run is a hash beside its checkpoints (data by key, and their write order), its event waits (indexed per scope,
//! event name and correlation, oldest first) and the events kept for later waits.
//! `src/lua/prelude.lua` documents every job key, `src/lua/runs.lua` every workflow key.
//!
//! # Time
//!
//! Without an injected clock the scripts read the server's clock (`TIME`), so workers whose
//! clocks disagree still agree on run-at times and lease expiry.
//! [`with_clock`](RedisStore::with_clock) makes every call pass the given clock's time instead
//! (tests use a manual clock).
//!
//! # Durability
//!
//! The store is exactly as durable as the server's persistence setting; every script's writes
//! are one unit in the replication stream and the append-only file, so a restart never shows
//! half a transition.
//!
//! | Persistence | A Redis restart loses |
//! |---|---|
//! | none | everything: every job, entry and run |
//! | RDB snapshots | every change since the last snapshot: enqueued jobs vanish, finished jobs run again, claimed jobs are available again with their attempt returned |
//! | AOF `everysec` | up to about one second of changes, as for RDB but bounded |
//! | AOF `always` | nothing that was acknowledged |
//!
//! What was lost is never corrupted: the state after a restart is the state of some earlier
//! moment, in which every lease is honoured (a job running then is rescued once its lease
//! expires). Jobs that ran after that moment may run again, which at-least-once delivery
//! allows; use AOF `always` where an acknowledged enqueue must never be lost.
//!
//! # Wake-ups
//!
//! A script that makes jobs available publishes one message on the store's wake channel (the
//! queue, or empty for several). [`wakeups`](dispatch_core::JobStore::wakeups) subscribers share
//! one subscription per store on a dedicated connection, which reconnects after a loss and
//! then wakes every subscriber (messages sent while it was away are lost); workers also poll.

mod builder;
mod claim;
mod cluster;
mod cron;
mod dlq;
mod enqueue;
mod error;
mod events;
mod finish;
mod flow;
mod job;
mod keys;
mod lookup;
mod retention;
mod rewind;
mod row;
mod run;
mod script;
mod wake;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{SharedClock, Timestamp};

pub use builder::RedisStoreBuilder;
pub use deadpool_redis;
pub use redis;

/// The key prefix (and Redis Cluster hash tag) a store uses unless told otherwise.
pub const DEFAULT_PREFIX: &str = "dispatch";

/// How long one store call may take before it fails with
/// [`ErrorKind::Timeout`](dispatch_core::ErrorKind::Timeout), unless the builder sets another.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis store. Cheap to clone: clones share the connection pool and the wake-up
/// subscription.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Makes and checks connections; the store shares one of them at a time (`shared`).
    pool: deadpool_redis::Pool,
    /// The connection every call pipelines on; `None` until the first call and after a
    /// connection error.
    shared: parking_lot::Mutex<Option<deadpool_redis::Connection>>,
    /// The name the store's connections carry (`CLIENT SETNAME`).
    client_name: String,
    /// `{prefix}`: the hash tag every key starts with.
    prefix: String,
    /// The injected clock; `None` reads the server's.
    clock: Option<SharedClock>,
    max_payload_bytes: usize,
    call_timeout: Duration,
    scripts: script::Scripts,
    wake: wake::Wake,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.inner.prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store on the server at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    /// Connect to the server at `url` with the default options.
    pub async fn connect(url: impl Into<String>) -> dispatch_core::Result<Self> {
        Self::builder(url).build().await
    }

    /// This store reading time from `clock` instead of the server (tests inject a manual clock).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                pool: inner.pool.clone(),
                shared: parking_lot::Mutex::new(None),
                client_name: inner.client_name.clone(),
                prefix: inner.prefix.clone(),
                clock: Some(clock),
                max_payload_bytes: inner.max_payload_bytes,
                call_timeout: inner.call_timeout,
                scripts: inner.scripts.clone(),
                wake: inner.wake.clone(),
            }),
        }
    }

    /// The key prefix, hash tag included (`{dispatch}`): every key of this store starts with it.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The name the store's connections carry in `CLIENT LIST` (the wake-up listener's is this
    /// name and `-wake`); see [`RedisStoreBuilder::client_name`].
    pub fn client_name(&self) -> &str {
        &self.inner.client_name
    }

    /// The injected clock's time, or `None` when the server's clock rules.
    fn injected_now(&self) -> Option<Timestamp> {
        self.inner.clock.as_ref().map(|clock| clock.now())
    }
}
