//! Enqueue for [`MemoryStore`](crate::MemoryStore): validation, unique keys and retried IDs.

use std::collections::HashSet;

use dispatch_core::{Enqueued, Error, ErrorKind, NewJob, Result, Timestamp, transition};

use crate::{Row, State};

/// What every enqueue checks before storing anything: each job valid (a batch is all or
/// nothing).
pub(crate) fn validate_batch(jobs: &[NewJob], max_payload_bytes: usize) -> Result<()> {
    jobs.iter().try_for_each(|job| job.validate(max_payload_bytes))
}

impl State {
    /// Store a validated batch: one result per item, and the queues to wake.
    pub(crate) fn enqueue_batch(
        &mut self,
        jobs: Vec<NewJob>,
        now: Timestamp,
    ) -> Result<(Vec<Enqueued>, Vec<String>)> {
        // Caller-chosen IDs must be distinct, and new unless the item repeats the stored job
        // (a retried call); checked before anything is stored.
        let mut ids = HashSet::with_capacity(jobs.len());
        if let Some(job) = jobs.iter().find(|j| !ids.insert(j.id) || self.reuses_id(j)) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("job {:?}: a job with ID {} already exists", job.name, job.id),
            ));
        }
        let mut woken = Vec::with_capacity(jobs.len());
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            // A retried item answers as the first call did, and changes nothing.
            if self.jobs.contains_key(&job.id) {
                results.push(Enqueued::Created(job.id));
                continue;
            }
            let queue = job.queue.clone();
            let result = self.enqueue_one(job, now);
            if !result.is_duplicate() {
                woken.push(queue);
            }
            results.push(result);
        }
        Ok((results, woken))
    }

    /// Whether `new` takes the ID of a stored job that it does not repeat: another name or
    /// payload. A repeat (same name and payload) is a retried enqueue, not a reuse.
    fn reuses_id(&self, new: &NewJob) -> bool {
        self.jobs
            .get(&new.id)
            .is_some_and(|row| row.job.name != new.name || row.job.payload != new.payload)
    }

    /// Store one new job, unless another job holds its unique key.
    pub(crate) fn enqueue_one(&mut self, new: NewJob, now: Timestamp) -> Enqueued {
        let unique_key = new.unique.as_ref().map(|u| (new.name.clone(), u.key.clone()));
        let holder = unique_key.as_ref().and_then(|k| self.unique.get(k)).copied();
        if let Some(holder) =
            holder.filter(|h| self.jobs.get(h).is_some_and(|r| r.holds_unique_key(now)))
        {
            return Enqueued::Duplicate(holder);
        }
        let unique_until = new.unique.as_ref().and_then(|u| u.window).map(|w| now + w);
        let id = self.insert(transition::enqueue(new, now), unique_until);
        if let Some(key) = unique_key {
            self.unique.insert(key, id);
        }
        Enqueued::Created(id)
    }

    /// Store a new available job (an enqueue's or a DLQ replay's) in enqueue order.
    pub(crate) fn insert(
        &mut self,
        job: dispatch_core::Job,
        unique_until: Option<Timestamp>,
    ) -> dispatch_core::JobId {
        let (id, seq) = (job.id, self.next_seq());
        if job.concurrency.is_some() {
            self.ensure_config(&job.queue);
        }
        self.jobs.insert(id, Row { job, seq, last_finish: None, unique_until, counted: false });
        self.index(id);
        id
    }
}
