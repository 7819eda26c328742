//! [`JobStore`] for [`SqliteStore`]. Every write is one `BEGIN IMMEDIATE` transaction on the
//! writer connection; the transitions themselves are decided in Rust on the loaded rows, the same
//! way the memory store decides them.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    AttemptError, CancelResult, ClaimRequest, ClaimedJob, DlqEntry, Enqueued, Error, ErrorKind,
    Failure, FailureKind, Finish, FinishResult, HeartbeatReport, Job, JobFilter, JobId, JobState,
    JobStore, LeaseRef, NewJob, Outcome, Page, PageRequest, QueueCount, RescueReport, Result,
    Timestamp,
};
use sqlx::{Row, SqliteConnection};

use crate::row::{JobRow, insert_dlq, insert_job, job_from_row, save_job, token_text};
use crate::{SqliteStore, db_error};

/// A row count or limit as SQLite takes it.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

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
        self.write("enqueue", move |conn| {
            Box::pin(async move {
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs {
                    results.push(enqueue_one(conn, job, now).await?);
                }
                Ok(results)
            })
        })
        .await
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
                // One statement claims the batch; each row gets its own random token.
                let sql = format!(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
                     lease_token = lower(hex(randomblob(16))), lease_expires = ?, \
                     cancel_requested = 0 WHERE seq IN ({candidates}) RETURNING *"
                );
                // Safe: the text holds only fixed SQL and placeholders; values are bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(request.worker.to_string())
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
            Box::pin(async move {
                let mut results = Vec::with_capacity(finishes.len());
                for finish in &finishes {
                    results.push(finish_one(conn, finish, now).await?);
                }
                Ok(results)
            })
        })
        .await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        let expires_at = (self.clock.now() + ttl).as_unix_micros();
        let leases = leases.to_vec();
        self.write("heartbeat", move |conn| {
            Box::pin(async move {
                let mut report = HeartbeatReport::default();
                for lease in leases {
                    let cancel: Option<i64> = sqlx::query_scalar(
                        "UPDATE jobs SET lease_expires = ? \
                         WHERE id = ? AND state = 'running' AND lease_token = ? \
                         RETURNING cancel_requested",
                    )
                    .bind(expires_at)
                    .bind(lease.job_id.to_string())
                    .bind(token_text(lease.token))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    match cancel {
                        Some(cancel) => {
                            report.renewed.push(lease.job_id);
                            if cancel != 0 {
                                report.cancel_requested.push(lease.job_id);
                            }
                        }
                        None => report.lost.push(lease.job_id),
                    }
                }
                Ok(report)
            })
        })
        .await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        let now = self.clock.now();
        self.write("request_cancel", move |conn| {
            Box::pin(async move {
                let Some(mut row) = load(conn, id).await? else {
                    return Err(Error::not_found(format!("no job {id}")));
                };
                let result = match row.job.state {
                    JobState::Available => {
                        finalize(&mut row.job, JobState::Cancelled, now);
                        CancelResult::Cancelled
                    }
                    JobState::Running => {
                        row.job.cancel_requested = true;
                        CancelResult::Requested
                    }
                    state => return Ok(CancelResult::AlreadyFinal(state)),
                };
                save_job(conn, &row).await?;
                Ok(result)
            })
        })
        .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        let now = self.clock.now();
        self.write("rescue_expired", move |conn| {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT * FROM jobs WHERE state = 'running' AND lease_expires <= ? \
                     ORDER BY lease_expires, id LIMIT ?",
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
                        insert_dlq(conn, &entry).await?;
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
                 AND (? IS NULL OR queue = ?) AND (? IS NULL OR name = ?) ORDER BY id LIMIT ?",
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
        let queues = serde_json::to_string(queues).map_err(internal)?;
        let names = serde_json::to_string(names).map_err(internal)?;
        self.timed("next_due", async {
            let earliest: Option<i64> = sqlx::query_scalar(
                "SELECT min(run_at) FROM jobs WHERE state = 'available' \
                 AND queue IN (SELECT value FROM json_each(?)) \
                 AND name IN (SELECT value FROM json_each(?))",
            )
            .bind(queues)
            .bind(names)
            .fetch_one(&self.readers)
            .await
            .map_err(db_error)?;
            Ok(earliest.map(|micros| Timestamp::from_unix_micros(micros).duration_since(now)))
        })
        .await
    }

    fn capabilities(&self) -> dispatch_core::Capabilities {
        // `SqliteStore::enqueue_in` writes jobs inside the application's own transaction.
        dispatch_core::Capabilities::NONE.with_transactional_enqueue(true)
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

/// The claim's candidate `seq`s as SQL, with the (queue, name) pairs its placeholders bind (four
/// per pair: queue, name, now, limit; then the overall limit). One sub-select per pair, each an
/// equality search of the partial claim index in claim order, so a claim reads only the jobs it
/// takes (an `IN (json_each(..))` filter made SQLite scan every available job). Pairs are
/// deduplicated and capped below SQLite's 500-term compound limit.
fn claim_candidates(queues: &[String], names: &[String]) -> (String, Vec<(String, String)>) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for queue in queues {
        for name in names {
            let pair = (queue.clone(), name.clone());
            if !pairs.contains(&pair) && pairs.len() < 400 {
                pairs.push(pair);
            }
        }
    }
    let per_pair = "SELECT seq, priority, run_at FROM (SELECT seq, priority, run_at FROM jobs \
                    WHERE state = 'available' AND queue = ? AND name = ? AND run_at <= ? \
                    ORDER BY priority DESC, run_at, seq LIMIT ?)";
    let union = vec![per_pair; pairs.len()].join(" UNION ALL ");
    let sql = format!("SELECT seq FROM ({union}) ORDER BY priority DESC, run_at, seq LIMIT ?");
    (sql, pairs)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: {e}"))
}

/// What every enqueue checks before writing: each job valid, no ID twice in the batch.
pub(crate) fn validate_batch(jobs: &[NewJob], max_payload_bytes: usize) -> Result<()> {
    for job in jobs {
        job.validate(max_payload_bytes)?;
    }
    let mut ids = HashSet::with_capacity(jobs.len());
    match jobs.iter().find(|j| !ids.insert(j.id)) {
        Some(job) => Err(reused(job)),
        None => Ok(()),
    }
}

pub(crate) fn reused(job: &NewJob) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("job {:?}: a job with ID {} already exists", job.name, job.id),
    )
}

pub(crate) async fn enqueue_one(
    conn: &mut SqliteConnection,
    new: NewJob,
    now: Timestamp,
) -> Result<Enqueued> {
    if let Some(unique) = &new.unique {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE name = ? AND unique_key = ? \
             AND (state IN ('available', 'running') OR unique_until > ?) \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(&new.name)
        .bind(&unique.key)
        .bind(now.as_unix_micros())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        if let Some(holder) = holder {
            return Ok(Enqueued::Duplicate(holder.parse()?));
        }
    }
    let exists: Option<i64> = sqlx::query_scalar("SELECT seq FROM jobs WHERE id = ?")
        .bind(new.id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    if exists.is_some() {
        return Err(reused(&new));
    }
    let unique_until = new.unique.as_ref().and_then(|u| u.window).map(|w| now + w);
    let id = new.id;
    let job = Job {
        id,
        name: new.name,
        queue: new.queue,
        payload: new.payload,
        priority: new.priority,
        state: JobState::Available,
        attempt: 0,
        max_attempts: new.max_attempts,
        timeout: new.timeout,
        run_at: new.run_at.resolve(now),
        created_at: now,
        finished_at: None,
        unique_key: new.unique.map(|u| u.key),
        scope: new.scope,
        lease: None,
        cancel_requested: false,
        errors: Vec::new(),
        dlq_id: None,
    };
    insert_job(conn, &job, unique_until).await?;
    Ok(Enqueued::Created(id))
}

async fn finish_one(
    conn: &mut SqliteConnection,
    finish: &Finish,
    now: Timestamp,
) -> Result<FinishResult> {
    let Some(mut row) = load(conn, finish.lease.job_id).await? else {
        return Ok(FinishResult::LeaseLost);
    };
    let holds = row.job.state == JobState::Running
        && row.job.lease.is_some_and(|l| l.token == finish.lease.token);
    if !holds {
        return Ok(if row.last_finish == Some(finish.lease.token) {
            FinishResult::AlreadyApplied
        } else {
            FinishResult::LeaseLost
        });
    }
    row.last_finish = Some(finish.lease.token);
    let job = &mut row.job;
    let cancel_requested = job.cancel_requested;
    job.lease = None;
    job.cancel_requested = false;
    let mut dlq = None;
    match &finish.outcome {
        Outcome::Complete => finalize(job, JobState::Completed, now),
        Outcome::Cancel => finalize(job, JobState::Cancelled, now),
        // A cancel request wins over running again.
        Outcome::Retry { failure, .. } if cancel_requested => {
            record(job, failure.clone(), now);
            finalize(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { .. } | Outcome::Release if cancel_requested => {
            finalize(job, JobState::Cancelled, now);
        }
        Outcome::Snooze { run_at } => give_back(job, run_at.resolve(now)),
        Outcome::Release => give_back(job, now),
        Outcome::Fail { failure } => {
            record(job, failure.clone(), now);
            dlq = Some(promote(job, now));
        }
        Outcome::Retry { failure, run_at } => {
            record(job, failure.clone(), now);
            if job.attempt < job.max_attempts {
                job.state = JobState::Available;
                job.run_at = run_at.resolve(now);
            } else {
                dlq = Some(promote(job, now));
            }
        }
    }
    let result = FinishResult::Applied { state: job.state, dlq_id: dlq.as_ref().map(|e| e.id) };
    save_job(conn, &row).await?;
    if let Some(entry) = dlq {
        insert_dlq(conn, &entry).await?;
    }
    Ok(result)
}

/// End a job in a final state.
fn finalize(job: &mut Job, state: JobState, now: Timestamp) {
    job.state = state;
    job.finished_at = Some(now);
}

/// Available again with the attempt returned (snooze, release).
fn give_back(job: &mut Job, run_at: Timestamp) {
    job.attempt = job.attempt.saturating_sub(1);
    job.state = JobState::Available;
    job.run_at = run_at;
}

/// Append the failure of the current attempt to the job's error history.
fn record(job: &mut Job, failure: Failure, now: Timestamp) {
    job.errors.push(AttemptError {
        attempt: job.attempt,
        kind: failure.kind,
        message: failure.message,
        at: now,
    });
}

/// Make a job dead; the caller writes the returned DLQ entry in the same transaction.
fn promote(job: &mut Job, now: Timestamp) -> DlqEntry {
    finalize(job, JobState::Dead, now);
    let entry = DlqEntry::for_job(job, now);
    job.dlq_id = Some(entry.id);
    entry
}

/// Reclaim a job whose lease expired; returns its DLQ entry when it died.
fn rescue_one(job: &mut Job, now: Timestamp, report: &mut RescueReport) -> Option<DlqEntry> {
    let cancel_requested = job.cancel_requested;
    let message = match job.lease.take() {
        Some(lease) => format!("lease held by {} expired", lease.owner),
        None => "lease expired".to_owned(),
    };
    job.cancel_requested = false;
    record(job, Failure::new(FailureKind::LeaseExpired, message), now);
    if cancel_requested {
        finalize(job, JobState::Cancelled, now);
        report.cancelled.push(job.id);
        None
    } else if job.attempt < job.max_attempts {
        job.state = JobState::Available;
        job.run_at = now;
        report.rescued.push(job.id);
        None
    } else {
        let entry = promote(job, now);
        report.promoted.push((job.id, entry.id));
        Some(entry)
    }
}
