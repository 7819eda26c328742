//! Claim: one script call leases a batch (`lua/claim.lua`): due scheduled jobs of each
//! (queue, name) pair move to its ready set, then the best jobs of the pairs are leased.

use dispatch_core::{ClaimRequest, ClaimedJob, Result};

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, duration_arg, job};

impl RedisStore {
    pub(crate) async fn claim_jobs(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.limit == 0 || request.queues.is_empty() || request.names.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.call(&self.inner.scripts.claim);
        call.arg(request.limit)
            .arg(duration_arg(request.lease_ttl))
            .arg(hex(request.token.uuid()))
            .arg(request.worker.to_string())
            .arg(request.queues.len())
            .arg(&request.queues)
            .arg(&request.names);
        let reply = array(self.invoke(&call).await?)?;
        reply
            .into_iter()
            .map(|hash| {
                let fields =
                    Fields::parse(hash)?.ok_or_else(|| internal("a claimed job vanished"))?;
                let job = job(fields)?;
                let lease = job.lease.ok_or_else(|| internal("a claimed job has no lease"))?;
                Ok(ClaimedJob { job, lease })
            })
            .collect()
    }
}
