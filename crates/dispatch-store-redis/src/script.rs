//! The store's Lua scripts and how they are called: each script is the shared prelude (key
//! layout, time, index bookkeeping, see `lua/prelude.lua`) followed by its body, loaded once per
//! server and called by SHA (`redis::Script` loads it again after a `NOSCRIPT`, e.g. after a
//! restart or `SCRIPT FLUSH`).

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{Script, ScriptInvocation, Value};

use crate::RedisStore;
use crate::error;

/// The shared helpers every script starts with, in order.
const PRELUDE: &str = concat!(
    include_str!("lua/prelude.lua"),
    // Flow control: jobs.lua's clear_lease releases gates, so it comes before it.
    include_str!("lua/flow.lua"),
    include_str!("lua/runs.lua"),
    include_str!("lua/jobs.lua"),
    // Run helpers that move a drive job: they use jobs.lua's helpers, so they come after it.
    include_str!("lua/drives.lua")
);

/// A script: the prelude and `body`.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "{PRELUDE}\n-- Body -----------------------------------------------\n{body}"
    ))
}

/// The cluster helpers (the worker registry, leadership terms): only their scripts need them.
const CLUSTER: &str = include_str!("lua/cluster.lua");
/// The enqueue helpers (checks, unique keys): the scripts that enqueue batches of new jobs.
const ENQUEUE: &str = include_str!("lua/enqueue_jobs.lua");
/// The DLQ helpers (the filter, the bounded walk, replay): the DLQ scripts.
const DLQ: &str = include_str!("lua/dlq.lua");
/// The cron entry keys and helpers: the cron scripts.
const CRON: &str = include_str!("lua/cron.lua");
/// A gated claim's admission (`flow::Admission` in Lua): the claim script.
const ADMISSION: &str = include_str!("lua/admission.lua");

/// A script with helper files: the prelude, `helpers` in order, and `body`.
fn script_with(helpers: &[&str], body: &str) -> Script {
    script(&format!("{}\n{body}", helpers.join("\n")))
}

/// A cluster script (the worker registry, leadership): the prelude, the cluster helpers and
/// `body`.
fn cluster_script(body: &str) -> Script {
    script_with(&[CLUSTER], body)
}

/// Every script of the store, built once per store.
#[derive(Clone)]
pub(crate) struct Scripts(Arc<ScriptSet>);

/// One field per transition.
pub(crate) struct ScriptSet {
    pub(crate) enqueue: Script,
    pub(crate) claim: Script,
    pub(crate) finish: Script,
    pub(crate) heartbeat: Script,
    pub(crate) rescue: Script,
    pub(crate) cancel: Script,
    pub(crate) dlq_list: Script,
    pub(crate) dlq_replay: Script,
    pub(crate) dlq_purge: Script,
    pub(crate) dlq_count: Script,
    pub(crate) dlq_replay_matching: Script,
    pub(crate) release_claim: Script,
    pub(crate) list_jobs: Script,
    pub(crate) next_due: Script,
    pub(crate) start_run: Script,
    pub(crate) list_runs: Script,
    pub(crate) checkpoints: Script,
    pub(crate) load_snapshot: Script,
    pub(crate) save_checkpoints: Script,
    pub(crate) suspend_run: Script,
    pub(crate) resolve_wait: Script,
    pub(crate) end_run: Script,
    pub(crate) publish_event: Script,
    pub(crate) cancel_run: Script,
    pub(crate) rewind_run: Script,
    pub(crate) migrate_run: Script,
    pub(crate) worker_register: Script,
    pub(crate) worker_heartbeat: Script,
    pub(crate) worker_drain: Script,
    pub(crate) worker_deregister: Script,
    pub(crate) worker_list: Script,
    pub(crate) sweep_workers: Script,
    pub(crate) leader_acquire: Script,
    pub(crate) leader_renew: Script,
    pub(crate) leader_resign: Script,
    pub(crate) leader_take: Script,
    pub(crate) prune: Script,
    pub(crate) cron_save: Script,
    pub(crate) cron_enable: Script,
    pub(crate) cron_delete: Script,
    pub(crate) cron_due: Script,
    pub(crate) cron_list: Script,
    pub(crate) cron_fire: Script,
    pub(crate) flow_set_config: Script,
    pub(crate) flow_read: Script,
    pub(crate) flow_delete: Script,
    pub(crate) flow_pause: Script,
    pub(crate) progress: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ScriptSet {
            enqueue: script_with(&[ENQUEUE], include_str!("lua/enqueue.lua")),
            claim: script_with(&[ADMISSION], include_str!("lua/claim.lua")),
            finish: script(include_str!("lua/finish.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            rescue: script(include_str!("lua/rescue.lua")),
            cancel: script(include_str!("lua/cancel.lua")),
            dlq_list: script_with(&[DLQ], include_str!("lua/dlq_list.lua")),
            dlq_replay: script_with(&[DLQ], include_str!("lua/dlq_replay.lua")),
            dlq_purge: script_with(&[DLQ], include_str!("lua/dlq_purge.lua")),
            dlq_count: script_with(&[DLQ], include_str!("lua/dlq_count.lua")),
            dlq_replay_matching: script_with(&[DLQ], include_str!("lua/dlq_replay_matching.lua")),
            release_claim: script(include_str!("lua/release_claim.lua")),
            list_jobs: script(include_str!("lua/list_jobs.lua")),
            next_due: script(include_str!("lua/next_due.lua")),
            start_run: script(include_str!("lua/start_run.lua")),
            list_runs: script(include_str!("lua/list_runs.lua")),
            checkpoints: script(include_str!("lua/checkpoints.lua")),
            load_snapshot: script(include_str!("lua/load_snapshot.lua")),
            save_checkpoints: script(include_str!("lua/save_checkpoints.lua")),
            suspend_run: script(include_str!("lua/suspend_run.lua")),
            resolve_wait: script(include_str!("lua/resolve_wait.lua")),
            end_run: script(include_str!("lua/end_run.lua")),
            publish_event: script(include_str!("lua/publish_event.lua")),
            cancel_run: script(include_str!("lua/cancel_run.lua")),
            rewind_run: script(include_str!("lua/rewind_run.lua")),
            migrate_run: script(include_str!("lua/migrate_run.lua")),
            worker_register: cluster_script(include_str!("lua/worker_register.lua")),
            worker_heartbeat: cluster_script(include_str!("lua/worker_heartbeat.lua")),
            worker_drain: cluster_script(include_str!("lua/worker_drain.lua")),
            worker_deregister: cluster_script(include_str!("lua/worker_deregister.lua")),
            worker_list: cluster_script(include_str!("lua/worker_list.lua")),
            sweep_workers: cluster_script(include_str!("lua/sweep_workers.lua")),
            leader_acquire: cluster_script(include_str!("lua/leader_acquire.lua")),
            leader_renew: cluster_script(include_str!("lua/leader_renew.lua")),
            leader_resign: cluster_script(include_str!("lua/leader_resign.lua")),
            leader_take: cluster_script(include_str!("lua/leader_take.lua")),
            prune: cluster_script(include_str!("lua/prune.lua")),
            cron_save: script_with(&[CRON], include_str!("lua/cron_save.lua")),
            cron_enable: script_with(&[CRON], include_str!("lua/cron_enable.lua")),
            cron_delete: script_with(&[CRON], include_str!("lua/cron_delete.lua")),
            cron_due: script_with(&[CRON], include_str!("lua/cron_due.lua")),
            cron_list: script_with(&[CRON], include_str!("lua/cron_list.lua")),
            cron_fire: script_with(&[CLUSTER, ENQUEUE, CRON], include_str!("lua/cron_fire.lua")),
            flow_set_config: script(include_str!("lua/flow_set_config.lua")),
            flow_read: script(include_str!("lua/flow_read.lua")),
            flow_delete: script(include_str!("lua/flow_delete.lua")),
            flow_pause: script(include_str!("lua/flow_pause.lua")),
            progress: script(include_str!("lua/progress.lua")),
        }))
    }
}

impl std::ops::Deref for Scripts {
    type Target = ScriptSet;
    fn deref(&self) -> &ScriptSet {
        &self.0
    }
}

impl RedisStore {
    /// A call of `script` with the calling convention's first key and argument in place: the
    /// prefix, and the injected clock's time ('' for the server's clock). Add the script's own
    /// arguments, then [`invoke`](Self::invoke) it.
    pub(crate) fn call<'a>(&'a self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut call = script.key(&self.inner.prefix);
        match self.injected_now() {
            Some(now) => call.arg(now.as_unix_micros()),
            None => call.arg(""),
        };
        call
    }

    /// Run `call` on the shared connection within the call timeout.
    pub(crate) async fn invoke(&self, call: &ScriptInvocation<'_>) -> dispatch_core::Result<Value> {
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            let reply = call.invoke_async::<Value>(&mut conn).await;
            reply.map_err(|err| self.broken(err))
        })
        .await
    }

    /// A handle on the store's shared connection: one multiplexed connection checked out of the
    /// pool and shared by every call (they pipeline on it), so a call costs one round trip,
    /// not a pool check-out and its health probe. After a connection error the next call
    /// takes a fresh one from the pool, which checks it before handing it out.
    pub(crate) async fn connection(&self) -> dispatch_core::Result<MultiplexedConnection> {
        if let Some(shared) = self.inner.shared.lock().as_ref() {
            return Ok(MultiplexedConnection::clone(shared));
        }
        let mut fresh = self.inner.pool.get().await.map_err(error::pool_error)?;
        // Named, so that an operator (or a test) finds the store's connections in CLIENT LIST.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.inner.client_name)
            .query_async::<()>(&mut *fresh)
            .await
            .map_err(error::redis_error)?;
        let conn = MultiplexedConnection::clone(&fresh);
        let mut shared = self.inner.shared.lock();
        Ok(match shared.as_ref() {
            // Another call replaced it meanwhile: share that one, give this one back.
            Some(other) => MultiplexedConnection::clone(other),
            None => {
                *shared = Some(fresh);
                conn
            }
        })
    }

    /// `err` as the core error; a connection error also retires the shared connection.
    fn broken(&self, err: redis::RedisError) -> dispatch_core::Error {
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            self.inner.shared.lock().take();
        }
        error::redis_error(err)
    }

    /// Run `work` within the call timeout: past it, `Timeout`.
    pub(crate) async fn within_timeout<T>(
        &self,
        work: impl Future<Output = dispatch_core::Result<T>>,
    ) -> dispatch_core::Result<T> {
        let limit = self.inner.call_timeout;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(dispatch_core::Error::new(
                dispatch_core::ErrorKind::Timeout,
                format!("redis: the call did not finish within {limit:?}"),
            ))
        })
    }

    /// Run a plain command (no script) on the shared connection within the call timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> dispatch_core::Result<T> {
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            cmd.query_async::<T>(&mut conn).await.map_err(|err| self.broken(err))
        })
        .await
    }

    /// Run a pipeline on the shared connection within the call timeout.
    pub(crate) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> dispatch_core::Result<T> {
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            pipe.query_async::<T>(&mut conn).await.map_err(|err| self.broken(err))
        })
        .await
    }
}
