//! [`RetentionStore`] for [`PostgresStore`]: one call is one statement, so one short
//! transaction. It is fenced exactly as a sweep is (the leadership row locked while the term
//! holds, the write recorded as `prune`), and every delete is gated on that fence, so a
//! refused call removes nothing. Each kind is removed as
//! `DELETE … WHERE id IN (SELECT … ORDER BY <age> LIMIT n FOR UPDATE SKIP LOCKED)` over an
//! index that starts at the oldest eligible row (`schema/0008_retention.sql`): a call costs its
//! batch, not the table, and never waits for a row another session holds. The rules of
//! [`dispatch_core::retention`] are the statement's predicates, named beside each part.

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{Leader, PruneReport, Result, RetentionPolicy, RetentionStore};
use sqlx::SqlStr;

use crate::cluster::{FENCE, HOLDS, not_leader, sql_term};
use crate::row::{get, micros, sql_limit};
use crate::{PostgresStore, db_error, statement};

/// The call's time and cutoffs, read once: `$1` is the store's now, `$6`..`$10` the policy's
/// ages in µs (NULL: kept for ever, and a NULL cutoff matches no row). The subtraction
/// saturates at `i64::MIN`, as `Timestamp - Duration` does, and stays `bigint` so that the
/// comparisons with the age columns use their indexes.
const TIMES: &str = "t AS (SELECT {now} AS now), \
     c AS (SELECT {cut($6)} AS completed, {cut($7)} AS cancelled, {cut($8)} AS dead, \
       {cut($9)} AS runs, {cut($10)} AS gone FROM t)";

/// `Cutoffs::for_job_state` and `Cutoffs::job_old_enough` for finished state `{state}` (its
/// cutoff `{cutoff}`): finished at or before the cutoff and outside its unique window
/// (`window_passed`), and not the drive job of a stored run (`job_prunable`). Oldest finish
/// first, through `jobs_retention`. A CTE of its own (`jobs_{state}`): a locking read may not
/// be a branch of a `UNION`; of the up to three batches locked, the oldest `$5` are deleted and
/// the rest stay locked (finished rows nobody updates) until the statement commits. Drive jobs of kept runs are walked past: at most one per
/// run ended within the run retention.
const JOBS_OF_STATE: &str = "jobs_{state} AS (SELECT j.id, j.finished_at, j.seq FROM {s}.jobs j \
     WHERE j.state = '{state}' AND j.finished_at <= (SELECT c.{cutoff} FROM c) \
       AND (j.unique_until IS NULL OR j.unique_until <= (SELECT t.now FROM t)) \
       AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.drive_job = j.id) \
       AND EXISTS (SELECT 1 FROM held) \
     ORDER BY j.finished_at, j.seq LIMIT $5 FOR UPDATE OF j SKIP LOCKED)";

/// The whole prune, after the fence ([`FENCE`], action `prune`): `$2`/`$3`/`$4` the term, `$5`
/// the limit per kind.
///
/// * Runs (`run_prunable`): ended at or before the cutoff, no stored parent that is running or
///   suspended, a drive job that is neither available nor running; with their checkpoints,
///   event waits and drive job. The statement's snapshot still sees the runs it deletes, so the
///   job part below leaves their drive jobs to this part.
/// * Jobs: [`JOBS_OF_STATE`] for each finished state, the oldest `$5` of them.
/// * DLQ entries by `failed_at` (the `dead` cutoff), kept events past `keep_until`, gone workers
///   by `last_seen`.
const PRUNE: &str = "WITH {times}, {fence}, \
     doomed_runs AS (SELECT r.id, r.drive_job FROM {s}.runs r \
       WHERE r.state IN ('completed', 'failed', 'cancelled') \
         AND r.finished_at <= (SELECT c.runs FROM c) \
         AND NOT EXISTS (SELECT 1 FROM {s}.runs p WHERE p.id = r.parent \
           AND p.state IN ('running', 'suspended')) \
         AND NOT EXISTS (SELECT 1 FROM {s}.jobs d WHERE d.id = r.drive_job \
           AND d.state IN ('available', 'running')) \
         AND EXISTS (SELECT 1 FROM held) \
       ORDER BY r.finished_at, r.id LIMIT $5 FOR UPDATE OF r SKIP LOCKED), \
     runs_gone AS (DELETE FROM {s}.runs r USING doomed_runs x WHERE r.id = x.id RETURNING r.id), \
     checkpoints_gone AS (DELETE FROM {s}.checkpoints k USING doomed_runs x \
       WHERE k.run_id = x.id RETURNING 1), \
     waits_gone AS (DELETE FROM {s}.event_waits w USING doomed_runs x WHERE w.run_id = x.id), \
     drives_gone AS (DELETE FROM {s}.jobs j USING doomed_runs x WHERE j.id = x.drive_job \
       AND j.state NOT IN ('available', 'running') RETURNING 1), \
     {completed}, {cancelled}, {dead}, \
     doomed_jobs AS (SELECT y.id FROM (SELECT * FROM jobs_completed \
       UNION ALL SELECT * FROM jobs_cancelled UNION ALL SELECT * FROM jobs_dead) y \
       ORDER BY y.finished_at, y.seq LIMIT $5), \
     jobs_gone AS (DELETE FROM {s}.jobs j USING doomed_jobs x WHERE j.id = x.id RETURNING 1), \
     dlq_gone AS (DELETE FROM {s}.dlq d WHERE d.id IN (SELECT e.id FROM {s}.dlq e \
       WHERE e.failed_at <= (SELECT c.dead FROM c) AND EXISTS (SELECT 1 FROM held) \
       ORDER BY e.failed_at, e.id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING 1), \
     events_gone AS (DELETE FROM {s}.kept_events k WHERE k.seq IN (SELECT e.seq \
       FROM {s}.kept_events e WHERE e.keep_until <= (SELECT t.now FROM t) \
         AND EXISTS (SELECT 1 FROM held) \
       ORDER BY e.keep_until, e.seq LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING 1), \
     workers_gone AS (DELETE FROM {s}.workers w WHERE w.id IN (SELECT g.id FROM {s}.workers g \
       WHERE g.state = 'gone' AND g.last_seen <= (SELECT c.gone FROM c) \
         AND EXISTS (SELECT 1 FROM held) \
       ORDER BY g.last_seen, g.id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM held) AS held, \
       (SELECT count(*) FROM runs_gone) AS runs, \
       (SELECT count(*) FROM checkpoints_gone) AS checkpoints, \
       (SELECT count(*) FROM drives_gone) AS drives, \
       (SELECT count(*) FROM doomed_jobs) AS jobs_selected, \
       (SELECT count(*) FROM jobs_gone) AS jobs, \
       (SELECT count(*) FROM dlq_gone) AS dlq, \
       (SELECT count(*) FROM events_gone) AS events, \
       (SELECT count(*) FROM workers_gone) AS workers";

/// The statements of this file, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    prune: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let of_state = |state: &str, cutoff: &str| {
            JOBS_OF_STATE.replace("{state}", state).replace("{cutoff}", cutoff)
        };
        let sql = PRUNE
            .replace("{times}", &expand_cut(TIMES))
            .replace("{completed}", &of_state("completed", "completed"))
            .replace("{cancelled}", &of_state("cancelled", "cancelled"))
            .replace("{dead}", &of_state("dead", "dead"))
            .replace("{fence}", FENCE)
            .replace("{action}", "'prune'")
            .replace("{older_kept}", &(LEADER_WRITES_KEPT - 1).to_string())
            .replace("{holds}", HOLDS);
        Self { prune: statement(&sql, quoted) }
    }
}

/// Replace each `{cut($n)}` with `t.now - $n`, saturated at `i64::MIN` and NULL for NULL.
fn expand_cut(template: &str) -> String {
    let mut out = template.to_owned();
    for n in 6..=10 {
        let diff = format!("(t.now::numeric - ${n}::bigint)");
        let cut = format!(
            "(CASE WHEN {diff} < {min} THEN {min} ELSE {diff}::bigint END)",
            min = i64::MIN
        );
        out = out.replace(&format!("{{cut(${n})}}"), &cut);
    }
    out
}

#[async_trait]
impl RetentionStore for PostgresStore {
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport> {
        let age = |age: Option<std::time::Duration>| age.map(micros);
        self.timed("prune", async {
            let row = sqlx::query(self.shared.sql.retention.prune.clone())
                .bind(self.now_param())
                .bind(&term.name)
                .bind(sql_term(term.term))
                .bind(term.holder.to_string())
                .bind(sql_limit(limit))
                .bind(age(policy.completed))
                .bind(age(policy.cancelled))
                .bind(age(policy.dead))
                .bind(age(policy.runs))
                .bind(age(policy.gone_workers))
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error)?;
            if !get::<bool>(&row, "held")? {
                return Err(not_leader(term));
            }
            report_from_row(&row, limit)
        })
        .await
    }
}

/// The counts of one [`PRUNE`], and whether some kind filled its `limit`.
fn report_from_row(row: &sqlx::postgres::PgRow, limit: usize) -> Result<PruneReport> {
    let count =
        |column: &str| -> Result<u64> { Ok(u64::try_from(get::<i64>(row, column)?).unwrap_or(0)) };
    let full = |n: u64| limit > 0 && n >= limit as u64;
    let runs = count("runs")?;
    let selected = count("jobs_selected")?;
    let (dlq, events, workers) = (count("dlq")?, count("events")?, count("workers")?);
    Ok(PruneReport {
        jobs: count("jobs")? + count("drives")?,
        dlq,
        runs,
        checkpoints: count("checkpoints")?,
        events,
        workers,
        more: [runs, selected, dlq, events, workers].into_iter().any(full),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        crate::assert_expanded(&Sql::new("\"dispatch\"").prune);
    }
}
