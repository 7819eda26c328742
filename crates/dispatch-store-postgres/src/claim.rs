//! Claim: one statement takes a batch of due jobs under leases, reading its batch, never its
//! queue ([`CLAIM`]); the idle fetch loop's next-due probe; and where a claim starts reading
//! each priority level while a backlog lasts ([`ClaimMarks`]). Claims and probes run on the
//! hot-path sessions, which plan each statement once (see `Shared::hot`).
//!
//! # Claim marks
//!
//! Where a claim starts reading each priority level: just before the jobs this store claimed
//! last, while a backlog lasts.
//!
//! A claim takes a level's jobs from the front of its claim-index range (oldest run-at first),
//! and every job claimed leaves its index entry behind, dead, until vacuum removes it. During a
//! drain a level's front fills with them, and every claim walked all of them: behind 50,000, a
//! claim of 64 jobs touched ~1,600 buffers instead of ~76 and took three times as long. So while
//! claims come back full, the next claim of a level starts at its mark: the latest run-at this
//! store claimed there, less [`SLACK`] (an enqueue that was running while the claim ran may
//! commit a job a little below it).
//!
//! A mark is a hint, never a promise: a job can land below it (a later commit slower than the
//! slack, a run-at set in the past). So the claim statement reads below the marks too whenever
//! the marked ranges can not fill its batch (a claim comes back short only when nothing else is
//! due), the marks are dropped after a short claim, and a claim reads every level from its
//! front at least every [`FULL_SCAN_EVERY`], or [`FULL_SCAN_SPACING`] times as long as the last
//! such read took when that is longer (a front read over the dead entries a held-back vacuum
//! leaves takes hundreds of milliseconds): a job below a mark waits at most that long beyond
//! its turn, and only while claims come back full.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::{ClaimRequest, ClaimedJob, Result};
use parking_lot::Mutex;
use sqlx::{AssertSqlSafe, Row, SqlStr};
use tokio::time::Instant;

use crate::error::internal;
use crate::row::{JOB_COLUMNS, JobRow, get, job_from_row, micros, sql_limit};
use crate::{PostgresStore, db_error, statement};

/// Claim up to `$4` due jobs of queues `$2` and names `$3` for owner `$5`, leased for `$6` µs,
/// every lease under the caller's token `$7` (so a claim whose answer was lost can be released).
///
/// The claim index `(queue, name, priority DESC, run_at, seq)` is searched per (queue, name)
/// pair, so jobs of names the caller does not run cost nothing. `levels` finds a pair's priority
/// levels by a skip scan, one index probe per level, lowest first: each probe reads the index
/// backwards and lands on the last entries of a level (its latest run-ats), never on the rows
/// earlier claims left dead at the front. Each level's due jobs are then read as one index range,
/// `run_at <= now` in claim order, locking as it goes and skipping rows other claims hold; the
/// range ends at the first job not yet due, so future jobs are never read. The best `$4` of them
/// are claimed. A claim reads O(pairs × levels × `$4`) index entries, whatever else the queue
/// holds; a level whose jobs the batch does not reach may have had up to `$4` rows locked until
/// the statement ends (queues rarely use more than a few levels at once).
///
/// `$8..$11` (queue, name, priority, run-at) are hints: a level with one is read from that
/// run-at on (`marked`), past the dead entries of the jobs claimed before it (see
/// [`ClaimMarks`]); only when those ranges can not fill the batch are the hinted levels read
/// below their hints too (`below`), so a claim comes back short only when nothing else is due.
///
/// Planned once per session (a generic plan: claims run on sessions of their own that plan
/// once, see `Shared::hot`), so nothing in its plan
/// may hinge on the parameters' values: the picked rows are updated by primary key through an
/// array, a plan that stays an index lookup whatever row count the planner guesses (joined to
/// `picked`, a generic plan guesses millions and hashes the whole table).
///
/// Flow control: a request naming a queue with a config (`gate`) claims nothing here and answers
/// `gated` (one row, its job columns NULL); the gated claim then runs
/// ([`PostgresStore::claim_gated`]). The check rides in the claim statement itself, one probe of
/// `queue_configs`'s primary key per requested queue, so a plain claim costs no extra round trip
/// and a config set by any process applies at every worker's next claim (no cache to go stale).
/// Every answer row carries `gated`; when no job is claimed there is one row with NULL job
/// columns. Measured (release bench, 20,000 jobs at concurrency 64, a shared and loaded 2-core
/// machine): `drain` 9,000 and 10,600 jobs/s with the check; `drain-limited` (every claim
/// gated, a limit that never binds) 1,600 and 2,000 jobs/s, since gated claims of one queue
/// take turns under its gate lock for several round trips each. The same drain without the
/// check was not measured yet (the comparison build did not run).
///
/// The claim commits asynchronously ([`ASYNC_COMMIT`]): a claim lost to a server crash leaves
/// its jobs available, so they run again, as after any lost lease (at least once); the attempt's
/// finish, a durable commit, flushes the claim's WAL record with its own.
const CLAIM: &str = "WITH RECURSIVE t AS (SELECT {now} AS now, {async_commit} AS async_commit), \
     gate AS (SELECT EXISTS (SELECT 1 FROM {s}.queue_configs c WHERE c.queue = ANY ($2::text[])) \
       AS gated), \
     pairs AS (SELECT DISTINCT u.q, v.n FROM unnest($2::text[]) AS u(q) \
       CROSS JOIN unnest($3::text[]) AS v(n) WHERE NOT (SELECT gated FROM gate)), \
     levels AS (SELECT p.q, p.n, f.priority FROM pairs p \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.queue = p.q AND j.name = p.n ORDER BY j.priority LIMIT 1) f \
       UNION ALL \
       SELECT l.q, l.n, f.priority FROM levels l \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.queue = l.q AND j.name = l.n AND j.priority > l.priority \
           ORDER BY j.priority LIMIT 1) f), \
     hints AS (SELECT * FROM unnest($8::text[], $9::text[], $10::int4[], $11::int8[]) \
       AS h(q, n, p, from_us)), \
     marked AS (SELECT c.* FROM levels l \
       LEFT JOIN hints h ON h.q = l.q AND h.n = l.n AND h.p = l.priority \
       CROSS JOIN LATERAL (SELECT j.id, j.priority, j.run_at, j.seq FROM {s}.jobs j \
         WHERE j.state = 'available' AND j.queue = l.q AND j.name = l.n \
         AND j.priority = l.priority AND j.run_at <= (SELECT now FROM t) \
         AND j.run_at >= coalesce(h.from_us, -9223372036854775808) \
         ORDER BY j.run_at, j.seq LIMIT $4 FOR UPDATE SKIP LOCKED) c), \
     below AS (SELECT c.* FROM levels l \
       JOIN hints h ON h.q = l.q AND h.n = l.n AND h.p = l.priority \
       CROSS JOIN LATERAL (SELECT j.id, j.priority, j.run_at, j.seq FROM {s}.jobs j \
         WHERE j.state = 'available' AND j.queue = l.q AND j.name = l.n \
         AND j.priority = l.priority AND j.run_at < h.from_us \
         AND j.run_at <= (SELECT now FROM t) \
         ORDER BY j.run_at, j.seq LIMIT $4 FOR UPDATE SKIP LOCKED) c \
       WHERE (SELECT count(*) FROM marked) < $4), \
     picked AS (SELECT c.id FROM (SELECT * FROM marked UNION ALL SELECT * FROM below) c \
       ORDER BY c.priority DESC, c.run_at, c.seq LIMIT $4), \
     claimed AS (UPDATE {s}.jobs j SET state = 'running', attempt = j.attempt + 1, \
       lease_owner = $5, lease_token = $7, lease_expires = {sat(t.now, $6)}, \
       cancel_requested = false \
     FROM t WHERE j.id = ANY (ARRAY(SELECT id FROM picked)) \
     RETURNING {job_columns}) \
     SELECT g.gated, c.* FROM gate g LEFT JOIN claimed c ON true";

/// `synchronous_commit = off` for the rest of the statement's transaction (`SET LOCAL`): its
/// commit returns without waiting for the WAL flush, a fsync saved. Only for writes whose loss in
/// a server crash loses nothing promised: the next durable commit on the server flushes them.
pub(crate) const ASYNC_COMMIT: &str = "set_config('synchronous_commit', 'off', true)";

/// Microseconds until the earliest available job of queues `$2` and names `$3` is due (0 when
/// one is due now); NULL when none waits. One index probe per (queue, name) pair; pairs whose
/// queue or name is paused (its config in `queue_configs`) are left out.
const NEXT_DUE: &str = "SELECT CASE WHEN min(d.run_at) IS NOT NULL \
       THEN greatest(min(d.run_at) - {now}, 0) END AS wait \
     FROM (SELECT DISTINCT q FROM unnest($2::text[]) AS u(q)) qs \
     CROSS JOIN (SELECT DISTINCT n FROM unnest($3::text[]) AS u(n)) ns \
     CROSS JOIN LATERAL (SELECT j.run_at FROM {s}.jobs j WHERE j.state = 'available' \
       AND ARRAY[j.queue, j.name] = ARRAY[qs.q, ns.n] ORDER BY j.run_at LIMIT 1) d \
     WHERE NOT EXISTS (SELECT 1 FROM {s}.queue_configs c WHERE c.queue = qs.q \
       AND ((c.config ->> 'paused')::boolean OR c.config -> 'paused_names' ? ns.n))";

/// The statements of claim, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) claim: SqlStr,
    next_due: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let claim =
            CLAIM.replace("{job_columns}", JOB_COLUMNS).replace("{async_commit}", ASYNC_COMMIT);
        Self { claim: statement(&claim, quoted), next_due: statement(NEXT_DUE, quoted) }
    }
}

impl PostgresStore {
    /// Claim for `request` on a hot-path session (see [`CLAIM`]), under the call timeout.
    pub(crate) async fn claim_batch(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if request.names.is_empty() || request.queues.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let hints = self.shared.claim_marks.hints(request);
        self.timed("claim", async {
            let started = Instant::now();
            let rows = self
                .bind_claim(sqlx::query(self.shared.sql.claim.claim.clone()), request, &hints)
                .fetch_all(&self.shared.hot)
                .await
                .map_err(db_error)?;
            let took = started.elapsed();
            if rows.first().map(|row| get::<bool>(row, "gated")).transpose()? == Some(true) {
                return self.claim_gated(request).await;
            }
            let mut rows = rows
                .iter()
                .filter(|row| row.try_get_raw("id").is_ok_and(|v| !sqlx::ValueRef::is_null(&v)))
                .map(job_from_row)
                .collect::<Result<Vec<_>>>()?;
            self.shared.claim_marks.update(request, &hints, &rows, took);
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

    /// How long until the first job of `queues` and `names` is due (see [`NEXT_DUE`]).
    pub(crate) async fn next_due_of(
        &self,
        queues: &[String],
        names: &[String],
    ) -> Result<Option<Duration>> {
        self.timed("next_due", async {
            let wait: Option<i64> = sqlx::query_scalar(self.shared.sql.claim.next_due.clone())
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
            let mut conn = self.shared.hot.session().await.map_err(db_error)?;
            // Without hints: the plan of a claim that reads every level from its front.
            let hints = Hints::default();
            let explained = explain_prepared_claim(&mut conn, &self.shared.sql.claim.claim, || {
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

/// How far below the latest claimed run-at a level's next claim starts.
const SLACK: Duration = Duration::from_millis(50);

/// The longest a claim goes on reading from marks before it reads every level from its front,
/// while reading from the fronts is cheap.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// While reading from the fronts is slow, claims go on reading from marks this many times as
/// long as the last front read took: reads from the fronts take at most about a tenth of the
/// claims' time. A front read is slow when it walks many dead entries, which vacuum can not
/// remove while a transaction holds the xmin horizon back; then one read from the fronts costs
/// hundreds of milliseconds, and one a second would hold a worker's fetch loop a third of the
/// time.
const FULL_SCAN_SPACING: u32 = 10;

/// A priority level: queue, job name, priority.
type Level = (String, String, i32);

/// The claim marks of one store (see the module docs), shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct ClaimMarks {
    inner: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Per level, the lowest run-at (µs) its next claim reads.
    from: HashMap<Level, i64>,
    /// When a claim last read every level from its front.
    full_scan_at: Option<Instant>,
    /// How long from one read of the fronts to the next, while claims come back full: at least
    /// [`FULL_SCAN_EVERY`], and [`FULL_SCAN_SPACING`] times the last such read.
    full_scan_every: Duration,
}

/// Where a claim starts per level, as the claim statement's array parameters; empty when it
/// reads every level from its front.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    pub(crate) queues: Vec<String>,
    pub(crate) names: Vec<String>,
    pub(crate) priorities: Vec<i32>,
    pub(crate) from: Vec<i64>,
}

impl Hints {
    fn is_full_scan(&self) -> bool {
        self.from.is_empty()
    }
}

impl ClaimMarks {
    /// The hints for `request`'s next claim.
    pub(crate) fn hints(&self, request: &ClaimRequest) -> Hints {
        let marks = self.inner.lock();
        let every = marks.full_scan_every.max(FULL_SCAN_EVERY);
        let due = marks.full_scan_at.is_none_or(|at| at.elapsed() >= every);
        let mut hints = Hints::default();
        if due {
            return hints;
        }
        for ((queue, name, priority), &from) in &marks.from {
            if request.queues.contains(queue) && request.names.contains(name) {
                hints.queues.push(queue.clone());
                hints.names.push(name.clone());
                hints.priorities.push(*priority);
                hints.from.push(from);
            }
        }
        hints
    }

    /// Learn from a claim of `request` made with `hints` that returned `claimed` after `took`.
    pub(crate) fn update(
        &self,
        request: &ClaimRequest,
        hints: &Hints,
        claimed: &[JobRow],
        took: Duration,
    ) {
        let mut marks = self.inner.lock();
        if hints.is_full_scan() {
            marks.full_scan_at = Some(Instant::now());
            marks.full_scan_every = took.saturating_mul(FULL_SCAN_SPACING);
        }
        if claimed.len() < request.limit {
            // Drained, or jobs wait below a mark: the next claim reads from the fronts.
            marks
                .from
                .retain(|(q, n, _), _| !(request.queues.contains(q) && request.names.contains(n)));
            marks.full_scan_at = None;
            return;
        }
        let slack = i64::try_from(SLACK.as_micros()).unwrap_or(i64::MAX);
        for row in claimed {
            let job = &row.job;
            let level = (job.queue.clone(), job.name.clone(), job.priority);
            let from = job.run_at.as_unix_micros().saturating_sub(slack);
            let mark = marks.from.entry(level).or_insert(from);
            *mark = (*mark).max(from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.claim, &q.next_due] {
            crate::assert_expanded(sql);
        }
        assert!(q.claim.as_str().contains("\"dispatch\".jobs"));
    }
}
