//! [`JobStore`] for [`SqliteStore`]: short methods over the concern modules (`enqueue`, `claim`,
//! `finish`), with heartbeats, cancel requests and lookups here. Every write is one `BEGIN
//! IMMEDIATE` transaction on the writer connection; reads use the reader pool.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Error, Finish, FinishResult,
    HeartbeatReport, Job, JobCancel, JobFilter, JobId, JobState, JobStore, LeaseRef, NewJob, Page,
    PageRequest, QueueCount, RescueReport, Result, Timestamp, transition,
};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::claim::{Claim, next_due};
use crate::enqueue::{enqueue_batch, validate_batch};
use crate::error::db_error;
use crate::finish::{finish_batch, rescue_batch};
use crate::flow::claim::claim_batch;
use crate::row::{job_from_row, load_job, save_job, sql_limit, token_text};
use crate::run::{live_run_driven_by, request_run_cancel};

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.max_payload_bytes)?;
        let now = self.clock.now();
        let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        let results = self
            .write("enqueue", move |conn| {
                Box::pin(async move { enqueue_batch(conn, jobs, now).await })
            })
            .await?;
        let created = results.iter().zip(&queues).filter(|(r, _)| !r.is_duplicate());
        self.wakeups.notify(created.map(|(_, queue)| queue.as_str()));
        Ok(results)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.names.is_empty() || request.queues.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let claim = Claim::new(request.clone())?;
        self.write("claim", move |conn| {
            Box::pin(async move { claim_batch(conn, &claim, now).await })
        })
        .await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        let now = self.clock.now();
        let finishes = finishes.to_vec();
        self.write("finish", move |conn| {
            Box::pin(async move { finish_batch(conn, &finishes, now).await })
        })
        .await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let expires_at = (self.clock.now() + ttl).as_unix_micros();
        let leases = leases.to_vec();
        self.write("heartbeat", move |conn| {
            Box::pin(async move { renew(conn, &leases, expires_at).await })
        })
        .await
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        let now = self.clock.now();
        // The answer, and the queues of drive jobs made due (to wake after the commit).
        let (result, woken) = self
            .write("request_job_cancel", move |conn| {
                Box::pin(async move { request_job_cancel(conn, id, now).await })
            })
            .await?;
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(result)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        self.write("rescue_expired", move |conn| {
            Box::pin(async move { rescue_batch(conn, limit, now).await })
        })
        .await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.timed("get_job", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            Ok(load_job(&mut conn, id).await?.map(|row| row.job))
        })
        .await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        let limit = page.effective_limit();
        let after = page.after.map(|id| id.to_string());
        let state = filter.state.map(JobState::as_str);
        self.timed("list_jobs", async {
            let rows = sqlx::query(
                "SELECT * FROM jobs WHERE (? IS NULL OR id > ?) AND (? IS NULL OR state = ?) \
                 AND (? IS NULL OR queue = ?) AND (? IS NULL OR name = ?) ORDER BY id LIMIT +?",
            )
            .bind(&after)
            .bind(&after)
            .bind(state)
            .bind(state)
            .bind(&filter.queue)
            .bind(&filter.queue)
            .bind(&filter.name)
            .bind(&filter.name)
            .bind(sql_limit(limit + 1))
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
            let items =
                rows.iter().map(|r| job_from_row(r).map(|r| r.job)).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |job: &Job| job.id))
        })
        .await
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        let now = self.clock.now();
        self.timed("next_due", next_due(&self.readers, queues, names, now)).await
    }

    fn as_cluster_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::ClusterStore>> {
        Some(self)
    }

    fn as_retention_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn dispatch_core::RetentionStore>> {
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

    fn wakeups(&self) -> Option<dispatch_core::WakeupStream> {
        // Wake-ups reach the workers of this process only (other processes poll).
        Some(self.wakeups.subscribe())
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.timed("count_jobs", async {
            let rows =
                sqlx::query("SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state")
                    .fetch_all(&self.readers)
                    .await
                    .map_err(db_error)?;
            let mut counts = rows
                .iter()
                .map(|row| {
                    let state: String = row.try_get("state").map_err(db_error)?;
                    let count: i64 = row.try_get("n").map_err(db_error)?;
                    Ok(QueueCount {
                        queue: row.try_get("queue").map_err(db_error)?,
                        state: state.parse()?,
                        count: u64::try_from(count).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            counts.sort();
            Ok(counts)
        })
        .await
    }
}

/// A cancel request for job `id`, inside the caller's transaction: the answer, and the queues
/// of drive jobs made due (to wake after the commit).
async fn request_job_cancel(
    conn: &mut SqliteConnection,
    id: JobId,
    now: Timestamp,
) -> Result<(JobCancel, Vec<String>)> {
    let Some(mut row) = load_job(conn, id).await? else {
        return Err(Error::not_found(format!("no job {id}")));
    };
    // The drive job of a run that has not ended is cancelled through its run: a cancelled (or
    // cancel-flagged) drive job would leave the run without a driver.
    if !row.job.state.is_final()
        && let Some(run) = live_run_driven_by(conn, id).await?
    {
        let (_, queues) = request_run_cancel(conn, run, DRIVE_JOB_CANCEL_REASON, now).await?;
        return Ok((JobCancel::Requested, queues));
    }
    let result = transition::request_job_cancel(&mut row.job, now);
    if !matches!(result, JobCancel::AlreadyFinal(_)) {
        save_job(conn, &row).await?;
    }
    Ok((result, Vec::new()))
}

/// Extend every lease in `leases` that is still held, in one statement; report the rest as lost.
/// [`JobStore::heartbeat`] and `MembershipStore::heartbeat_worker` (`cluster.rs`) both renew
/// through it, inside their transactions.
pub(crate) async fn renew(
    conn: &mut SqliteConnection,
    leases: &[LeaseRef],
    expires_at: i64,
) -> Result<HeartbeatReport> {
    let mut report = HeartbeatReport::default();
    if leases.is_empty() {
        return Ok(report);
    }
    let rows: Vec<(String, String)> =
        leases.iter().map(|l| (l.job_id.to_string(), token_text(l.token))).collect();
    let json = serde_json::to_string(&rows).map_err(|e| Error::internal(format!("sqlite: {e}")))?;
    let renewed = sqlx::query(
        "UPDATE jobs SET lease_expires = ? FROM (SELECT json_extract(value, '$[0]') AS id, \
         json_extract(value, '$[1]') AS token FROM json_each(?)) AS f \
         WHERE jobs.id = f.id AND +jobs.state = 'running' AND jobs.lease_token = f.token \
         RETURNING jobs.id, jobs.cancel_requested",
    )
    .bind(expires_at)
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut held = HashMap::with_capacity(renewed.len());
    for row in renewed {
        let id: String = row.try_get(0).map_err(db_error)?;
        let cancel: i64 = row.try_get(1).map_err(db_error)?;
        held.insert(id, cancel != 0);
    }
    for lease in leases {
        match held.get(&lease.job_id.to_string()) {
            Some(&cancel) => {
                report.renewed.push(lease.job_id);
                if cancel {
                    report.cancel_requested.push(lease.job_id);
                }
            }
            None => report.lost.push(lease.job_id),
        }
    }
    Ok(report)
}
