//! `impl JobStore`: short methods forwarding to the files that do the work; heartbeat
//! (`lua/heartbeat.lua`) and cancel requests (`lua/cancel.lua`), one script call each; lookups.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Finish, FinishResult,
    HeartbeatReport, Job, JobCancel, JobFilter, JobId, JobState, JobStore, LeaseRef, LeaseToken,
    ListenerState, NewJob, Page, PageRequest, QueueCount, RescueReport, Result, WakeupStream,
};
use redis::Value;

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, duration_arg, int, job, string};

#[async_trait]
impl JobStore for RedisStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.enqueue_jobs(jobs).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_jobs(request).await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        self.finish_jobs(finishes).await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        if leases.is_empty() {
            return Ok(HeartbeatReport::default());
        }
        let mut call = self.call(&self.inner.scripts.heartbeat);
        call.arg(duration_arg(ttl));
        for lease in leases {
            call.arg(hex(lease.job_id.uuid())).arg(hex(lease.token.uuid()));
        }
        heartbeat_report(leases, array(self.invoke(&call).await?)?)
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        let mut call = self.call(&self.inner.scripts.cancel);
        call.arg(hex(id.uuid())).arg(DRIVE_JOB_CANCEL_REASON);
        job_cancel(array(self.invoke(&call).await?)?)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        self.rescue_leases(limit).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.job_key(&hex(id.uuid())))).await?;
        Fields::parse(reply)?.map(job).transpose()
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        self.list_job_page(filter, page).await
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.queue_counts().await
    }

    async fn release_claim(&self, token: LeaseToken) -> Result<usize> {
        self.release_claimed(token).await
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        self.next_due_in(queues, names).await
    }

    fn as_cluster_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::ClusterStore>> {
        Some(self)
    }

    fn as_cron_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::CronStore>> {
        Some(self)
    }

    fn as_flow_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::FlowStore>> {
        Some(self)
    }

    fn as_retention_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::RetentionStore>> {
        Some(self)
    }

    fn wakeups(&self) -> Option<WakeupStream> {
        self.inner.wake.subscribe()
    }

    fn listener_state(&self) -> Option<ListenerState> {
        Some(self.inner.wake.state())
    }
}

/// Heartbeat's answer, one code per lease in `leases` (0 lost, 1 renewed, 2 renewed with a
/// cancel request), as the report.
pub(crate) fn heartbeat_report(leases: &[LeaseRef], codes: Vec<Value>) -> Result<HeartbeatReport> {
    if codes.len() != leases.len() {
        return Err(internal(format!("heartbeat answered {} of {}", codes.len(), leases.len())));
    }
    let mut report = HeartbeatReport::default();
    for (lease, code) in leases.iter().zip(codes) {
        let id = lease.job_id;
        match int(code)? {
            0 => report.lost.push(id),
            1 => report.renewed.push(id),
            2 => {
                report.renewed.push(id);
                report.cancel_requested.push(id);
            }
            other => return Err(internal(format!("unknown heartbeat answer {other}"))),
        }
    }
    Ok(report)
}

/// Cancel's answer: `{1}` cancelled, `{2}` requested, `{3, state}` already final.
fn job_cancel(reply: Vec<Value>) -> Result<JobCancel> {
    let mut parts = reply.into_iter();
    let code = int(parts.next().ok_or_else(|| internal("an empty cancel answer"))?)?;
    match code {
        1 => Ok(JobCancel::Cancelled),
        2 => Ok(JobCancel::Requested),
        3 => {
            let state =
                string(parts.next().ok_or_else(|| internal("a final job lacks its state"))?)?;
            let state = JobState::from_str(&state)
                .map_err(|_| internal(format!("unknown job state {state:?}")))?;
            Ok(JobCancel::AlreadyFinal(state))
        }
        other => Err(internal(format!("unknown cancel answer {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn heartbeat_codes_sort_leases_into_the_report() {
        let leases: Vec<LeaseRef> =
            (0..3).map(|_| LeaseRef { job_id: JobId::new(), token: LeaseToken::new() }).collect();
        let report =
            heartbeat_report(&leases, vec![Value::Int(0), Value::Int(1), Value::Int(2)]).unwrap();
        let ids: Vec<JobId> = leases.iter().map(|l| l.job_id).collect();
        assert_eq!(report.lost, [ids[0]]);
        assert_eq!(report.renewed, [ids[1], ids[2]]);
        assert_eq!(report.cancel_requested, [ids[2]]);
        assert!(heartbeat_report(&leases, vec![Value::Int(1)]).is_err(), "one code per lease");
    }

    #[test]
    fn cancel_answers() {
        assert_eq!(job_cancel(vec![Value::Int(1)]).unwrap(), JobCancel::Cancelled);
        assert_eq!(job_cancel(vec![Value::Int(2)]).unwrap(), JobCancel::Requested);
        assert_eq!(
            job_cancel(vec![Value::Int(3), text("dead")]).unwrap(),
            JobCancel::AlreadyFinal(JobState::Dead)
        );
        assert!(job_cancel(vec![Value::Int(3)]).is_err());
        assert!(job_cancel(vec![Value::Int(9)]).is_err());
    }
}
