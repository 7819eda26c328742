//! The store's Lua scripts and how they are called: each script is the shared prelude (key
//! layout, time, index bookkeeping, see `lua/prelude.lua`) followed by its body, loaded once per
//! server and called by SHA (`redis::Script` loads it again after a `NOSCRIPT`, e.g. after a
//! restart or `SCRIPT FLUSH`).

use std::sync::Arc;

use redis::{Script, ScriptInvocation, Value};

use crate::RedisStore;
use crate::error;

/// The shared helpers every script starts with, in order.
const PRELUDE: &str = concat!(
    include_str!("lua/prelude.lua"),
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

/// Every script of the store, built once per store.
#[derive(Clone)]
pub(crate) struct Scripts(Arc<ScriptSet>);

/// One field per transition.
pub(crate) struct ScriptSet {
    pub(crate) enqueue: Script,
    pub(crate) claim: Script,
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
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ScriptSet {
            enqueue: script(include_str!("lua/enqueue.lua")),
            claim: script(include_str!("lua/claim.lua")),
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

    /// Run `call` on a pooled connection within the call timeout.
    pub(crate) async fn invoke(&self, call: &ScriptInvocation<'_>) -> dispatch_core::Result<Value> {
        let run = async {
            let mut conn = self.connection().await?;
            call.invoke_async::<Value>(&mut conn).await.map_err(error::redis_error)
        };
        self.within_timeout(run).await
    }

    /// A pooled connection.
    pub(crate) async fn connection(&self) -> dispatch_core::Result<deadpool_redis::Connection> {
        self.inner.pool.get().await.map_err(error::pool_error)
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

    /// Run a plain command (no script) on a pooled connection within the call timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> dispatch_core::Result<T> {
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            cmd.query_async::<T>(&mut conn).await.map_err(error::redis_error)
        })
        .await
    }

    /// Run a pipeline on a pooled connection within the call timeout.
    pub(crate) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> dispatch_core::Result<T> {
        self.within_timeout(async {
            let mut conn = self.connection().await?;
            pipe.query_async::<T>(&mut conn).await.map_err(error::redis_error)
        })
        .await
    }
}
