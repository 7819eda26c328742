//! Finish, heartbeat, rescue and cancel requests.
// Being built: every method below is replaced by its script call.

use std::time::Duration;

use dispatch_core::{
    Finish, FinishResult, HeartbeatReport, JobCancel, JobId, LeaseRef, RescueReport, Result,
};

use crate::RedisStore;
use crate::error::internal;

impl RedisStore {
    pub(crate) async fn finish_jobs(&self, _finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        Err(internal("finish is being built"))
    }

    pub(crate) async fn heartbeat_leases(
        &self,
        _leases: &[LeaseRef],
        _ttl: Duration,
    ) -> Result<HeartbeatReport> {
        Err(internal("heartbeat is being built"))
    }

    pub(crate) async fn cancel_job(&self, _id: JobId) -> Result<JobCancel> {
        Err(internal("cancel is being built"))
    }

    pub(crate) async fn rescue_leases(&self, _limit: usize) -> Result<RescueReport> {
        Err(internal("rescue is being built"))
    }
}
