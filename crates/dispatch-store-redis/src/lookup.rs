//! Listings, counts and the next due time: reads of the indexes the scripts keep.
//!
//! A listing is one script call (`lua/list_jobs.lua`) that walks an ID-ordered index (every
//! job, or one state's) after the cursor and answers the matching hashes, so a page costs one
//! round trip however selective its filters. Queue and name filters are checked per entry, so
//! one call reads at most [`SCAN_BUDGET`] index entries: a page that is not full by then comes
//! back short, with its cursor at the last entry read, and the caller's next page goes on from
//! there (a short page with a cursor is not the end; only a page without one is).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use dispatch_core::{Job, JobFilter, JobId, JobState, Page, PageRequest, QueueCount, Result};

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, int, job, option_arg, parse_uuid, string};

/// The most index entries one listing call reads: it bounds the time a page with selective
/// filters holds the server (scripts run alone).
pub(crate) const SCAN_BUDGET: usize = 10_000;

impl RedisStore {
    pub(crate) async fn list_job_page(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        let limit = page.effective_limit();
        let mut call = self.call(&self.inner.scripts.list_jobs);
        call.arg(filter.state.map_or("", JobState::as_str))
            .arg(page.after.map(|id| hex(id.uuid())).unwrap_or_default())
            .arg(limit + 1)
            .arg(SCAN_BUDGET)
            .arg(option_arg(filter.queue.as_deref()))
            .arg(option_arg(filter.name.as_deref()));
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(rows), Some(last), Some(stopped)) = (reply.next(), reply.next(), reply.next())
        else {
            return Err(internal("a listing answer lacks its parts"));
        };
        let jobs = array(rows)?.into_iter().map(listed_job).collect::<Result<Vec<_>>>()?;
        if jobs.len() <= limit && int(stopped)? == 1 {
            // The scan budget ran out first: go on after the last entry read.
            let last = JobId::from_uuid(parse_uuid(&string(last)?)?);
            return Ok(Page { items: jobs, next: Some(last) });
        }
        Ok(Page::from_overfetch(jobs, limit, |job| job.id))
    }

    pub(crate) async fn queue_counts(&self) -> Result<Vec<QueueCount>> {
        let fields: HashMap<String, i64> =
            self.query(redis::cmd("HGETALL").arg(self.counts_key())).await?;
        let mut counts = Vec::with_capacity(fields.len());
        for (field, count) in fields {
            if let Some(count) = queue_count(&field, count)? {
                counts.push(count);
            }
        }
        counts.sort();
        Ok(counts)
    }

    pub(crate) async fn next_due_in(
        &self,
        queues: &[String],
        names: &[String],
    ) -> Result<Option<Duration>> {
        if queues.is_empty() || names.is_empty() {
            return Ok(None);
        }
        // A script, not plain reads: it compares run-at times with the store's clock (NOW),
        // which is the server's unless a clock was injected.
        let mut call = self.call(&self.inner.scripts.next_due);
        call.arg(queues.len()).arg(queues).arg(names);
        let micros = int(self.invoke(&call).await?)?;
        Ok(u64::try_from(micros).ok().map(Duration::from_micros))
    }
}

/// One row of a listing.
fn listed_job(hash: redis::Value) -> Result<Job> {
    job(Fields::parse(hash)?.ok_or_else(|| internal("a listed job has no fields"))?)
}

/// A field of the counts hash (`<state>:<queue>`) and its count; `None` for a count of zero
/// (the scripts delete those, but a count is never listed as zero).
fn queue_count(field: &str, count: i64) -> Result<Option<QueueCount>> {
    let (state, queue) =
        field.split_once(':').ok_or_else(|| internal(format!("a count field {field:?}")))?;
    let state = JobState::from_str(state)
        .map_err(|_| internal(format!("unknown job state in count field {field:?}")))?;
    let Ok(count @ 1..) = u64::try_from(count) else { return Ok(None) };
    Ok(Some(QueueCount { queue: queue.to_owned(), state, count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_fields_split_at_the_state() {
        let count = queue_count("running:a:b{c}", 3).unwrap().unwrap();
        assert_eq!(
            (count.queue.as_str(), count.state, count.count),
            ("a:b{c}", JobState::Running, 3)
        );
        assert_eq!(queue_count("dead:q", 0).unwrap(), None);
        assert!(queue_count("nostate", 1).is_err());
        assert!(queue_count("asleep:q", 1).is_err());
    }
}
