//! [`MembershipStore`] and [`LeadershipStore`] for [`SqliteStore`]: the worker registry
//! (`workers`), leadership terms (`leaders`) and the record of accepted leader writes
//! (`leader_writes`). Every write is one `BEGIN IMMEDIATE` transaction on the writer that reads
//! its rows and decides with [`dispatch_core::cluster`] and [`dispatch_core::transition`], as
//! the memory store (the reference) does; reads use the reader pool.
//!
//! The cluster's writes read the store's clock once their transaction holds the writer, not
//! before they wait for it: a fenced write compares its term's lease with the time the write
//! happens, so a call that queued behind others past its term's expiry is refused.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::cluster::{self, LEADER_WRITES_KEPT};
use dispatch_core::{
    Error, ErrorKind, Leader, LeaderWrite, LeadershipStore, LeaseRef, MembershipStore,
    RescueReport, Result, SweepReport, Timestamp, WorkerHeartbeat, WorkerId, WorkerRecord,
    WorkerRegistration, WorkerState, transition,
};
use sqlx::{Row, SqliteConnection};

use crate::error::db_error;
use crate::finish::reclaim_rows;
use crate::job::renew;
use crate::row::{
    leader_from_row, leader_write_from_row, parse, sql_limit, term_value, worker_from_row,
    worker_state,
};
use crate::{BoxFuture, SqliteStore};

impl SqliteStore {
    /// Run `body` as [`write`](SqliteStore::write) does, with the store's time read once the
    /// transaction holds the writer (see the module docs).
    pub(crate) async fn write_now<T, F>(&self, what: &str, body: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection, Timestamp) -> BoxFuture<'c, Result<T>>,
    {
        let clock = self.clock.clone();
        self.write(what, move |conn| body(conn, clock.now())).await
    }
}

/// A value serialized as the JSON text a statement's `json_each(?)` reads.
pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("sqlite: {e}")))
}

#[async_trait]
impl MembershipStore for SqliteStore {
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord> {
        let worker = worker.clone();
        self.write_now("register_worker", move |conn, now| {
            Box::pin(async move { register(conn, &worker, now).await })
        })
        .await
    }

    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat> {
        let leases = leases.to_vec();
        self.write_now("heartbeat_worker", move |conn, now| {
            Box::pin(async move {
                let state = touch(conn, worker, now).await?;
                // The leases are renewed whatever the worker's state, as a plain heartbeat
                // renews them: a gone worker's leases were rescued, so they report lost.
                let leases = renew(conn, &leases, (now + lease_ttl).as_unix_micros()).await?;
                Ok(WorkerHeartbeat { state, leases })
            })
        })
        .await
    }

    async fn drain_worker(&self, worker: WorkerId) -> Result<()> {
        self.write("drain_worker", move |conn| Box::pin(async move { drain(conn, worker).await }))
            .await
    }

    async fn deregister_worker(&self, worker: WorkerId) -> Result<()> {
        self.write("deregister_worker", move |conn| {
            Box::pin(async move {
                sqlx::query("DELETE FROM workers WHERE id = ?")
                    .bind(worker.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.timed("list_workers", async {
            let rows = sqlx::query("SELECT * FROM workers ORDER BY id")
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
            rows.iter().map(worker_from_row).collect()
        })
        .await
    }

    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport> {
        let term = term.clone();
        let (report, woken) = self
            .write_now("sweep_workers", move |conn, now| {
                Box::pin(async move { sweep(conn, &term, timeout, limit, now).await })
            })
            .await?;
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(report)
    }
}

/// Register `worker` active and last seen `now`, or register a known worker again (whatever its
/// state): its registration replaced, active, its first `started_at` kept. One upsert; the
/// record as stored.
async fn register(
    conn: &mut SqliteConnection,
    worker: &WorkerRegistration,
    now: Timestamp,
) -> Result<WorkerRecord> {
    let row = sqlx::query(
        "INSERT INTO workers \
         (id, host, pid, queues, concurrency, version, state, started_at, last_seen) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
         queues = excluded.queues, concurrency = excluded.concurrency, \
         version = excluded.version, state = excluded.state, last_seen = excluded.last_seen \
         RETURNING *",
    )
    .bind(worker.id.to_string())
    .bind(&worker.host)
    .bind(i64::from(worker.pid))
    .bind(json(&worker.queues)?)
    .bind(i64::from(worker.concurrency))
    .bind(&worker.version)
    .bind(WorkerState::Active.as_str())
    .bind(now.as_unix_micros())
    .bind(now.as_unix_micros())
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)?;
    worker_from_row(&row)
}

/// The worker's side of a heartbeat: last seen `now` unless it is gone or unknown (neither is
/// revived nor registered); its state after it, gone for both.
async fn touch(
    conn: &mut SqliteConnection,
    worker: WorkerId,
    now: Timestamp,
) -> Result<WorkerState> {
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE workers SET last_seen = ? WHERE id = ? AND state != 'gone' RETURNING state",
    )
    .bind(now.as_unix_micros())
    .bind(worker.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    state.map_or(Ok(WorkerState::Gone), |state| worker_state(&state))
}

/// Tell an active worker to drain; a draining or gone one stays as it is. `NotFound` for an
/// unknown worker, told apart by the same statement.
async fn drain(conn: &mut SqliteConnection, worker: WorkerId) -> Result<()> {
    let found: Option<String> = sqlx::query_scalar(
        "UPDATE workers SET state = CASE WHEN state = 'active' THEN 'draining' ELSE state END \
         WHERE id = ? RETURNING id",
    )
    .bind(worker.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    found.map(drop).ok_or_else(|| Error::not_found(format!("no worker {worker}")))
}

/// The sweep, in the caller's transaction: fenced by `term` and recorded, silent workers marked
/// gone, up to `limit` running jobs of gone workers reclaimed. The report, and the queues of the
/// jobs made available (to wake after the commit).
async fn sweep(
    conn: &mut SqliteConnection,
    term: &Leader,
    timeout: Duration,
    limit: usize,
    now: Timestamp,
) -> Result<(SweepReport, Vec<String>)> {
    fence(conn, term, "sweep", now).await?;
    let (gone, all_gone) = mark_silent_gone(conn, timeout, now).await?;
    let (rescue, woken) = rescue_lost(conn, &all_gone, limit, now).await?;
    Ok((SweepReport { gone, rescue }, woken))
}

/// Check that `term` may write at `now` ([`cluster::holds`] on the stored leadership) and
/// record the write `action` under it, keeping the newest [`LEADER_WRITES_KEPT`] of its
/// leadership. `NotLeader` otherwise, before anything is written: the caller's transaction
/// rolls back and nothing of the call is kept.
pub(crate) async fn fence(
    conn: &mut SqliteConnection,
    term: &Leader,
    action: &str,
    now: Timestamp,
) -> Result<()> {
    let current = load_leader(conn, &term.name).await?;
    if !current.is_some_and(|current| cluster::holds(&current, term, now)) {
        return Err(not_leader(term));
    }
    sqlx::query("INSERT INTO leader_writes (name, term, at, action) VALUES (?, ?, ?, ?)")
        .bind(&term.name)
        .bind(term_value(term.term)?)
        .bind(now.as_unix_micros())
        .bind(action)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    // Everything from the newest write past the kept ones down: at most one row per insert.
    sqlx::query(
        "DELETE FROM leader_writes WHERE name = ? AND seq <= \
         (SELECT seq FROM leader_writes WHERE name = ? ORDER BY seq DESC LIMIT 1 OFFSET +?)",
    )
    .bind(&term.name)
    .bind(&term.name)
    .bind(sql_limit(LEADER_WRITES_KEPT))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The refusal of a write under a term that no longer holds.
fn not_leader(term: &Leader) -> Error {
    Error::new(
        ErrorKind::NotLeader,
        format!("term {} of leadership {:?} is no longer valid", term.term, term.name),
    )
}

/// Mark every active or draining worker overdue at `now` ([`cluster::is_overdue`]) gone. The
/// workers this marked, and every gone worker (those included), each in ID order.
async fn mark_silent_gone(
    conn: &mut SqliteConnection,
    timeout: Duration,
    now: Timestamp,
) -> Result<(Vec<WorkerId>, Vec<WorkerId>)> {
    let rows = sqlx::query("SELECT id, state, last_seen FROM workers ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let (mut marked, mut all_gone) = (Vec::new(), Vec::new());
    for row in &rows {
        let id: WorkerId = parse("worker ID", &row.try_get::<String, _>(0).map_err(db_error)?)?;
        let state = worker_state(&row.try_get::<String, _>(1).map_err(db_error)?)?;
        let last_seen = Timestamp::from_unix_micros(row.try_get(2).map_err(db_error)?);
        if state == WorkerState::Gone {
            all_gone.push(id);
        } else if cluster::is_overdue(last_seen, now, timeout) {
            marked.push(id);
            all_gone.push(id);
        }
    }
    if !marked.is_empty() {
        sqlx::query("UPDATE workers SET state = ? WHERE id IN (SELECT value FROM json_each(?))")
            .bind(WorkerState::Gone.as_str())
            .bind(json(&marked)?)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
    }
    Ok((marked, all_gone))
}

/// Reclaim up to `limit` running jobs leased by the `gone` workers, oldest lease expiry first,
/// each as [`transition::rescue_from_lost_worker`] decides, written as the expiry rescue writes
/// its jobs (a dead one with its DLQ entry and its run's failure). The report, and the queues
/// of the jobs made available.
async fn rescue_lost(
    conn: &mut SqliteConnection,
    gone: &[WorkerId],
    limit: usize,
    now: Timestamp,
) -> Result<(RescueReport, Vec<String>)> {
    let mut report = RescueReport::default();
    if gone.is_empty() || limit == 0 {
        return Ok((report, Vec::new()));
    }
    let rows = sqlx::query(
        // The lease index holds exactly the running jobs, in the order they are reclaimed; no
        // index finds them by owner, so its rows are filtered (the scan stops at `limit`).
        "SELECT * FROM jobs INDEXED BY jobs_lease \
         WHERE state = 'running' AND lease_owner IN (SELECT value FROM json_each(?)) \
         ORDER BY lease_expires, id LIMIT +?",
    )
    .bind(json(gone)?)
    .bind(sql_limit(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let reclaim = transition::rescue_from_lost_worker;
    let woken = reclaim_rows(conn, &rows, reclaim, now, &mut report).await?;
    Ok((report, woken))
}

#[async_trait]
impl LeadershipStore for SqliteStore {
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let name = name.to_owned();
        self.write_now("acquire_leadership", move |conn, now| {
            Box::pin(async move {
                let current = load_leader(conn, &name).await?;
                let next = cluster::acquire(current.as_ref(), &name, holder, now, ttl);
                if let Some(leader) = &next {
                    save_leader(conn, leader).await?;
                }
                Ok(next)
            })
        })
        .await
    }

    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        let term = term.clone();
        self.write_now("renew_leadership", move |conn, now| {
            Box::pin(async move {
                let current = load_leader(conn, &term.name).await?;
                let next = cluster::renew(current.as_ref(), &term, now, ttl);
                if let Some(leader) = &next {
                    save_leader(conn, leader).await?;
                }
                Ok(next)
            })
        })
        .await
    }

    async fn resign_leadership(&self, term: &Leader) -> Result<()> {
        let term = term.clone();
        self.write_now("resign_leadership", move |conn, now| {
            Box::pin(async move { resign(conn, &term, now).await })
        })
        .await
    }

    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader> {
        let name = name.to_owned();
        self.write_now("take_leadership", move |conn, now| {
            Box::pin(async move {
                let current = load_leader(conn, &name).await?;
                let leader = cluster::take(current.as_ref(), &name, holder, now, ttl);
                save_leader(conn, &leader).await?;
                Ok(leader)
            })
        })
        .await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        self.timed("leader", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            load_leader(&mut conn, name).await
        })
        .await
    }

    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>> {
        let limit = limit.min(LEADER_WRITES_KEPT);
        self.timed("leader_writes", async {
            let rows = sqlx::query(
                "SELECT * FROM (SELECT * FROM leader_writes WHERE name = ? \
                 ORDER BY seq DESC LIMIT +?) ORDER BY seq",
            )
            .bind(name)
            .bind(sql_limit(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
            rows.iter().map(leader_write_from_row).collect()
        })
        .await
    }
}

/// Leadership `name` as stored, or `None` if never held.
async fn load_leader(conn: &mut SqliteConnection, name: &str) -> Result<Option<Leader>> {
    sqlx::query("SELECT * FROM leaders WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(leader_from_row)
        .transpose()
}

/// Store `leader` as its leadership's current term (inserted the first time, replaced after).
async fn save_leader(conn: &mut SqliteConnection, leader: &Leader) -> Result<()> {
    sqlx::query(
        "INSERT INTO leaders (name, holder, term, elected_at, expires_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, term = excluded.term, \
         elected_at = excluded.elected_at, expires_at = excluded.expires_at",
    )
    .bind(&leader.name)
    .bind(leader.holder.to_string())
    .bind(term_value(leader.term)?)
    .bind(leader.elected_at.as_unix_micros())
    .bind(leader.expires_at.as_unix_micros())
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Step `term` down: its leadership's lease ends at `now` when the term still holds it
/// ([`cluster::holds`]), so the next acquire takes it under the next term; otherwise nothing
/// changes.
async fn resign(conn: &mut SqliteConnection, term: &Leader, now: Timestamp) -> Result<()> {
    let current = load_leader(conn, &term.name).await?;
    if current.is_some_and(|current| cluster::holds(&current, term, now)) {
        sqlx::query("UPDATE leaders SET expires_at = ? WHERE name = ?")
            .bind(now.as_unix_micros())
            .bind(&term.name)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}
