//! Claims: one `UPDATE … RETURNING` leases a batch from the claim index, and the next-due probe
//! that tells an idle worker how long to sleep. A claim of gated queues (with a flow config) is
//! the gated claim of `flow/claim.rs`, which runs this one first.

use std::time::Duration;

use dispatch_core::{ClaimRequest, ClaimedJob, Error, Result, Timestamp};
use sqlx::{SqliteConnection, SqlitePool};

use crate::error::db_error;
use crate::flow::gate::json_list;
use crate::row::{JobRow, job_from_row, sql_limit, token_text};

/// A claim's request with its candidate SQL, built before the claim takes the writer.
pub(crate) struct Claim {
    request: ClaimRequest,
    candidates: String,
    pairs: Vec<(String, String)>,
    /// The request's queues as a JSON array, for the test for configs.
    queues: String,
}

impl Claim {
    /// The request.
    pub(crate) fn request(&self) -> &ClaimRequest {
        &self.request
    }

    /// The claim of `request`.
    pub(crate) fn new(request: ClaimRequest) -> Result<Self> {
        let (candidates, pairs) = claim_candidates(&request.queues, &request.names);
        let queues = json_list(request.queues.iter().map(String::as_str))?;
        Ok(Self { request, candidates, pairs, queues })
    }
}

/// The plain claim: lease up to `claim.request.limit` due jobs on `conn` (inside the caller's
/// transaction), every lease under the request's token, in claim order; nothing when a queue of
/// the request has a flow config. One statement: the test for configs is a constant subquery in
/// it, evaluated once, so a claim of queues without configs costs what it did before flow
/// control.
pub(crate) async fn claim_plain(
    conn: &mut SqliteConnection,
    claim: &Claim,
    now: Timestamp,
) -> Result<Vec<ClaimedJob>> {
    let Claim { request, candidates, pairs, queues } = claim;
    let expires_at = now + request.lease_ttl;
    // One statement claims the batch, every lease under the request's token.
    let sql = format!(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
         lease_token = ?, lease_expires = ?, \
         cancel_requested = 0 WHERE NOT EXISTS (SELECT 1 FROM queue_configs \
         WHERE queue IN (SELECT value FROM json_each(?))) AND seq IN ({candidates}) RETURNING *"
    );
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(request.worker.to_string())
        .bind(token_text(request.token))
        .bind(expires_at.as_unix_micros())
        .bind(queues.as_str());
    for (queue, name) in pairs {
        query = query
            .bind(queue.as_str())
            .bind(name.as_str())
            .bind(now.as_unix_micros())
            .bind(sql_limit(request.limit));
    }
    let rows =
        query.bind(sql_limit(request.limit)).fetch_all(&mut *conn).await.map_err(db_error)?;
    let mut rows = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    // RETURNING gives no order: put the batch back in claim order.
    rows.sort_by_key(|r| (std::cmp::Reverse(r.job.priority), r.job.run_at, r.seq));
    claimed_jobs(rows)
}

/// Claimed rows as the claim answers them.
pub(crate) fn claimed_jobs(rows: Vec<JobRow>) -> Result<Vec<ClaimedJob>> {
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let lease = row.job.lease.ok_or_else(|| internal("claimed job without lease"))?;
        claimed.push(ClaimedJob { job: row.job, lease });
    }
    Ok(claimed)
}

/// How long until the earliest available job of `queues` and `names` is due, read beside the
/// writer: one search of the due index per (queue, name) pair.
pub(crate) async fn next_due(
    readers: &SqlitePool,
    queues: &[String],
    names: &[String],
    now: Timestamp,
) -> Result<Option<Duration>> {
    let pairs = queue_name_pairs(queues, names);
    if pairs.is_empty() {
        return Ok(None);
    }
    // A pair whose queue or name is paused is left out (a constant test per pair, one search
    // of the configs' primary key), or an idle worker would spin on a paused queue.
    let per_pair = "SELECT min(run_at) AS due FROM jobs INDEXED BY jobs_due \
                    WHERE state = 'available' AND queue = ? AND name = ? \
                    AND NOT EXISTS (SELECT 1 FROM queue_configs AS c WHERE c.queue = ? \
                    AND (json_extract(c.config, '$.paused') \
                    OR EXISTS (SELECT 1 FROM json_each(c.config, '$.paused_names') \
                    WHERE value = ?)))";
    let union = vec![per_pair; pairs.len()].join(" UNION ALL ");
    let sql = format!("SELECT min(due) FROM ({union})");
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for (queue, name) in &pairs {
        query = query.bind(queue.as_str()).bind(name.as_str());
        query = query.bind(queue.as_str()).bind(name.as_str());
    }
    let earliest: Option<i64> = query.fetch_one(readers).await.map_err(db_error)?;
    Ok(earliest.map(|micros| Timestamp::from_unix_micros(micros).duration_since(now)))
}

/// Every (queue, name) pair a claim or next-due lookup searches, deduplicated and capped below
/// SQLite's 500-term compound limit.
pub(crate) fn queue_name_pairs(queues: &[String], names: &[String]) -> Vec<(String, String)> {
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

pub(crate) fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("sqlite: {e}"))
}
