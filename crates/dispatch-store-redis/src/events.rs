//! Suspension, resolving a wait and publishing events, each one script call
//! (`lua/suspend_run.lua`, `lua/resolve_wait.lua`, `lua/publish_event.lua`; the wait and
//! kept-event keys are in `lua/runs.lua`). Event payloads travel as their own script
//! arguments, so they stay bytes.

use dispatch_core::{
    LeaseRef, NewEvent, Published, Result, RunId, Suspend, SuspendOutcome, WaitResolution,
    WaitingFor,
};

use crate::RedisStore;
use crate::error::internal;
use crate::row::{array, bytes, duration_arg, int, option_arg, parse_uuid, string, time_arg};

impl RedisStore {
    /// Suspend a run (see [`WorkflowStore::suspend_run`](dispatch_core::WorkflowStore)).
    pub(crate) async fn suspend(
        &self,
        lease: LeaseRef,
        suspend: Suspend,
    ) -> Result<SuspendOutcome> {
        let wake_at = suspend.required_wake_at()?;
        let waiting = WaitingFor::to_column(&suspend.waiting)?.unwrap_or_default();
        let mut call = self.fenced_call(&self.inner.scripts.suspend_run, lease, suspend.run);
        call.arg(time_arg(wake_at)).arg(waiting).arg(suspend.waits.len());
        for wait in &suspend.waits {
            call.arg(&wait.key).arg(&wait.name).arg(&wait.correlation);
        }
        let reply = array(self.invoke(&call).await?)?;
        match reply.into_iter().next().map(int).transpose()? {
            Some(0) => Ok(SuspendOutcome::CancelRequested),
            Some(1) => Ok(SuspendOutcome::Delivered),
            Some(2) => Ok(SuspendOutcome::Suspended { wake_at }),
            other => Err(internal(format!("unknown suspend answer {other:?}"))),
        }
    }

    /// Settle wait `key` of run `id` (see `resolve_wait`).
    pub(crate) async fn resolve(
        &self,
        lease: LeaseRef,
        id: RunId,
        key: &str,
    ) -> Result<WaitResolution> {
        let mut call = self.fenced_call(&self.inner.scripts.resolve_wait, lease, id);
        call.arg(key);
        let mut parts = array(self.invoke(&call).await?)?.into_iter();
        let kind = int(parts.next().ok_or_else(|| internal("a wait answer is empty"))?)?;
        match (kind, parts.next()) {
            (1, Some(payload)) => Ok(WaitResolution::Delivered(bytes(payload)?)),
            (0, None) => Ok(WaitResolution::TimedOut),
            _ => Err(internal("unknown wait answer")),
        }
    }

    /// Publish `event` (see `publish_event`): delivered in the script, or kept.
    pub(crate) async fn publish(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.inner.max_payload_bytes)?;
        let mut call = self.call(&self.inner.scripts.publish_event);
        call.arg(&event.name)
            .arg(&event.correlation)
            .arg(option_arg(event.scope.app.as_deref()))
            .arg(option_arg(event.scope.tenant.as_deref()))
            .arg(&event.payload)
            .arg(if event.broadcast { "1" } else { "0" })
            .arg(duration_arg(event.keep_for));
        let mut parts = array(self.invoke(&call).await?)?.into_iter();
        let kept = int(parts.next().ok_or_else(|| internal("a publish answer is empty"))?)? == 1;
        let delivered_to = parts
            .map(|id| Ok(RunId::from_uuid(parse_uuid(&string(id)?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Published { delivered_to, kept })
    }
}
