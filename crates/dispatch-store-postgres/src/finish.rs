//! Finish and rescue: the ways an attempt ends (complete, retry, fail, snooze, cancel, release),
//! each batch one statement, and the rescue of expired leases (whose body the reclaim of a gone
//! worker's jobs, in `cluster`, shares). Both decide the transitions in SQL exactly as the
//! memory store decides them in Rust; a job they kill gets its DLQ entry, and the workflow run
//! it drives fails, in the same statement, and the jobs they make available wake workers with
//! one `NOTIFY` per statement.

use std::collections::{HashMap, HashSet};

use dispatch_core::{
    DlqId, FailureKind, Finish, FinishResult, JobId, JobState, RescueReport, Result,
};
use sqlx::SqlStr;
use sqlx::postgres::{PgExecutor, PgRow};
use uuid::Uuid;

use crate::error::internal;
use crate::row::{get, run_at_parts, sql_limit, state};
use crate::{PostgresStore, db_error, statement};

/// A new UUIDv7 made by the database (PostgreSQL 15 has no `uuidv7()`): milliseconds since the
/// epoch in the first 48 bits, version 7, random rest. DLQ IDs are made this way so keyset
/// pagination of the DLQ follows the order entries were written.
const UUID_V7: &str = "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing \
     substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) \
     from 1 for 6), 52, 1), 53, 1), 'hex')::uuid";

/// Columns a job transition returns so its dead jobs can be copied into the DLQ (alias `u`).
const DEAD_COPY: &str = "INSERT INTO {s}.dlq (id, job_id, name, queue, payload, priority, \
     attempts, max_attempts, timeout_us, scope_app, scope_tenant, errors, failed_at) \
     SELECT u.dlq_id, u.id, u.name, u.queue, u.payload, u.priority, u.attempt, u.max_attempts, \
     u.timeout_us, u.scope_app, u.scope_tenant, u.errors, u.finished_at FROM upd u \
     WHERE u.state = 'dead'";

/// One NOTIFY for the jobs a transition made available (`upd`), if any: the queue's name when
/// they share one queue, else empty ("any queue"). `$chan` is the channel parameter.
const WOKE: &str = "SELECT pg_notify($chan, CASE WHEN count(DISTINCT u.queue) = 1 \
     THEN min(u.queue) ELSE '' END) FROM upd u WHERE u.state = 'available' HAVING count(*) > 0";

/// A dying drive job fails its workflow run in the same statement: for the jobs a transition made
/// dead (`upd`), the run they drive (unless it already ended) becomes failed with the job's last
/// error, and the run's event waits are dropped. Touches no row when no job died.
const DRIVE_DEATH: &str = "failed_runs AS (UPDATE {s}.runs r SET state = 'failed', waiting = NULL, \
       error = coalesce(u.errors -> -1 ->> 'message', 'the drive job died'), \
       updated_at = u.finished_at, finished_at = u.finished_at \
       FROM upd u WHERE u.state = 'dead' AND r.drive_job = u.id \
       AND r.state IN ('running', 'suspended')), \
     dropped_waits AS (DELETE FROM {s}.event_waits w USING upd u, {s}.runs r \
       WHERE u.state = 'dead' AND r.drive_job = u.id AND w.run_id = r.id)";

/// End attempts. `$2..$8` are the finishes (job, token, outcome, failure kind and message,
/// absolute or relative run-at). Rows are locked in ID order; the first item per job whose token
/// holds the lease applies (in batch order). Dead jobs get their DLQ entry in this statement, and
/// the workflow runs they drive fail in it.
const FINISH: &str = "WITH t AS (SELECT {now} AS now), \
     i AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
       $7::int8[], $8::int8[]) WITH ORDINALITY \
       AS i(job_id, token, outcome, fail_kind, fail_msg, run_abs, run_delay, ord)), \
     locked AS (SELECT j.id, j.attempt, j.max_attempts, j.cancel_requested, j.lease_token, \
       j.last_finish_token FROM {s}.jobs j \
       WHERE j.id IN (SELECT job_id FROM i) AND j.state = 'running' ORDER BY j.id FOR UPDATE), \
     pick AS (SELECT DISTINCT ON (i.job_id) i.*, l.last_finish_token AS prev_finish, \
       CASE WHEN i.outcome = 'complete' THEN 'completed' \
         WHEN i.outcome = 'fail' THEN 'dead' \
         WHEN i.outcome = 'cancel' OR l.cancel_requested THEN 'cancelled' \
         WHEN i.outcome IN ('snooze', 'release') THEN 'available' \
         WHEN l.attempt < l.max_attempts THEN 'available' \
         ELSE 'dead' END AS new_state \
       FROM i JOIN locked l ON l.id = i.job_id AND l.lease_token = i.token \
       ORDER BY i.job_id, i.ord), \
     upd AS (UPDATE {s}.jobs j SET state = p.new_state, \
       attempt = CASE WHEN p.new_state = 'available' AND p.outcome IN ('snooze', 'release') \
         THEN greatest(j.attempt - 1, 0) ELSE j.attempt END, \
       run_at = CASE WHEN p.new_state <> 'available' THEN j.run_at \
         WHEN p.outcome = 'release' THEN t.now \
         ELSE coalesce(p.run_abs, {sat(t.now, p.run_delay)}) END, \
       finished_at = CASE WHEN p.new_state = 'available' THEN NULL ELSE t.now END, \
       errors = CASE WHEN p.outcome IN ('retry', 'fail') THEN j.errors || jsonb_build_array(\
         jsonb_build_object('attempt', j.attempt, 'kind', p.fail_kind, 'message', p.fail_msg, \
         'at', t.now)) ELSE j.errors END, \
       dlq_id = CASE WHEN p.new_state = 'dead' THEN {uuid_v7} END, \
       lease_owner = NULL, lease_token = NULL, lease_expires = NULL, cancel_requested = false, \
       last_finish_token = p.token \
       FROM pick p, t WHERE j.id = p.job_id \
       RETURNING j.id, j.name, j.queue, j.payload, j.priority, j.attempt, j.max_attempts, \
       j.timeout_us, j.scope_app, j.scope_tenant, j.errors, j.finished_at, j.state, j.dlq_id, \
       p.ord, p.prev_finish), \
     dead AS ({dead_copy}), \
     {drive_death}, \
     woke AS ({woke}) \
     SELECT u.ord, u.state, u.dlq_id, u.prev_finish, (SELECT count(*) FROM woke) AS notified \
     FROM upd u";

/// The token of the last finish applied to each job of `$1`.
const LAST_FINISH: &str = "SELECT j.id, j.last_finish_token FROM {s}.jobs j \
     WHERE j.id = ANY($1::uuid[])";

/// Reclaim the running jobs the `picked` CTE selects and locks (columns `id`, `lease_expires`,
/// `seq`; at most `$2`, skipping rows others hold), with an error of kind `{fail_kind}` and
/// message `{fail_message}` (SQL over the job row `j`) each, as `transition::rescue` and
/// `transition::rescue_from_lost_worker` decide (the rules they share): attempt kept spent;
/// cancelled after a cancel request, else available with attempts left, else dead with a DLQ
/// entry written (and its workflow run failed) in this statement. The body every rescue shares:
/// [`reclaim_statement`] fills it in.
const RECLAIM: &str = "WITH t AS (SELECT {now} AS now), \
     picked AS ({picked}), \
     upd AS (UPDATE {s}.jobs j SET \
       state = CASE WHEN j.cancel_requested THEN 'cancelled' \
         WHEN j.attempt < j.max_attempts THEN 'available' ELSE 'dead' END, \
       run_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts \
         THEN LEAST(j.run_at, t.now) ELSE j.run_at END, \
       finished_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts THEN NULL \
         ELSE t.now END, \
       errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, \
         'kind', {fail_kind}, 'message', {fail_message}, 'at', t.now)), \
       dlq_id = CASE WHEN NOT j.cancel_requested AND j.attempt >= j.max_attempts \
         THEN {uuid_v7} END, \
       lease_owner = NULL, lease_token = NULL, lease_expires = NULL, cancel_requested = false \
       FROM picked e, t WHERE j.id = e.id \
       RETURNING j.id, j.name, j.queue, j.payload, j.priority, j.attempt, j.max_attempts, \
       j.timeout_us, j.scope_app, j.scope_tenant, j.errors, j.finished_at, j.state, j.dlq_id, \
       e.lease_expires AS expired_at, e.seq), \
     dead AS ({dead_copy}), \
     {drive_death}, \
     woke AS ({woke}) \
     SELECT u.id, u.state, u.dlq_id, u.expired_at, u.seq, (SELECT count(*) FROM woke) AS notified \
     FROM upd u";

/// The rescue of expired leases ([`RECLAIM`] as `transition::rescue`): up to `$2` running jobs
/// whose lease expired, oldest expiry first.
const EXPIRED: &str = "SELECT j.id, j.lease_expires, j.seq FROM {s}.jobs j \
     WHERE j.state = 'running' AND j.lease_expires <= (SELECT now FROM t) \
     ORDER BY j.lease_expires, j.seq LIMIT $2 FOR UPDATE SKIP LOCKED";

/// The message of an expired lease's error, as `transition::rescue` words it.
const EXPIRED_MESSAGE: &str =
    "coalesce('lease held by ' || j.lease_owner || ' expired', 'lease expired')";

/// [`RECLAIM`] for the schema named by `quoted`, with the selection CTE `picked`, the failure
/// kind `kind` and the message `message` (SQL over the job row `j`): `$1` the time, `$2` the
/// limit, `$3` the wake-up channel. Rows come back as [`PostgresStore::reclaim`] reads them.
pub(crate) fn reclaim_statement(
    picked: &str,
    kind: FailureKind,
    message: &str,
    quoted: &str,
) -> SqlStr {
    // The kind is a fixed lowercase name; the message and selection are fixed SQL text.
    let template = RECLAIM
        .replace("{picked}", picked)
        .replace("{fail_kind}", &format!("'{}'", kind.as_str()))
        .replace("{fail_message}", message);
    statement(&parts(&template, "$3"), quoted)
}

/// `template` with the parts finish and rescue share filled in, `chan` the channel parameter.
fn parts(template: &str, chan: &str) -> String {
    template
        .replace("{woke}", &WOKE.replace("$chan", chan))
        .replace("{dead_copy}", DEAD_COPY)
        .replace("{drive_death}", DRIVE_DEATH)
        .replace("{uuid_v7}", UUID_V7)
}

/// The statements of finish and rescue, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    finish: SqlStr,
    last_finish: SqlStr,
    rescue: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]): [`FINISH`] and
    /// the rescue of expired leases ([`RECLAIM`] with [`EXPIRED`]) with their shared parts.
    pub(crate) fn new(quoted: &str) -> Self {
        Self {
            finish: statement(&parts(FINISH, "$9"), quoted),
            last_finish: statement(LAST_FINISH, quoted),
            rescue: reclaim_statement(EXPIRED, FailureKind::LeaseExpired, EXPIRED_MESSAGE, quoted),
        }
    }
}

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
            let (outcome, failure) = (finish.outcome.as_str(), finish.outcome.failure());
            let (run_abs, run_delay) =
                finish.outcome.run_at().map(run_at_parts).unwrap_or_default();
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

impl PostgresStore {
    /// End the attempts of `finishes` in one statement ([`FINISH`]), answering each as if they
    /// had been applied one after another.
    pub(crate) async fn finish_batch(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        let c = FinishColumns::of(finishes);
        self.timed("finish", async {
            let rows = sqlx::query(self.shared.sql.finish.finish.clone())
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

    /// The token of the last finish applied to each of `jobs`, read after the finish statement
    /// (so a concurrent finish that won is seen).
    async fn last_finish(&self, jobs: &[Uuid]) -> Result<HashMap<Uuid, Option<Uuid>>> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(self.shared.sql.finish.last_finish.clone())
            .bind(jobs)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(|row| Ok((get(row, "id")?, get(row, "last_finish_token")?))).collect()
    }

    /// Reclaim up to `limit` expired leases in one statement ([`RECLAIM`] with [`EXPIRED`]).
    pub(crate) async fn rescue_batch(&self, limit: usize) -> Result<RescueReport> {
        if limit == 0 {
            return Ok(RescueReport::default());
        }
        let sql = &self.shared.sql.finish.rescue;
        self.timed("rescue_expired", self.reclaim(&self.shared.pool, sql, self.now_param(), limit))
            .await
    }

    /// Run `sql`, a [`reclaim_statement`], on `conn` at time `now` (see
    /// [`now_param`](Self::now_param)) for up to `limit` jobs; its report.
    pub(crate) async fn reclaim<'c>(
        &self,
        conn: impl PgExecutor<'c>,
        sql: &SqlStr,
        now: Option<i64>,
        limit: usize,
    ) -> Result<RescueReport> {
        let rows = sqlx::query(sql.clone())
            .bind(now)
            .bind(sql_limit(limit))
            .bind(self.channel())
            .fetch_all(conn)
            .await
            .map_err(db_error)?;
        rescue_report(&rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.finish, &q.last_finish, &q.rescue] {
            crate::assert_expanded(sql);
        }
    }
}
