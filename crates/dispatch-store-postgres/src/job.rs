//! [`JobStore`] for [`PostgresStore`]. Each hot-path call is one statement for the whole batch;
//! the transitions are decided in SQL exactly as the memory store decides them in Rust.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{
    CancelResult, ClaimRequest, ClaimedJob, DRIVE_JOB_CANCEL_REASON, DlqId, Enqueued, Error,
    Finish, FinishResult, HeartbeatReport, Job, JobFilter, JobId, JobState, JobStore, LeaseRef,
    NewJob, Outcome, Page, PageRequest, QueueCount, RescueReport, Result, WakeupStream,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::claim_mark::Hints;
use crate::row::{get, job_from_row, micros, run_at_parts, sql_limit, state};
use crate::{PostgresStore, db_error};

/// A finish that applied, as the finish statement reports it.
struct Applied {
    /// 1-based position of the item in the batch.
    ord: usize,
    state: JobState,
    dlq_id: Option<DlqId>,
    /// The job's last applied token before this finish.
    prev_finish: Option<Uuid>,
}

/// The finish batch as the finish statement's array parameters.
#[derive(Default)]
struct FinishColumns {
    job_ids: Vec<Uuid>,
    tokens: Vec<Uuid>,
    outcomes: Vec<&'static str>,
    fail_kinds: Vec<Option<&'static str>>,
    fail_msgs: Vec<Option<String>>,
    run_abs: Vec<Option<i64>>,
    run_delay: Vec<Option<i64>>,
}

impl FinishColumns {
    fn of(finishes: &[Finish]) -> Self {
        let mut c = Self::default();
        for finish in finishes {
            let (outcome, failure, run_at) = match &finish.outcome {
                Outcome::Complete => ("complete", None, None),
                Outcome::Retry { failure, run_at } => ("retry", Some(failure), Some(*run_at)),
                Outcome::Fail { failure } => ("fail", Some(failure), None),
                Outcome::Snooze { run_at } => ("snooze", None, Some(*run_at)),
                Outcome::Cancel => ("cancel", None, None),
                Outcome::Release => ("release", None, None),
            };
            let (run_abs, run_delay) = run_at.map(run_at_parts).unwrap_or_default();
            c.job_ids.push(finish.lease.job_id.uuid());
            c.tokens.push(finish.lease.token.uuid());
            c.outcomes.push(outcome);
            c.fail_kinds.push(failure.map(|f| f.kind.as_str()));
            // PostgreSQL text can not hold NUL: keep the message, mark where a NUL was.
            c.fail_msgs.push(failure.map(|f| f.message.replace('\0', "\u{fffd}")));
            c.run_abs.push(run_abs);
            c.run_delay.push(run_delay);
        }
        c
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.timed("enqueue", self.enqueue_grouped(jobs)).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.names.is_empty() || request.queues.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let hints = self.shared.claim_marks.hints(request);
        self.timed("claim", async {
            let rows = self
                .bind_claim(sqlx::query(self.shared.sql.claim.clone()), request, &hints)
                .fetch_all(&self.shared.hot)
                .await
                .map_err(db_error)?;
            let mut rows = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
            self.shared.claim_marks.update(request, &hints, &rows);
            // RETURNING gives no order: put the batch back in claim order.
            rows.sort_by_key(|r| (Reverse(r.job.priority), r.job.run_at, r.seq));
            rows.into_iter()
                .map(|row| {
                    let lease =
                        row.job.lease.ok_or_else(|| internal("claimed job without lease"))?;
                    Ok(ClaimedJob { job: row.job, lease })
                })
                .collect()
        })
        .await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        let c = FinishColumns::of(finishes);
        self.timed("finish", async {
            let rows = sqlx::query(self.shared.sql.finish.clone())
                .bind(self.now_param())
                .bind(&c.job_ids)
                .bind(&c.tokens)
                .bind(&c.outcomes)
                .bind(&c.fail_kinds)
                .bind(&c.fail_msgs)
                .bind(&c.run_abs)
                .bind(&c.run_delay)
                .bind(self.channel())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let applied = applied_by_job(&c, &rows)?;
            let others: Vec<Uuid> =
                c.job_ids.iter().filter(|id| !applied.contains_key(id)).copied().collect();
            let last = self.last_finish(&others).await?;
            Ok(answer_finishes(&c, &applied, &last))
        })
        .await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], ttl: Duration) -> Result<HeartbeatReport> {
        if leases.is_empty() {
            return Ok(HeartbeatReport::default());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token.uuid()).collect();
        self.timed("heartbeat", async {
            let rows = sqlx::query(self.shared.sql.heartbeat.clone())
                .bind(self.now_param())
                .bind(&ids)
                .bind(&tokens)
                .bind(micros(ttl))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let mut renewed = HashMap::new();
            for row in &rows {
                let key: (Uuid, Uuid) = (get(row, "id")?, get(row, "lease_token")?);
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
        })
        .await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelResult> {
        self.timed("request_cancel", async {
            // A job that left available or running between the two reads is final by the second.
            for _ in 0..3 {
                let row = sqlx::query(self.shared.sql.request_cancel.clone())
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
                        return Ok(CancelResult::Requested);
                    }
                    let cancelled = get::<Option<String>>(&row, "state")?
                        .ok_or_else(|| internal(format!("cancel of job {id} changed nothing")))?;
                    return match state(&cancelled)? {
                        JobState::Cancelled => Ok(CancelResult::Cancelled),
                        JobState::Running => Ok(CancelResult::Requested),
                        other => Err(internal(format!("cancel left job {id} {other}"))),
                    };
                }
                let current: Option<String> = sqlx::query_scalar(self.shared.sql.job_state.clone())
                    .bind(id.uuid())
                    .fetch_optional(&self.shared.pool)
                    .await
                    .map_err(db_error)?;
                match current.as_deref().map(state).transpose()? {
                    None => return Err(Error::not_found(format!("no job {id}"))),
                    Some(s) if s.is_final() => return Ok(CancelResult::AlreadyFinal(s)),
                    Some(_) => continue,
                }
            }
            Err(Error::unavailable(format!("postgres: job {id} kept changing; retry the cancel")))
        })
        .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<RescueReport> {
        if limit == 0 {
            return Ok(RescueReport::default());
        }
        self.timed("rescue_expired", async {
            let rows = sqlx::query(self.shared.sql.rescue.clone())
                .bind(self.now_param())
                .bind(sql_limit(limit))
                .bind(self.channel())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            rescue_report(&rows)
        })
        .await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.timed("get_job", async {
            let row = sqlx::query(self.shared.sql.get_job.clone())
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
            let rows = sqlx::query(self.shared.sql.list_jobs.clone())
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
            let rows = sqlx::query(self.shared.sql.count_jobs.clone())
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
        self.timed("next_due", async {
            let wait: Option<i64> = sqlx::query_scalar(self.shared.sql.next_due.clone())
                .bind(self.now_param())
                .bind(queues)
                .bind(names)
                .fetch_one(&self.shared.hot)
                .await
                .map_err(db_error)?;
            Ok(wait.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
        })
        .await
    }

    fn wakeups(&self) -> Option<WakeupStream> {
        self.shared.wake.subscribe()
    }
}

impl PostgresStore {
    /// The claim statement's parameters for `request`, in order (`$1..$7` of `CLAIM`).
    fn bind_claim<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        request: &'q ClaimRequest,
        hints: &'q Hints,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.now_param())
            .bind(&request.queues)
            .bind(&request.names)
            .bind(sql_limit(request.limit))
            .bind(request.worker.to_string())
            .bind(micros(request.lease_ttl))
            .bind(request.token.uuid())
            .bind(&hints.queues)
            .bind(&hints.names)
            .bind(&hints.priorities)
            .bind(&hints.from)
    }

    /// How PostgreSQL runs a claim of `request` on the data as it is: the claim statement,
    /// prepared and planned as the store's sessions plan it (the generic plan), executed under
    /// `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`, as the JSON document PostgreSQL returns.
    ///
    /// The statement really runs, in a transaction that is then rolled back: nothing is claimed,
    /// but the rows it would take stay locked (other claims skip them) until it ends. For
    /// diagnosing slow claims on real data, and for the tests that pin what a claim reads.
    pub async fn explain_claim(&self, request: &ClaimRequest) -> Result<String> {
        self.timed("explain_claim", async {
            let mut conn = self.shared.hot.acquire().await.map_err(db_error)?;
            // Without hints: the plan of a claim that reads every level from its front.
            let hints = Hints::default();
            let explained = explain_prepared_claim(&mut conn, &self.shared.sql.claim, || {
                self.bind_claim(sqlx::query(EXPLAIN_CLAIM), request, &hints)
            })
            .await;
            if explained.is_err() {
                // The session may still hold the prepared statement: do not pool it.
                conn.detach();
            }
            explained
        })
        .await
    }

    /// The token of the last finish applied to each of `jobs`, read after the finish statement
    /// (so a concurrent finish that won is seen).
    async fn last_finish(&self, jobs: &[Uuid]) -> Result<HashMap<Uuid, Option<Uuid>>> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(self.shared.sql.last_finish.clone())
            .bind(jobs)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(|row| Ok((get(row, "id")?, get(row, "last_finish_token")?))).collect()
    }
}

/// The finishes that applied, by job, from the finish statement's rows.
fn applied_by_job(c: &FinishColumns, rows: &[PgRow]) -> Result<HashMap<Uuid, Applied>> {
    let mut applied = HashMap::with_capacity(rows.len());
    for row in rows {
        let ord = usize::try_from(get::<i64>(row, "ord")?).map_err(internal)?;
        let job = ord
            .checked_sub(1)
            .and_then(|i| c.job_ids.get(i))
            .ok_or_else(|| internal(format!("finish applied item {ord} of {}", c.job_ids.len())))?;
        let entry = Applied {
            ord,
            state: state(&get::<String>(row, "state")?)?,
            dlq_id: get::<Option<Uuid>>(row, "dlq_id")?.map(DlqId::from_uuid),
            prev_finish: get(row, "prev_finish")?,
        };
        applied.insert(*job, entry);
    }
    Ok(applied)
}

/// One result per finish, in order, as if the items had been applied one after another: the
/// applied item of a job answers `Applied`; every other item is `AlreadyApplied` when its token
/// is the one last applied to the job at its turn, else `LeaseLost`.
fn answer_finishes(
    c: &FinishColumns,
    applied: &HashMap<Uuid, Applied>,
    last: &HashMap<Uuid, Option<Uuid>>,
) -> Vec<FinishResult> {
    let repeat_of = |last: Option<Uuid>, token: Uuid| {
        if last == Some(token) { FinishResult::AlreadyApplied } else { FinishResult::LeaseLost }
    };
    (0..c.job_ids.len())
        .map(|i| {
            let (job, token, ord) = (c.job_ids[i], c.tokens[i], i + 1);
            match applied.get(&job) {
                Some(a) if a.ord == ord => {
                    FinishResult::Applied { state: a.state, dlq_id: a.dlq_id }
                }
                Some(a) if ord < a.ord => repeat_of(a.prev_finish, token),
                Some(a) => repeat_of(Some(c.tokens[a.ord - 1]), token),
                None => repeat_of(last.get(&job).copied().flatten(), token),
            }
        })
        .collect()
}

/// The report of a rescue statement's rows, in lease-expiry order.
fn rescue_report(rows: &[PgRow]) -> Result<RescueReport> {
    let mut reclaimed = rows
        .iter()
        .map(|row| {
            let order: (i64, i64) = (get(row, "expired_at")?, get(row, "seq")?);
            let dlq_id = get::<Option<Uuid>>(row, "dlq_id")?.map(DlqId::from_uuid);
            let id = JobId::from_uuid(get(row, "id")?);
            Ok((order, id, state(&get::<String>(row, "state")?)?, dlq_id))
        })
        .collect::<Result<Vec<_>>>()?;
    reclaimed.sort_by_key(|r| r.0);
    let mut report = RescueReport::default();
    let mut seen = HashSet::new();
    for (_, id, state, dlq_id) in reclaimed {
        if !seen.insert(id) {
            return Err(internal(format!("rescue reclaimed job {id} twice")));
        }
        match (state, dlq_id) {
            (JobState::Available, _) => report.rescued.push(id),
            (JobState::Cancelled, _) => report.cancelled.push(id),
            (JobState::Dead, Some(dlq_id)) => report.promoted.push((id, dlq_id)),
            (other, _) => return Err(internal(format!("rescue left job {id} {other}"))),
        }
    }
    Ok(report)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("postgres: {e}"))
}

/// The name the claim is prepared under for [`PostgresStore::explain_claim`].
const EXPLAINED_CLAIM: &str = "dispatch_explained_claim";

/// The claim's parameter types, in order, for `PREPARE`.
const CLAIM_PARAMS: &str =
    "(bigint, text[], text[], bigint, text, bigint, uuid, text[], text[], int4[], int8[])";

/// The `EXPLAIN EXECUTE` of the prepared claim with the bound values as literals, quoted by the
/// server (a utility statement such as `EXPLAIN` takes no parameters).
const EXPLAIN_CLAIM: &str = "SELECT format('EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) \
     EXECUTE dispatch_explained_claim(%L::bigint, %L::text[], %L::text[], %L::bigint, %L, \
     %L::bigint, %L::uuid, %L::text[], %L::text[], %L::int4[], %L::int8[])', $1::bigint, \
     $2::text[], $3::text[], $4::bigint, $5::text, $6::bigint, $7::uuid, $8::text[], \
     $9::text[], $10::int4[], $11::int8[])";

/// Prepare `claim` on `conn`, explain one execution bound by `bind`, roll it back, and drop the
/// prepared statement again (a `PREPARE` outlives a rollback).
async fn explain_prepared_claim<'q>(
    conn: &mut sqlx::PgConnection,
    claim: &sqlx::SqlStr,
    bind: impl FnOnce() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<String> {
    let prepare = format!("PREPARE {EXPLAINED_CLAIM} {CLAIM_PARAMS} AS {}", claim.as_str());
    let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_error)?;
    // Safe: the store's own claim statement behind a fixed prefix; values are bound.
    sqlx::raw_sql(AssertSqlSafe(prepare)).execute(&mut *tx).await.map_err(db_error)?;
    let explain = bind().fetch_one(&mut *tx).await.and_then(|row| row.try_get::<String, _>(0));
    let explain = explain.map_err(db_error)?;
    let row = sqlx::raw_sql(AssertSqlSafe(explain)).fetch_one(&mut *tx).await.map_err(db_error)?;
    // The plan is `json`, whose binary form is its text.
    let plan: String = row.try_get_unchecked(0).map_err(db_error)?;
    tx.rollback().await.map_err(db_error)?;
    let deallocate = format!("DEALLOCATE {EXPLAINED_CLAIM}");
    sqlx::raw_sql(AssertSqlSafe(deallocate)).execute(&mut *conn).await.map_err(db_error)?;
    Ok(plan)
}
