//! [`MembershipStore`] and [`LeadershipStore`] for [`PostgresStore`]: the worker registry
//! (table `workers`), leadership terms (`leaders`) and the record of the writes accepted under
//! them (`leader_writes`). Each statement says in SQL the rule of `dispatch_core::cluster` (or
//! `dispatch_core::transition`) it mirrors, as the memory store decides it in Rust. Every call is
//! one statement, except a sweep: one transaction of two statements (the fenced registry write,
//! then the reclaim of the gone workers' jobs, which shares the rescue's body in `finish`).

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    Error, ErrorKind, FailureKind, Leader, LeaderWrite, LeadershipStore, LeaseRef, MembershipStore,
    RescueReport, Result, SweepReport, WorkerHeartbeat, WorkerId, WorkerRecord, WorkerRegistration,
    WorkerState,
};
use sqlx::SqlStr;
use uuid::Uuid;

use crate::error::internal;
use crate::finish::reclaim_statement;
use crate::job::{RENEW_LEASES, heartbeat_report};
use crate::row::{
    LEADER_COLUMNS, WORKER_COLUMNS, get, leader_from_row, leader_write_from_row, micros, sql_limit,
    worker_from_row, worker_id, worker_state,
};
use crate::{PostgresStore, db_error, statement};

/// Register worker `$2` (host `$3`, pid `$4`, queues `$5`, concurrency `$6`, version `$7`),
/// active and last seen now; a known worker is active again with its registration replaced and
/// keeps its first `started_at` (`MembershipStore::register_worker`).
const REGISTER: &str = "WITH t AS (SELECT {now} AS now) \
     INSERT INTO {s}.workers AS w \
       (id, host, pid, queues, concurrency, version, state, started_at, last_seen) \
     SELECT $2, $3, $4, $5::text[], $6, $7, 'active', t.now, t.now FROM t \
     ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
       queues = excluded.queues, concurrency = excluded.concurrency, version = excluded.version, \
       state = 'active', last_seen = excluded.last_seen \
     RETURNING {worker_columns}";

/// One heartbeat of worker `$5`: its leases `$2`/`$3` renewed by `$4` µs exactly as the plain
/// heartbeat renews them ([`RENEW_LEASES`]), and the worker last seen now unless it is gone or
/// unknown (`worker_state` NULL: not revived, not registered). At least one row: the worker's
/// state beside each renewed lease, or beside NULLs when none was renewed.
const HEARTBEAT_WORKER: &str = "WITH t AS (SELECT {now} AS now), {renew_leases}, \
     seen AS (UPDATE {s}.workers w SET last_seen = t.now FROM t \
       WHERE w.id = $5 AND w.state <> 'gone' RETURNING w.state) \
     SELECT (SELECT seen.state FROM seen) AS worker_state, r.id, r.lease_token, \
       r.cancel_requested FROM t LEFT JOIN renewed r ON true";

/// Tell worker `$1` to drain: an active worker becomes draining, a draining or gone one stays
/// as it is. `found` is 0 for an unknown worker.
const DRAIN: &str = "WITH found AS (SELECT w.id FROM {s}.workers w WHERE w.id = $1), \
     drained AS (UPDATE {s}.workers w SET state = 'draining' \
       WHERE w.id = $1 AND w.state = 'active') \
     SELECT count(*) AS found FROM found";

/// Remove worker `$1` (none is no error).
const DEREGISTER: &str = "DELETE FROM {s}.workers w WHERE w.id = $1";

/// Every registered worker (sorted by ID in Rust: the text IDs' collation is the server's).
const LIST_WORKERS: &str = "SELECT {worker_columns} FROM {s}.workers w";

/// `cluster::holds`: the leadership row `l` is the current term `$3` of holder `$4` for name
/// `$2`, and its lease has not expired at `t.now`.
pub(crate) const HOLDS: &str =
    "l.name = $2 AND l.term = $3 AND l.holder = $4 AND t.now < l.expires_at";

/// A leader write's fence, as CTEs after `t`: `held` locks the leadership row while the term
/// `$2`/`$3`/`$4` [`HOLDS`] it (so no new term begins before the write commits), and only then
/// the write `{action}` is recorded at `t.now` and the record trimmed to the newest
/// [`LEADER_WRITES_KEPT`] of the name. The statement's snapshot does not see the row it
/// inserts, so the trim keeps the newest `{older_kept}` (one fewer) rows before it.
pub(crate) const FENCE: &str = "held AS (SELECT l.name, l.term FROM {s}.leaders l, t WHERE {holds} \
       FOR UPDATE OF l), \
     written AS (INSERT INTO {s}.leader_writes (name, term, at, action) \
       SELECT h.name, h.term, t.now, {action} FROM held h, t), \
     trimmed AS (DELETE FROM {s}.leader_writes x USING held h WHERE x.name = h.name \
       AND x.seq <= (SELECT y.seq FROM {s}.leader_writes y WHERE y.name = h.name \
         ORDER BY y.seq DESC OFFSET {older_kept} LIMIT 1))";

/// The first statement of a sweep, fenced ([`FENCE`], action `sweep`): every active or
/// draining worker overdue by `$5` µs (`cluster::is_overdue`: `last_seen + timeout < now`)
/// becomes gone. `held` is false when the term does not hold (nothing was written).
const SWEEP_MARK: &str = "WITH t AS (SELECT {now} AS now), {fence}, \
     gone AS (UPDATE {s}.workers w SET state = 'gone' FROM held, t \
       WHERE w.state IN ('active', 'draining') AND {sat(w.last_seen, $5)} < t.now \
       RETURNING w.id) \
     SELECT EXISTS (SELECT 1 FROM held) AS held, ARRAY(SELECT g.id FROM gone g) AS gone";

/// The second statement of a sweep, the selection of the reclaim it shares with the rescue of
/// expired leases (`finish::reclaim_statement`, as `transition::rescue_from_lost_worker`): up to
/// `$2` running jobs leased by any gone worker, oldest lease expiry first, skipping rows others
/// hold. The first statement's gone workers are seen: it ran before, in the same transaction.
const LOST: &str = "SELECT j.id, j.lease_expires, j.seq FROM {s}.jobs j \
     WHERE j.state = 'running' AND j.lease_expires IS NOT NULL \
       AND j.lease_owner IN (SELECT w.id FROM {s}.workers w WHERE w.state = 'gone') \
     ORDER BY j.lease_expires, j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED";

/// `transition::lost_worker_message` is this text, the owner, then [`LOST_AFTER`].
const LOST_BEFORE: &str = "worker ";
/// See [`LOST_BEFORE`].
const LOST_AFTER: &str = " stopped heartbeating and was marked gone";

/// Take leadership `$2` for `$3` at `t.now` with a lease of `$4` µs: the first term (1) when the
/// name was never held, else `{on_conflict}` decides (`cluster::acquire` or `cluster::take`).
/// `ON CONFLICT` settles racing first holdings: the losers find the winner's row, locked.
const CLAIM_LEADERSHIP: &str = "WITH t AS (SELECT {now} AS now) \
     INSERT INTO {s}.leaders AS l (name, holder, term, elected_at, expires_at) \
     SELECT $2, $3, 1, t.now, {sat(t.now, $4)} FROM t \
     ON CONFLICT (name) DO UPDATE SET {on_conflict} \
     RETURNING {leader_columns}";

/// `cluster::acquire` on a held name, at `{late_now}`: the store's now read once the row is
/// locked. (A statement that waited for the lock, behind a paused client's transaction, would
/// otherwise begin the term at the time it began waiting, its lease already short or over.) A
/// valid term of the same holder is renewed under its term; an expired one is taken under the
/// next term; a valid term of another holder stays (no row: `None`).
const ACQUIRE: &str = "holder = excluded.holder, \
     term = CASE WHEN {late_now} < l.expires_at THEN l.term ELSE l.term + 1 END, \
     elected_at = CASE WHEN {late_now} < l.expires_at THEN l.elected_at ELSE {late_now} END, \
     expires_at = {sat({late_now}, $4)} \
     WHERE l.expires_at <= {late_now} OR l.holder = excluded.holder";

/// `cluster::take` on a held name: the next term, whoever holds it, from `{late_now}`.
const TAKE: &str = "holder = excluded.holder, term = l.term + 1, \
     elected_at = {late_now}, expires_at = {sat({late_now}, $4)}";

/// `cluster::renew`: extend term `$3` of `$4` on `$2` to now + `$5` µs while it holds
/// ([`HOLDS`], at `{late_now}`: read once the row is locked, as in [`ACQUIRE`]).
const RENEW: &str = "UPDATE {s}.leaders l SET expires_at = {sat({late_now}, $5)} \
     WHERE l.name = $2 AND l.term = $3 AND l.holder = $4 AND {late_now} < l.expires_at \
     RETURNING {leader_columns}";

/// Resign term `$3` of `$4` on `$2` while it [`HOLDS`]: the leadership is free at once (its
/// lease ends now, as the memory store does it).
const RESIGN: &str = "WITH t AS (SELECT {now} AS now) \
     UPDATE {s}.leaders l SET expires_at = t.now FROM t WHERE {holds}";

/// Leadership `$1` as stored.
const LEADER: &str = "SELECT {leader_columns} FROM {s}.leaders l WHERE l.name = $1";

/// The newest `$2` writes recorded under leadership `$1`, oldest first.
const LEADER_WRITES: &str = "SELECT w.name, w.term, w.at, w.action FROM \
     (SELECT x.seq, x.name, x.term, x.at, x.action FROM {s}.leader_writes x \
       WHERE x.name = $1 ORDER BY x.seq DESC LIMIT $2) w ORDER BY w.seq";

/// The statements of this file, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    register: SqlStr,
    heartbeat_worker: SqlStr,
    drain: SqlStr,
    deregister: SqlStr,
    list_workers: SqlStr,
    sweep_mark: SqlStr,
    sweep_lost: SqlStr,
    acquire: SqlStr,
    take: SqlStr,
    renew: SqlStr,
    resign: SqlStr,
    leader: SqlStr,
    leader_writes: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| {
            let sql = template
                .replace("{fence}", FENCE)
                .replace("{action}", "'sweep'")
                .replace("{older_kept}", &(LEADER_WRITES_KEPT - 1).to_string())
                .replace("{holds}", HOLDS)
                .replace("{renew_leases}", RENEW_LEASES)
                .replace("{worker_columns}", WORKER_COLUMNS)
                .replace("{leader_columns}", LEADER_COLUMNS);
            statement(&sql, quoted)
        };
        let claim =
            |on_conflict: &str| build(&CLAIM_LEADERSHIP.replace("{on_conflict}", on_conflict));
        let lost_message =
            format!("coalesce('{LOST_BEFORE}' || j.lease_owner || '{LOST_AFTER}', 'worker lost')");
        Self {
            register: build(REGISTER),
            heartbeat_worker: build(HEARTBEAT_WORKER),
            drain: build(DRAIN),
            deregister: build(DEREGISTER),
            list_workers: build(LIST_WORKERS),
            sweep_mark: build(SWEEP_MARK),
            sweep_lost: reclaim_statement(LOST, FailureKind::WorkerLost, &lost_message, quoted),
            acquire: claim(ACQUIRE),
            take: claim(TAKE),
            renew: build(RENEW),
            resign: build(RESIGN),
            leader: build(LEADER),
            leader_writes: build(LEADER_WRITES),
        }
    }
}

/// A term as the statements compare it: a term past `i64::MAX` was never stored, and NULL
/// matches no row.
pub(crate) fn sql_term(term: u64) -> Option<i64> {
    i64::try_from(term).ok()
}

/// `NotLeader` for a leader write under `term`, which no longer holds.
pub(crate) fn not_leader(term: &Leader) -> Error {
    Error::new(
        ErrorKind::NotLeader,
        format!("term {} of leadership {:?} is no longer valid", term.term, term.name),
    )
}

impl PostgresStore {
    /// [`CLAIM_LEADERSHIP`] with `sql`'s conflict rule, for `holder` on `name`.
    async fn claim_leadership(
        &self,
        sql: &SqlStr,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let row = sqlx::query(sql.clone())
            .bind(self.now_param())
            .bind(name)
            .bind(holder.to_string())
            .bind(micros(ttl))
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(leader_from_row).transpose()
    }

    /// The fenced first statement of a sweep ([`SWEEP_MARK`]) on `tx` at `now`: the workers it
    /// marked gone, by ID, or `NotLeader`.
    async fn sweep_mark(
        &self,
        tx: &mut sqlx::PgConnection,
        term: &Leader,
        timeout: Duration,
        now: Option<i64>,
    ) -> Result<Vec<WorkerId>> {
        let row = sqlx::query(self.shared.sql.cluster.sweep_mark.clone())
            .bind(now)
            .bind(&term.name)
            .bind(sql_term(term.term))
            .bind(term.holder.to_string())
            .bind(micros(timeout))
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        if !get::<bool>(&row, "held")? {
            return Err(not_leader(term));
        }
        let gone: Vec<String> = get(&row, "gone")?;
        let mut gone = gone.iter().map(|id| worker_id(id)).collect::<Result<Vec<_>>>()?;
        gone.sort();
        Ok(gone)
    }
}

#[async_trait]
impl MembershipStore for PostgresStore {
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord> {
        self.timed("register_worker", async {
            let row = sqlx::query(self.shared.sql.cluster.register.clone())
                .bind(self.now_param())
                .bind(worker.id.to_string())
                .bind(&worker.host)
                .bind(i64::from(worker.pid))
                .bind(&worker.queues)
                .bind(i64::from(worker.concurrency))
                .bind(&worker.version)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error)?;
            worker_from_row(&row)
        })
        .await
    }

    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat> {
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token.uuid()).collect();
        self.timed("heartbeat_worker", async {
            let rows = sqlx::query(self.shared.sql.cluster.heartbeat_worker.clone())
                .bind(self.now_param())
                .bind(&ids)
                .bind(&tokens)
                .bind(micros(lease_ttl))
                .bind(worker.to_string())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let first =
                rows.first().ok_or_else(|| internal("a worker heartbeat answered no row"))?;
            // NULL: the worker is gone or unknown, and was left as it is.
            let state = match get::<Option<String>>(first, "worker_state")? {
                Some(state) => worker_state(&state)?,
                None => WorkerState::Gone,
            };
            Ok(WorkerHeartbeat { state, leases: heartbeat_report(leases, &rows)? })
        })
        .await
    }

    async fn drain_worker(&self, worker: WorkerId) -> Result<()> {
        self.timed("drain_worker", async {
            let found: i64 = sqlx::query_scalar(self.shared.sql.cluster.drain.clone())
                .bind(worker.to_string())
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error)?;
            if found == 0 {
                return Err(Error::not_found(format!("no worker {worker}")));
            }
            Ok(())
        })
        .await
    }

    async fn deregister_worker(&self, worker: WorkerId) -> Result<()> {
        self.timed("deregister_worker", async {
            sqlx::query(self.shared.sql.cluster.deregister.clone())
                .bind(worker.to_string())
                .execute(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.timed("list_workers", async {
            let rows = sqlx::query(self.shared.sql.cluster.list_workers.clone())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let mut workers = rows.iter().map(worker_from_row).collect::<Result<Vec<_>>>()?;
            workers.sort_by_key(|w| w.registration.id);
            Ok(workers)
        })
        .await
    }

    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport> {
        self.timed("sweep_workers", async {
            // One time for both statements (the database's `now()` is the transaction's anyway).
            let now = self.now_param();
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            // On `NotLeader` nothing was written; dropping `tx` rolls it back.
            let gone = self.sweep_mark(&mut tx, term, timeout, now).await?;
            let rescue = if limit == 0 {
                RescueReport::default()
            } else {
                let sql = &self.shared.sql.cluster.sweep_lost;
                self.reclaim(&mut *tx, sql, now, limit).await?
            };
            tx.commit().await.map_err(db_error)?;
            Ok(SweepReport { gone, rescue })
        })
        .await
    }
}

#[async_trait]
impl LeadershipStore for PostgresStore {
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let sql = &self.shared.sql.cluster.acquire;
        self.timed("acquire_leadership", self.claim_leadership(sql, name, holder, ttl)).await
    }

    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        self.timed("renew_leadership", async {
            let row = sqlx::query(self.shared.sql.cluster.renew.clone())
                .bind(self.now_param())
                .bind(&term.name)
                .bind(sql_term(term.term))
                .bind(term.holder.to_string())
                .bind(micros(ttl))
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            row.as_ref().map(leader_from_row).transpose()
        })
        .await
    }

    async fn resign_leadership(&self, term: &Leader) -> Result<()> {
        self.timed("resign_leadership", async {
            sqlx::query(self.shared.sql.cluster.resign.clone())
                .bind(self.now_param())
                .bind(&term.name)
                .bind(sql_term(term.term))
                .bind(term.holder.to_string())
                .execute(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader> {
        let sql = &self.shared.sql.cluster.take;
        self.timed("take_leadership", async {
            let taken = self.claim_leadership(sql, name, holder, ttl).await?;
            taken.ok_or_else(|| internal(format!("taking leadership {name:?} wrote no row")))
        })
        .await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        self.timed("leader", async {
            let row = sqlx::query(self.shared.sql.cluster.leader.clone())
                .bind(name)
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            row.as_ref().map(leader_from_row).transpose()
        })
        .await
    }

    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>> {
        self.timed("leader_writes", async {
            let rows = sqlx::query(self.shared.sql.cluster.leader_writes.clone())
                .bind(name)
                .bind(sql_limit(limit.min(LEADER_WRITES_KEPT)))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            rows.iter().map(leader_write_from_row).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [
            &q.register,
            &q.heartbeat_worker,
            &q.drain,
            &q.deregister,
            &q.list_workers,
            &q.sweep_mark,
            &q.sweep_lost,
            &q.acquire,
            &q.take,
            &q.renew,
            &q.resign,
            &q.leader,
            &q.leader_writes,
        ] {
            crate::assert_expanded(sql);
        }
    }

    #[test]
    fn the_lost_worker_message_is_cores() {
        let worker = WorkerId::new();
        assert_eq!(
            format!("{LOST_BEFORE}{worker}{LOST_AFTER}"),
            dispatch_core::transition::lost_worker_message(worker)
        );
    }
}
