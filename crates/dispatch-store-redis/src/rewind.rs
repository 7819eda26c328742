//! Rewinding a run to a checkpoint and migrating it to another version, one script call each
//! (`lua/rewind_run.lua`, `lua/migrate_run.lua`): the run made running again and its drive job
//! re-armed (`rearm_drive` in `lua/drives.lua`) in the same step.

use dispatch_core::{Result, RunId};

use crate::RedisStore;
use crate::keys::hex;

impl RedisStore {
    /// Rewind run `id` to its checkpoint `key` (see `rewind_run`).
    pub(crate) async fn rewind(&self, id: RunId, key: &str) -> Result<()> {
        let mut call = self.call(&self.inner.scripts.rewind_run);
        call.arg(hex(id.uuid())).arg(key);
        self.invoke(&call).await.map(drop)
    }

    /// Move run `id` to `version`, its drive job renamed `drive_job_name` (see `migrate_run`).
    pub(crate) async fn migrate(
        &self,
        id: RunId,
        version: u32,
        drive_job_name: &str,
    ) -> Result<()> {
        let mut call = self.call(&self.inner.scripts.migrate_run);
        call.arg(hex(id.uuid())).arg(version).arg(drive_job_name);
        self.invoke(&call).await.map(drop)
    }
}
