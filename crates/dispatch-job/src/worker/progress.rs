//! Progress reports from handlers ([`JobContext::progress`](crate::JobContext::progress)):
//! the latest report of each attempt waits here and is written at the next heartbeat, one
//! store call for all of them ([`FlowStore::record_progress`], fenced by each lease), so a
//! handler reporting in a tight loop costs the store nothing more. An attempt's last report is
//! written when the attempt ends, before its finish, so "100 %" is never lost.

use std::sync::Arc;

use dispatch_core::{FlowStore, JobId, ProgressUpdate};

use super::Shared;
use super::health::{Operation, timed_out};

/// Write every waiting report (at a heartbeat).
pub(crate) async fn flush(shared: &Shared) {
    let Some(flow) = &shared.flow else { return };
    let updates = shared.progress.take_all();
    write(shared, flow, updates).await;
}

/// Write the waiting report of the attempt that just ended (before its finish).
pub(crate) async fn flush_one(shared: &Shared, job: JobId) {
    let Some(flow) = &shared.flow else { return };
    if let Some(update) = shared.progress.take(job) {
        write(shared, flow, vec![update]).await;
    }
}

async fn write(shared: &Shared, flow: &Arc<dyn FlowStore>, updates: Vec<ProgressUpdate>) {
    if updates.is_empty() {
        return;
    }
    let call = flow.record_progress(&updates);
    match tokio::time::timeout(shared.config.store_timeout, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "writing progress failed");
            shared.health.error(Operation::Heartbeat, &error);
        }
        Err(_) => shared.health.error(Operation::Heartbeat, &timed_out("record_progress")),
    }
}
