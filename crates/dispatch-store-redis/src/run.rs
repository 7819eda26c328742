//! What the workflow files share below the trait: the lease fence every drive call carries
//! (`fence` in `lua/runs.lua` checks it in the same script, before any write), reading runs and
//! checkpoints out of replies, and the argument forms of checkpoint writes and run ends.

use dispatch_core::{
    Checkpoint, LeaseRef, NewCheckpoint, Result, Run, RunEnd, RunId, RunSnapshot, Timestamp,
};
use redis::{Script, ScriptInvocation, Value};

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, checkpoints, int, run};

impl RedisStore {
    /// A call of a fenced script: run `id`, then the drive job and token of `lease` (the
    /// arguments `fence` reads), ready for the script's own arguments.
    pub(crate) fn fenced_call<'a>(
        &'a self,
        script: &'a Script,
        lease: LeaseRef,
        id: RunId,
    ) -> ScriptInvocation<'a> {
        let mut call = self.call(script);
        call.arg(hex(id.uuid())).arg(hex(lease.job_id.uuid())).arg(hex(lease.token.uuid()));
        call
    }

    /// Write `checkpoints` of run `id` under `lease`, in order (`lua/save_checkpoints.lua`).
    pub(crate) async fn write_checkpoints(
        &self,
        lease: LeaseRef,
        id: RunId,
        checkpoints: &[NewCheckpoint],
    ) -> Result<()> {
        let mut call = self.fenced_call(&self.inner.scripts.save_checkpoints, lease, id);
        for checkpoint in checkpoints {
            call.arg(&checkpoint.key).arg(&checkpoint.data);
        }
        self.invoke(&call).await.map(drop)
    }

    /// End run `id` under `lease` as `end` (`lua/end_run.lua`).
    pub(crate) async fn end_fenced(&self, lease: LeaseRef, id: RunId, end: RunEnd) -> Result<()> {
        let state = end.state();
        let value = match end {
            RunEnd::Completed(output) => output,
            RunEnd::Failed(error) | RunEnd::Cancelled(error) => error.into_bytes(),
        };
        let mut call = self.fenced_call(&self.inner.scripts.end_run, lease, id);
        call.arg(state.as_str()).arg(value);
        self.invoke(&call).await.map(drop)
    }
}

/// A run from an `HGETALL` reply that must hold one.
pub(crate) fn stored_run(reply: Value) -> Result<Run> {
    Fields::parse(reply)?.map(run).transpose()?.ok_or_else(|| internal("a run vanished"))
}

/// A snapshot from `lua/load_snapshot.lua`'s answer: { run hash, checkpoints, now }.
pub(crate) fn snapshot(reply: Value) -> Result<RunSnapshot> {
    let mut parts = array(reply)?.into_iter();
    let (Some(hash), Some(list), Some(now)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(internal("a snapshot lacks its parts"));
    };
    let checkpoints: Vec<Checkpoint> = checkpoints(list)?;
    Ok(RunSnapshot {
        run: stored_run(hash)?,
        checkpoints,
        now: Timestamp::from_unix_micros(int(now)?),
    })
}
