//! [`JobStore`] for [`PostgresStore`]: short methods forwarding to the concern of each call
//! (enqueue, claim, finish and rescue have files of their own), and the calls that are one
//! statement each: heartbeat, cancel request and lookups. Each hot-path call is one statement
//! for the whole batch; the transitions are decided in SQL exactly as the memory store decides
//! them in Rust.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, Enqueued, Error, Finish, FinishResult,
    HeartbeatReport, Job, JobCancel, JobFilter, JobId, JobState, JobStore, LeaseRef, ListenerState,
    NewJob, Page, PageRequest, QueueCount, RescueReport, Result, WakeupStream,
};
use sqlx::SqlStr;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::internal;
use crate::row::{JOB_COLUMNS, get, job_from_row, micros, sql_limit, state};
use crate::{PostgresStore, db_error, statement};

/// The lease renewal of a heartbeat, as CTEs after `t`: extend the leases `$2`/`$3` (job,
/// token) to now + `$4` µs, locking rows in ID order; `renewed` holds the renewed leases (`id`,
/// `lease_token`, `cancel_requested`, as [`heartbeat_report`] reads them). Shared by the plain
/// heartbeat and a worker's (`cluster`).
pub(crate) const RENEW_LEASES: &str = "\
     i AS (SELECT * FROM unnest($2::uuid[], $3::uuid[]) AS i(job_id, token)), \
     locked AS (SELECT j.id FROM {s}.jobs j JOIN i ON i.job_id = j.id AND i.token = j.lease_token \
       WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j), \
     renewed AS (UPDATE {s}.jobs j SET lease_expires = {sat(t.now, $4)} FROM locked l, t \
       WHERE j.id = l.id RETURNING j.id, j.lease_token, j.cancel_requested)";

/// Extend the leases `$2`/`$3` (job, token) to now + `$4` µs ([`RENEW_LEASES`]).
const HEARTBEAT: &str = "WITH t AS (SELECT {now} AS now), {renew_leases} \
     SELECT r.id, r.lease_token, r.cancel_requested FROM renewed r";

/// Cancel job `$2`: at once when available, as a request when running. When it drives a run
/// that has not ended, the run's cancel is requested instead (reason `$3`, kept when one is
/// recorded; a waiting drive job due at once, woken on channel `$4`), as `CANCEL_RUN` does and
/// locking the rows in its order (job, then run); the job is left alone (`run_cancel`). No row
/// when the job is not available or running.
const REQUEST_CANCEL: &str = "WITH t AS (SELECT {now} AS now), \
     job AS (SELECT j.id, j.state FROM {s}.jobs j WHERE j.id = $2 \
       AND j.state IN ('available', 'running') FOR UPDATE OF j), \
     run AS (SELECT x.id, x.cancel_reason FROM {s}.runs x JOIN job ON x.drive_job = job.id \
       WHERE x.state NOT IN ('completed', 'failed', 'cancelled') FOR UPDATE OF x), \
     marked AS (UPDATE {s}.runs x SET cancel_reason = $3, updated_at = t.now FROM run, t \
       WHERE x.id = run.id AND run.cancel_reason IS NULL), \
     due AS (UPDATE {s}.jobs j SET run_at = least(j.run_at, t.now) FROM job, run, t \
       WHERE j.id = job.id AND job.state = 'available' RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, due.queue) FROM due), \
     upd AS (UPDATE {s}.jobs j SET \
       state = CASE WHEN j.state = 'available' THEN 'cancelled' ELSE j.state END, \
       finished_at = CASE WHEN j.state = 'available' THEN t.now ELSE j.finished_at END, \
       cancel_requested = (j.state = 'running') \
     FROM t, job WHERE j.id = job.id AND NOT EXISTS (SELECT 1 FROM run) RETURNING j.state) \
     SELECT (SELECT upd.state FROM upd) AS state, EXISTS (SELECT 1 FROM run) AS run_cancel, \
       (SELECT count(*) FROM woke) AS notified FROM job";

/// The state of job `$1`.
const JOB_STATE: &str = "SELECT j.state FROM {s}.jobs j WHERE j.id = $1";

const GET_JOB: &str = "SELECT {job_columns} FROM {s}.jobs j WHERE j.id = $1";

const LIST_JOBS: &str = "SELECT {job_columns} FROM {s}.jobs j \
     WHERE ($1::uuid IS NULL OR j.id > $1) AND ($2::text IS NULL OR j.state = $2) \
     AND ($3::text IS NULL OR j.queue = $3) AND ($4::text IS NULL OR j.name = $4) \
     ORDER BY j.id LIMIT $5";

const COUNT_JOBS: &str = "SELECT j.queue, j.state, count(*) AS n FROM {s}.jobs j \
     GROUP BY j.queue, j.state";

/// The statements of this file, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    heartbeat: SqlStr,
    request_job_cancel: SqlStr,
    job_state: SqlStr,
    get_job: SqlStr,
    list_jobs: SqlStr,
    count_jobs: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build =
            |template: &str| statement(&template.replace("{job_columns}", JOB_COLUMNS), quoted);
        Self {
            heartbeat: build(&HEARTBEAT.replace("{renew_leases}", RENEW_LEASES)),
            request_job_cancel: build(REQUEST_CANCEL),
            job_state: build(JOB_STATE),
            get_job: build(GET_JOB),
            list_jobs: build(LIST_JOBS),
            count_jobs: build(COUNT_JOBS),
        }
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.timed("enqueue", self.enqueue_grouped(jobs)).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        self.claim_batch(request).await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        self.finish_batch(finishes).await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        if leases.is_empty() {
            return Ok(HeartbeatReport::default());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token.uuid()).collect();
        self.timed("heartbeat", async {
            let rows = sqlx::query(self.shared.sql.job.heartbeat.clone())
                .bind(self.now_param())
                .bind(&ids)
                .bind(&tokens)
                .bind(micros(ttl))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            heartbeat_report(leases, &rows)
        })
        .await
    }

    async fn request_job_cancel(&self, id: JobId) -> Result<JobCancel> {
        self.timed("request_job_cancel", async {
            // A job that left available or running between the two reads is final by the second.
            for _ in 0..3 {
                let row = sqlx::query(self.shared.sql.job.request_job_cancel.clone())
                    .bind(self.now_param())
                    .bind(id.uuid())
                    .bind(DRIVE_JOB_CANCEL_REASON)
                    .bind(self.channel())
                    .fetch_optional(&self.shared.pool)
                    .await
                    .map_err(db_error)?;
                if let Some(row) = row {
                    // A live run's drive job: its run's cancel was requested, the job untouched.
                    if get::<bool>(&row, "run_cancel")? {
                        return Ok(JobCancel::Requested);
                    }
                    let cancelled = get::<Option<String>>(&row, "state")?
                        .ok_or_else(|| internal(format!("cancel of job {id} changed nothing")))?;
                    return match state(&cancelled)? {
                        JobState::Cancelled => Ok(JobCancel::Cancelled),
                        JobState::Running => Ok(JobCancel::Requested),
                        other => Err(internal(format!("cancel left job {id} {other}"))),
                    };
                }
                let current: Option<String> =
                    sqlx::query_scalar(self.shared.sql.job.job_state.clone())
                        .bind(id.uuid())
                        .fetch_optional(&self.shared.pool)
                        .await
                        .map_err(db_error)?;
                match current.as_deref().map(state).transpose()? {
                    None => return Err(Error::not_found(format!("no job {id}"))),
                    Some(s) if s.is_final() => return Ok(JobCancel::AlreadyFinal(s)),
                    Some(_) => continue,
                }
            }
            Err(Error::unavailable(format!("postgres: job {id} kept changing; retry the cancel")))
        })
        .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        self.rescue_batch(limit).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.timed("get_job", async {
            let row = sqlx::query(self.shared.sql.job.get_job.clone())
                .bind(id.uuid())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(row.as_ref().map(job_from_row).transpose()?.map(|r| r.job))
        })
        .await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest<JobId>,
    ) -> Result<Page<Job, JobId>> {
        let limit = page.effective_limit();
        self.timed("list_jobs", async {
            let rows = sqlx::query(self.shared.sql.job.list_jobs.clone())
                .bind(page.after.map(|id| id.uuid()))
                .bind(filter.state.map(JobState::as_str))
                .bind(&filter.queue)
                .bind(&filter.name)
                .bind(sql_limit(limit + 1))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let items =
                rows.iter().map(|r| job_from_row(r).map(|r| r.job)).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |job: &Job| job.id))
        })
        .await
    }

    async fn count_jobs(&self) -> Result<Vec<QueueCount>> {
        self.timed("count_jobs", async {
            let rows = sqlx::query(self.shared.sql.job.count_jobs.clone())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let mut counts = rows
                .iter()
                .map(|row| {
                    Ok(QueueCount {
                        queue: get(row, "queue")?,
                        state: state(&get::<String>(row, "state")?)?,
                        count: u64::try_from(get::<i64>(row, "n")?).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            counts.sort();
            Ok(counts)
        })
        .await
    }

    async fn next_due(&self, queues: &[String], names: &[String]) -> Result<Option<Duration>> {
        self.next_due_of(queues, names).await
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

    fn wakeups(&self) -> Option<WakeupStream> {
        self.shared.wake.subscribe()
    }

    fn listener_state(&self) -> Option<ListenerState> {
        Some(self.shared.wake.state())
    }
}

/// The answer to a heartbeat of `leases` from the rows of the leases it renewed ([`RENEW_LEASES`]:
/// `id`, `lease_token`, `cancel_requested`; rows whose `id` is NULL renewed nothing): every
/// lease renewed or lost, in the order given.
pub(crate) fn heartbeat_report(leases: &[LeaseRef], rows: &[PgRow]) -> Result<HeartbeatReport> {
    let mut renewed = HashMap::new();
    for row in rows {
        let Some(id) = get::<Option<Uuid>>(row, "id")? else { continue };
        let key: (Uuid, Uuid) = (id, get(row, "lease_token")?);
        renewed.insert(key, get::<bool>(row, "cancel_requested")?);
    }
    let mut report = HeartbeatReport::default();
    for lease in leases {
        match renewed.get(&(lease.job_id.uuid(), lease.token.uuid())) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [
            &q.heartbeat,
            &q.request_job_cancel,
            &q.job_state,
            &q.get_job,
            &q.list_jobs,
            &q.count_jobs,
        ] {
            crate::assert_expanded(sql);
        }
    }
}
