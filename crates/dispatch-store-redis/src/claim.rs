//! Claim: one script call leases a batch (`lua/claim.lua`): due scheduled jobs of each
//! (queue, name) pair move to its ready set, then the best jobs of the pairs are leased. And
//! the release of a lost claim's leases (`lua/release_claim.lua`).

use dispatch_core::{ClaimRequest, ClaimedJob, LeaseToken, Result};
use redis::Value;

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, duration_arg, int, job, string};

/// A job just claimed by `request`, from its hash.
fn claimed(hash: Value, request: &ClaimRequest) -> Result<ClaimedJob> {
    let fields = Fields::parse(hash)?.ok_or_else(|| internal("a claimed job vanished"))?;
    let job = job(fields)?;
    match job.lease {
        Some(lease) if lease.token == request.token => Ok(ClaimedJob { job, lease }),
        _ => Err(internal(format!("claimed job {} does not hold the claim's lease", job.id))),
    }
}

/// How many lease entries one release-claim call asks its scan for.
const RELEASE_SCAN: usize = 1000;

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
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(ids), Some(inline)) = (reply.next(), reply.next()) else {
            return Err(internal("a claim answer lacks its parts"));
        };
        let (ids, mut hashes) = (array(ids)?, array(inline)?);
        if hashes.is_empty() && !ids.is_empty() {
            // The jobs as the claim left them: only their lease holder (this worker) changes
            // them now, apart from a cancel request, which the read then shows (as a heartbeat
            // would).
            let mut read = redis::pipe();
            for id in ids {
                read.cmd("HGETALL").arg(self.job_key(&string(id)?));
            }
            hashes = self.pipeline(&read).await?;
        }
        hashes.into_iter().map(|hash| claimed(hash, request)).collect()
    }

    /// Release every lease `token` wrote, scanning the running jobs a stretch per call until
    /// the scan ends; how many were released.
    pub(crate) async fn release_claimed(&self, token: LeaseToken) -> Result<usize> {
        let token = hex(token.uuid());
        let mut cursor = "0".to_owned();
        let mut released = 0;
        loop {
            let mut call = self.call(&self.inner.scripts.release_claim);
            call.arg(&token).arg(&cursor).arg(RELEASE_SCAN);
            let mut reply = array(self.invoke(&call).await?)?.into_iter();
            let (Some(count), Some(next)) = (reply.next(), reply.next()) else {
                return Err(internal("a release-claim answer lacks its parts"));
            };
            released += usize::try_from(int(count)?).map_err(|_| internal("a negative release"))?;
            cursor = string(next)?;
            if cursor == "0" {
                return Ok(released);
            }
        }
    }
}
