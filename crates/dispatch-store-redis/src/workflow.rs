//! `impl WorkflowStore`: starting, reading, listing, loading, checkpointing, ending and
//! cancelling runs here, each one script call; suspension and events in `events.rs`, rewinds
//! and migrations in `rewind.rs`.

use std::str::FromStr;

use async_trait::async_trait;
use dispatch_core::{
    Checkpoint, LeaseRef, NewCheckpoint, NewEvent, NewJob, NewRun, Page, PageRequest, Published,
    Result, Run, RunCancel, RunEnd, RunFilter, RunId, RunSnapshot, RunState, Started, Suspend,
    SuspendOutcome, WaitResolution, WorkflowStore,
};

use crate::RedisStore;
use crate::enqueue::job_args;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, checkpoints, int, option_arg, parse_uuid, run, string};
use crate::run::{snapshot, stored_run};

#[async_trait]
impl WorkflowStore for RedisStore {
    async fn start_run(&self, new: NewRun, drive: NewJob) -> Result<Started> {
        new.validate(self.inner.max_payload_bytes)?;
        drive.validate(self.inner.max_payload_bytes)?;
        let mut call = self.call(&self.inner.scripts.start_run);
        call.arg(hex(new.id.uuid()))
            .arg(&new.name)
            .arg(new.version)
            .arg(&new.input)
            .arg(option_arg(new.scope.app.as_deref()))
            .arg(option_arg(new.scope.tenant.as_deref()))
            .arg(option_arg(new.idempotency_key.as_deref()))
            .arg(option_arg(new.parent.map(|p| hex(p.uuid())).as_deref()));
        job_args(&mut call, &drive);
        let mut parts = array(self.invoke(&call).await?)?.into_iter();
        let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
            return Err(internal("a start answer lacks its parts"));
        };
        let id = RunId::from_uuid(parse_uuid(&string(id)?)?);
        match int(kind)? {
            1 => Ok(Started::Created(id)),
            2 => Ok(Started::Existing(id)),
            other => Err(internal(format!("unknown start answer {other}"))),
        }
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.run_key(&hex(id.uuid())))).await?;
        Fields::parse(reply)?.map(run).transpose()
    }

    /// Runs in ID order after the cursor. One call reads at most 10,000 index entries: when
    /// a name filter skips that many before the page is full, the page is short (maybe empty)
    /// and `next` is the last ID read, so paging on continues the walk.
    async fn list_runs(
        &self,
        filter: &RunFilter,
        page: &PageRequest<RunId>,
    ) -> Result<Page<Run, RunId>> {
        let mut call = self.call(&self.inner.scripts.list_runs);
        call.arg(page.after.map(|id| hex(id.uuid())).unwrap_or_default())
            .arg(page.effective_limit())
            .arg(filter.state.map(RunState::as_str).unwrap_or_default())
            .arg(filter.name.as_deref().unwrap_or_default());
        let mut parts = array(self.invoke(&call).await?)?.into_iter();
        let next = string(parts.next().ok_or_else(|| internal("a run page lacks its cursor"))?)?;
        let items = parts.map(stored_run).collect::<Result<Vec<_>>>()?;
        let next = match next.as_str() {
            "" => None,
            id => Some(RunId::from_uuid(parse_uuid(id)?)),
        };
        Ok(Page { items, next })
    }

    async fn get_checkpoints(&self, run: RunId) -> Result<Vec<Checkpoint>> {
        let mut call = self.call(&self.inner.scripts.checkpoints);
        call.arg(hex(run.uuid()));
        checkpoints(self.invoke(&call).await?)
    }

    async fn load_snapshot(&self, lease: LeaseRef, run: RunId) -> Result<RunSnapshot> {
        let call = self.fenced_call(&self.inner.scripts.load_snapshot, lease, run);
        snapshot(self.invoke(&call).await?)
    }

    async fn save_checkpoints(
        &self,
        lease: LeaseRef,
        run: RunId,
        checkpoints: Vec<NewCheckpoint>,
    ) -> Result<()> {
        NewCheckpoint::validate_all(&checkpoints, self.inner.max_payload_bytes)?;
        self.write_checkpoints(lease, run, &checkpoints).await
    }

    async fn suspend_run(&self, lease: LeaseRef, suspend: Suspend) -> Result<SuspendOutcome> {
        self.suspend(lease, suspend).await
    }

    async fn resolve_wait(&self, lease: LeaseRef, run: RunId, key: &str) -> Result<WaitResolution> {
        self.resolve(lease, run, key).await
    }

    async fn end_run(&self, lease: LeaseRef, run: RunId, end: RunEnd) -> Result<()> {
        self.end_fenced(lease, run, end).await
    }

    async fn publish_event(&self, event: NewEvent) -> Result<Published> {
        self.publish(event).await
    }

    async fn request_run_cancel(&self, id: RunId, reason: &str) -> Result<RunCancel> {
        let mut call = self.call(&self.inner.scripts.cancel_run);
        call.arg(hex(id.uuid())).arg(reason);
        let mut parts = array(self.invoke(&call).await?)?.into_iter();
        let kind = int(parts.next().ok_or_else(|| internal("a cancel answer is empty"))?)?;
        match (kind, parts.next()) {
            (1, _) => Ok(RunCancel::Requested),
            (0, Some(state)) => Ok(RunCancel::AlreadyFinal(
                RunState::from_str(&string(state)?)
                    .map_err(|_| internal("a cancel answered an unknown run state"))?,
            )),
            _ => Err(internal("unknown cancel answer")),
        }
    }

    async fn rewind_run(&self, id: RunId, key: &str) -> Result<()> {
        self.rewind(id, key).await
    }

    async fn migrate_run(&self, id: RunId, version: u32, drive_job_name: &str) -> Result<()> {
        self.migrate(id, version, drive_job_name).await
    }
}
