//! [`JobStore`] for [`SqliteStore`]. Every write is one `BEGIN IMMEDIATE` transaction on the
//! writer connection; the transitions themselves are decided in Rust on the loaded rows, the same
//! way the memory store decides them.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    CancelResult, ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Error, Finish,
    FinishResult, HeartbeatReport, Job, JobFilter, JobId, JobState, JobStore, LeaseRef, NewJob,
    Page, PageRequest, QueueCount, RescueReport, Result, Timestamp,
};
use sqlx::{Row, SqliteConnection};

use crate::enqueue::{enqueue_batch, validate_batch};
use crate::finish::{finalize, finish_batch, rescue_one, write_dead};
use crate::row::{JobRow, job_from_row, save_job, sql_limit, token_text};
use crate::workflow::{live_run_driven_by, request_cancel as request_run_cancel};
use crate::{SqliteStore, db_error};

/// Load one job by ID.
pub(crate) async fn load(conn: &mut SqliteConnection, id: JobId) -> Result<Option<JobRow>> {
    sqlx::query("SELECT * FROM jobs WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

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
        let request = request.clone();
        let (candidates, pairs) = claim_candidates(&request.queues, &request.names);
        self.write("claim", move |conn| {
            Box::pin(async move {
                let expires_at = now + request.lease_ttl;
                // One statement claims the batch, every lease under the request's token.
                let sql = format!(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
                     lease_token = ?, lease_expires = ?, \
                     cancel_requested = 0 WHERE seq IN ({candidates}) RETURNING *"
                );
                // Safe: the text holds only fixed SQL and placeholders; values are bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(request.worker.to_string())
                    .bind(token_text(request.token))
                    .bind(expires_at.as_unix_micros());
                for (queue, name) in &pairs {
                    query = query
                        .bind(queue.as_str())
                        .bind(name.as_str())
                        .bind(now.as_unix_micros())
                        .bind(sql_limit(request.limit));
                }
                let rows = query
                    .bind(sql_limit(request.limit))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
                let mut rows = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
                // RETURNING gives no order: put the batch back in claim order.
                rows.sort_by_key(|r| (std::cmp::Reverse(r.job.priority), r.job.run_at, r.seq));
                let mut claimed = Vec::with_capacity(rows.len());
                for row in rows {
                    let lease =
                        row.job.lease.ok_or_else(|| internal("claimed job without lease"))?;
                    claimed.push(ClaimedJob { job: row.job, lease });
                }
                Ok(claimed)
            })
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

    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        let now = self.clock.now();
        // The answer, and the queues of drive jobs made due (to wake after the commit).
        let (result, woken) = self
            .write("request_cancel", move |conn| {
                Box::pin(async move {
                    let Some(mut row) = load(conn, id).await? else {
                        return Err(Error::not_found(format!("no job {id}")));
                    };
                    // The drive job of a run that has not ended is cancelled through its run: a
                    // cancelled (or cancel-flagged) drive job would leave the run without a driver.
                    if !row.job.state.is_final()
                        && let Some(run) = live_run_driven_by(conn, id).await?
                    {
                        let (_, queues) =
                            request_run_cancel(conn, run, DRIVE_JOB_CANCEL_REASON, now).await?;
                        return Ok((CancelResult::Requested, queues));
                    }
                    let result = match row.job.state {
                        JobState::Available => {
                            finalize(&mut row.job, JobState::Cancelled, now);
                            CancelResult::Cancelled
                        }
                        JobState::Running => {
                            row.job.cancel_requested = true;
                            CancelResult::Requested
                        }
                        state => return Ok((CancelResult::AlreadyFinal(state), Vec::new())),
                    };
                    save_job(conn, &row).await?;
                    Ok((result, Vec::new()))
                })
            })
            .await?;
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(result)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        self.write("rescue_expired", move |conn| {
            Box::pin(async move {
                let rows = sqlx::query(
                    // Pinned to the lease index: only expired leases are read (the planner
                    // may otherwise walk every running job).
                    "SELECT * FROM jobs INDEXED BY jobs_lease \
                     WHERE state = 'running' AND lease_expires <= ? \
                     ORDER BY lease_expires, id LIMIT +?",
                )
                .bind(now.as_unix_micros())
                .bind(sql_limit(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
                let mut report = RescueReport::default();
                for row in &rows {
                    let mut row = job_from_row(row)?;
                    let dlq = rescue_one(&mut row.job, now, &mut report);
                    save_job(conn, &row).await?;
                    if let Some(entry) = dlq {
                        write_dead(conn, &entry, now).await?;
                    }
                }
                Ok(report)
            })
        })
        .await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.timed("get_job", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            Ok(load(&mut conn, id).await?.map(|row| row.job))
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
        let pairs = queue_name_pairs(queues, names);
        if pairs.is_empty() {
            return Ok(None);
        }
        let per_pair = "SELECT min(run_at) AS due FROM jobs INDEXED BY jobs_due \
                        WHERE state = 'available' AND queue = ? AND name = ?";
        let union = vec![per_pair; pairs.len()].join(" UNION ALL ");
        let sql = format!("SELECT min(due) FROM ({union})");
        self.timed("next_due", async {
            // Safe: the text holds only fixed SQL and placeholders; values are bound.
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            for (queue, name) in &pairs {
                query = query.bind(queue.as_str()).bind(name.as_str());
            }
            let earliest: Option<i64> = query.fetch_one(&self.readers).await.map_err(db_error)?;
            Ok(earliest.map(|micros| Timestamp::from_unix_micros(micros).duration_since(now)))
        })
        .await
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

/// Every (queue, name) pair a claim or next-due lookup searches, deduplicated and capped below
/// SQLite's 500-term compound limit.
fn queue_name_pairs(queues: &[String], names: &[String]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for queue in queues {
        for name in names {
            let pair = (queue.clone(), name.clone());
            if !pairs.contains(&pair) && pairs.len() < 400 {
                pairs.push(pair);
            }
        }
    }
    pairs
}

/// The claim's candidate `seq`s as SQL, with the (queue, name) pairs its placeholders bind (four
/// per pair: queue, name, now, limit; then the overall limit). One sub-select per pair, each an
/// equality search of the claim index in claim order, so a claim reads only the jobs it takes
/// (an `IN (json_each(..))` filter made SQLite scan every available job). `INDEXED BY` pins the
/// index: the planner would otherwise prefer `jobs_due` and sort every due job. Limits are
/// written `+?` (see [`sql_limit`]): a bare `LIMIT ?` makes SQLite re-prepare this
/// statement at every claim, whose limit (the worker's free slots) changes from call to call.
fn claim_candidates(queues: &[String], names: &[String]) -> (String, Vec<(String, String)>) {
    let pairs = queue_name_pairs(queues, names);
    let per_pair = "SELECT seq, priority, run_at FROM (SELECT seq, priority, run_at FROM jobs \
                    INDEXED BY jobs_claim WHERE state = 'available' AND queue = ? AND name = ? \
                    AND run_at <= ? ORDER BY priority DESC, run_at, seq LIMIT +?)";
    let union = vec![per_pair; pairs.len()].join(" UNION ALL ");
    let sql = format!("SELECT seq FROM ({union}) ORDER BY priority DESC, run_at, seq LIMIT +?");
    (sql, pairs)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: {e}"))
}

/// Extend every lease in `leases` that is still held, in one statement; report the rest as lost.
async fn renew(
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
    let json = serde_json::to_string(&rows).map_err(internal)?;
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
