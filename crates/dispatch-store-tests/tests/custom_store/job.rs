//! [`JobStore`] for [`VecStore`]: each method finds its rows, lets `dispatch_core::transition`
//! decide what happens to them, and writes the result (a dead job's DLQ entry under the same
//! lock as the job, so the two are never apart).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::{
    ClaimRequest, ClaimedJob, Enqueued, Error, ErrorKind, Finish, FinishResult, HeartbeatReport,
    Job, JobCancel, JobFilter, JobId, JobState, JobStore, Lease, LeaseRef, NewJob, Page,
    PageRequest, QueueCount, RescueReport, Result, Timestamp, transition,
};

use crate::store::{Tables, VecStore, keyset_page};

#[async_trait]
impl JobStore for VecStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        // All or nothing: every item is checked before anything is stored.
        for new in &jobs {
            new.validate(DEFAULT_MAX_PAYLOAD_BYTES)?;
        }
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        check_ids(&tables, &jobs)?;
        Ok(jobs.into_iter().map(|new| enqueue_one(&mut tables, new, now)).collect())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let now = self.clock.now();
        let lease = Lease {
            owner: request.worker,
            token: request.token,
            expires_at: now + request.lease_ttl,
        };
        let mut tables = self.tables.lock();
        let picked = tables.jobs.claimable(request, now);
        let mut claimed = Vec::with_capacity(picked.len());
        for id in picked {
            if let Some(row) = tables.jobs.rows.get_mut(&id) {
                transition::claim(&mut row.job, lease);
                claimed.push(ClaimedJob { job: row.job.clone(), lease });
            }
        }
        Ok(claimed)
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        let tables = &mut *tables;
        let mut results = Vec::with_capacity(finishes.len());
        for finish in finishes {
            // An unknown job has no lease to hold.
            let Some(row) = tables.jobs.rows.get_mut(&finish.lease.job_id) else {
                results.push(FinishResult::LeaseLost);
                continue;
            };
            let done = transition::finish(&mut row.job, &mut row.last_finish, finish, now);
            if let Some(entry) = done.dlq {
                tables.dlq.insert(entry.id, entry);
            }
            results.push(done.result);
        }
        Ok(results)
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let expires_at = self.clock.now() + ttl;
        let mut tables = self.tables.lock();
        let mut report = HeartbeatReport::default();
        for lease in leases {
            let row = tables.jobs.rows.get_mut(&lease.job_id);
            match row.and_then(|row| transition::renew(&mut row.job, lease.token, expires_at)) {
                Some(cancel_requested) => {
                    report.renewed.push(lease.job_id);
                    if cancel_requested {
                        report.cancel_requested.push(lease.job_id);
                    }
                }
                None => report.lost.push(lease.job_id),
            }
        }
        Ok(report)
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        // The contract's special case (a job that drives a record of another concern is
        // cancelled through that record) can not arise in a store of jobs alone: every job is
        // cancelled as itself.
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        let row = tables
            .jobs
            .rows
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("no job {id}")))?;
        Ok(transition::request_job_cancel(&mut row.job, now))
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        let mut tables = self.tables.lock();
        let tables = &mut *tables;
        let mut report = RescueReport::default();
        for id in tables.jobs.expired(now, limit) {
            let Some(row) = tables.jobs.rows.get_mut(&id) else { continue };
            if let Some(entry) = transition::rescue(&mut row.job, now, &mut report) {
                tables.dlq.insert(entry.id, entry);
            }
        }
        Ok(report)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.tables.lock().jobs.rows.get(&id).map(|row| row.job.clone()))
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        let tables = self.tables.lock();
        let matching = tables.jobs.rows.values().map(|row| &row.job).filter(|job| {
            filter.state.is_none_or(|state| job.state == state)
                && filter.queue.as_ref().is_none_or(|queue| job.queue == *queue)
                && filter.name.as_ref().is_none_or(|name| job.name == *name)
        });
        Ok(keyset_page(matching, |job| job.id, page))
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        let tables = self.tables.lock();
        let mut counts: BTreeMap<(String, JobState), u64> = BTreeMap::new();
        for row in tables.jobs.rows.values() {
            *counts.entry((row.job.queue.clone(), row.job.state)).or_insert(0) += 1;
        }
        let counts = counts.into_iter();
        Ok(counts.map(|((queue, state), count)| QueueCount { queue, state, count }).collect())
    }
}

/// The IDs of a batch must be distinct, and an ID already stored may only come back as a retry
/// of the same job (same name and payload); anything else is a conflict and stores nothing.
fn check_ids(tables: &Tables, jobs: &[NewJob]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for new in jobs {
        if !seen.insert(new.id) {
            let message = format!("job {:?}: ID {} is twice in the batch", new.name, new.id);
            return Err(Error::new(ErrorKind::Conflict, message));
        }
        if let Some(row) = tables.jobs.rows.get(&new.id)
            && (row.job.name != new.name || row.job.payload != new.payload)
        {
            let message = format!("job {:?}: ID {} belongs to another job", new.name, new.id);
            return Err(Error::new(ErrorKind::Conflict, message));
        }
    }
    Ok(())
}

/// Store one checked item: a retried enqueue answers `Created` and changes nothing, an item
/// whose unique key is held is a duplicate of the holder, anything else is a new job.
fn enqueue_one(tables: &mut Tables, new: NewJob, now: Timestamp) -> Enqueued {
    if tables.jobs.rows.contains_key(&new.id) {
        return Enqueued::Created(new.id);
    }
    if let Some(unique) = &new.unique
        && let Some(holder) = tables.jobs.key_holder(&new.name, &unique.key, now)
    {
        return Enqueued::Duplicate(holder);
    }
    let unique_until = new.unique.as_ref().and_then(|unique| unique.window).map(|w| now + w);
    let id = new.id;
    tables.jobs.insert(transition::enqueue(new, now), unique_until);
    Enqueued::Created(id)
}
