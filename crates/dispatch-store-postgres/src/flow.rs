//! [`FlowStore`]: queue configs, pauses and progress reports (this file), and the gated claim
//! that enforces the configs' gates ([`claim`]). Migration 0012 holds the tables: `queue_configs`
//! (the [`QueueConfig`] as JSON), `gates` (running count and rate arrival time per gate),
//! `flow_releases` (releases not yet folded into `gates`) and the release trigger on `jobs`.
//!
//! # Counting and releasing
//!
//! A gated claim marks the jobs it counts (`flow_counted`) and adds them to their gates under
//! the gates' row locks. A counted job leaving `running` by any path fires the trigger
//! `jobs_flow_release`, which appends one row per gate it held to `flow_releases` and clears the
//! mark: finishes never touch a gate row, so they never wait on a claim's gate lock, and batches
//! of finishes can not deadlock on gates. A gate's live running count is its row's `running`
//! less its pending releases; whoever writes a gate (a gated claim, a queue's first config)
//! deletes its pending releases and subtracts them in the same statement, under the gate's lock.
//!
//! # Locks
//!
//! Gate rows are locked by `flow_lock_gates` (creating missing ones), each call in gate order,
//! and every caller locks its queue gates in a first call and the tenant and key gates in a
//! second, so no two callers wait on each other in a circle. A tenant gate is only written under
//! its queue gate's lock.

mod claim;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use dispatch_core::flow::{GateState, held_gates, queue_gate};
use dispatch_core::{Error, FlowStore, ProgressUpdate, QueueConfig, QueueFlow, Result, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, SqlStr};
use uuid::Uuid;

use crate::row::get;
use crate::{PostgresStore, db_error, statement};

/// The default config ([`QueueConfig::new`]) as stored, for a queue named by a `jsonb_set`
/// (`'queue'`): what an enqueue of a job with a concurrency key gives a queue without a config.
pub(crate) fn default_config_json() -> String {
    // Serializing a plain struct of strings, numbers and sets can not fail.
    let json = serde_json::to_string(&QueueConfig::new("")).unwrap_or_default();
    // Inside a SQL string literal.
    json.replace('\'', "''")
}

/// The live running count of gate `g` (alias of a `gates` row): running less pending releases.
const LIVE_RUNNING: &str = "greatest(g.running - (SELECT count(*) FROM {s}.flow_releases r \
     WHERE r.gate = g.gate), 0)";

/// Store config `$2` for queue `$1`; `inserted` tells a first config.
const UPSERT_CONFIG: &str = "INSERT INTO {s}.queue_configs AS c (queue, config) \
     VALUES ($1, $2::jsonb) ON CONFLICT (queue) DO UPDATE SET config = excluded.config \
     RETURNING (xmax = 0) AS inserted";

/// Give queue `$1` the default config `$2` unless it has one; a row when it was created.
const INSERT_DEFAULT: &str = "INSERT INTO {s}.queue_configs (queue, config) \
     VALUES ($1, $2::jsonb) ON CONFLICT (queue) DO NOTHING RETURNING queue";

/// The config of queue `$1`, locked for a read-modify-write.
const LOCK_CONFIG: &str = "SELECT c.config::text AS config FROM {s}.queue_configs c \
     WHERE c.queue = $1 FOR UPDATE";

/// Replace the config of queue `$1` with `$2`.
const UPDATE_CONFIG: &str = "UPDATE {s}.queue_configs SET config = $2::jsonb WHERE queue = $1";

/// Mark the running, not yet counted jobs of queue `$1` counted, answering what gates they hold.
/// Running jobs are read through the lease index (every running job has a lease), so the call
/// reads the running jobs, not the table.
const COUNT_RUNNING: &str = "UPDATE {s}.jobs j SET flow_counted = true \
     WHERE j.queue = $1 AND j.lease_expires IS NOT NULL AND j.state = 'running' \
     AND NOT j.flow_counted RETURNING j.queue, j.scope_tenant, j.concurrency_key";

/// Lock gates `$1` in order (creating missing ones) and read their live state.
pub(crate) const LOCK_GATES: &str = "SELECT l.gate, l.running, l.tat \
     FROM {s}.flow_lock_gates($1::text[]) l";

/// Add `$2` running jobs to each gate `$1` and move its arrival time to at least `$3`, folding
/// its pending releases in (`flow_add_gates`).
const WRITE_GATES: &str = "SELECT {s}.flow_add_gates($1::text[], $2::int8[], $3::int8[])";

/// The flow of queue `$1` (config and the live running count of its gate).
const QUEUE_FLOW: &str = "SELECT c.config::text AS config, \
     coalesce((SELECT {live_running} FROM {s}.gates g WHERE g.gate = 'q' || chr(31) || c.queue), 0) AS running FROM {s}.queue_configs c WHERE c.queue = $1";

/// Every queue's flow, by queue name.
const LIST_FLOWS: &str = "SELECT c.config::text AS config, \
     coalesce((SELECT {live_running} FROM {s}.gates g WHERE g.gate = 'q' || chr(31) || c.queue), 0) AS running FROM {s}.queue_configs c ORDER BY c.queue";

/// Wake the workers of queue `$2` on channel `$1` (sent at commit).
const WAKE_QUEUE: &str = "SELECT pg_notify($1, $2)";

/// Remove the config of queue `$1`.
const DELETE_CONFIG: &str = "DELETE FROM {s}.queue_configs WHERE queue = $1 RETURNING queue";

/// Write progress `$3` (JSON text) of jobs `$1` while lease tokens `$2` hold them, rows locked in
/// ID order (as finishes lock them); the last item per job is the one written. Answers the
/// ordinals of the items whose lease held.
const RECORD_PROGRESS: &str = "WITH i AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], \
       $3::text[]) WITH ORDINALITY AS i(job_id, token, progress, ord)), \
     locked AS (SELECT j.id, j.lease_token FROM {s}.jobs j \
       WHERE j.id IN (SELECT job_id FROM i) AND j.state = 'running' ORDER BY j.id FOR UPDATE), \
     held AS (SELECT i.* FROM i JOIN locked l ON l.id = i.job_id AND l.lease_token = i.token), \
     last AS (SELECT DISTINCT ON (h.job_id) h.job_id, h.progress FROM held h \
       ORDER BY h.job_id, h.ord DESC), \
     upd AS (UPDATE {s}.jobs j SET progress = last.progress::jsonb FROM last \
       WHERE j.id = last.job_id RETURNING j.id) \
     SELECT h.ord FROM held h WHERE EXISTS (SELECT 1 FROM upd WHERE upd.id = h.job_id)";

/// The statements of flow control, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    upsert_config: SqlStr,
    insert_default: SqlStr,
    lock_config: SqlStr,
    update_config: SqlStr,
    count_running: SqlStr,
    lock_gates: SqlStr,
    write_gates: SqlStr,
    queue_flow: SqlStr,
    list_flows: SqlStr,
    delete_config: SqlStr,
    wake_queue: SqlStr,
    record_progress: SqlStr,
    claim: claim::Sql,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let flow = |t: &str| t.replace("{live_running}", LIVE_RUNNING);
        Self {
            upsert_config: statement(UPSERT_CONFIG, quoted),
            insert_default: statement(INSERT_DEFAULT, quoted),
            lock_config: statement(LOCK_CONFIG, quoted),
            update_config: statement(UPDATE_CONFIG, quoted),
            count_running: statement(COUNT_RUNNING, quoted),
            lock_gates: statement(LOCK_GATES, quoted),
            write_gates: statement(WRITE_GATES, quoted),
            queue_flow: statement(&flow(QUEUE_FLOW), quoted),
            list_flows: statement(&flow(LIST_FLOWS), quoted),
            delete_config: statement(DELETE_CONFIG, quoted),
            wake_queue: statement(WAKE_QUEUE, quoted),
            record_progress: statement(RECORD_PROGRESS, quoted),
            claim: claim::Sql::new(quoted),
        }
    }
}

/// A stored config.
fn config_from(text: &str) -> Result<QueueConfig> {
    serde_json::from_str(text)
        .map_err(|e| Error::internal(format!("postgres: corrupt queue config: {e}")))
}

/// A config as stored.
fn config_json(config: &QueueConfig) -> Result<String> {
    serde_json::to_string(config)
        .map_err(|e| Error::internal(format!("postgres: queue config to JSON: {e}")))
}

/// A flow row (`config`, `running`).
fn flow_from_row(row: &PgRow) -> Result<QueueFlow> {
    let running: i64 = get(row, "running")?;
    Ok(QueueFlow {
        config: config_from(&get::<String>(row, "config")?)?,
        running: u64::try_from(running).unwrap_or(0),
    })
}

/// A gate state row (`gate`, `running`, `tat`).
pub(crate) fn gate_from_row(row: &PgRow) -> Result<(String, GateState)> {
    let running: i64 = get(row, "running")?;
    let tat: i64 = get(row, "tat")?;
    let state = GateState {
        running: u64::try_from(running).unwrap_or(0),
        tat: Timestamp::from_unix_micros(tat),
    };
    Ok((get(row, "gate")?, state))
}

impl PostgresStore {
    /// Lock `gates` (in order, creating missing ones) on `conn` and read their live states.
    pub(crate) async fn lock_gates(
        &self,
        conn: &mut PgConnection,
        gates: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, GateState>> {
        if gates.is_empty() {
            return Ok(BTreeMap::new());
        }
        let gates: Vec<&str> = gates.iter().map(String::as_str).collect();
        let rows = sqlx::query(self.shared.sql.flow.lock_gates.clone())
            .bind(&gates)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        rows.iter().map(gate_from_row).collect()
    }

    /// Add `added` running jobs to each gate (locked on `conn`), and move its arrival time to at
    /// least `tat` where given, folding in its pending releases.
    pub(crate) async fn write_gates(
        &self,
        conn: &mut PgConnection,
        added: &BTreeMap<String, (i64, i64)>,
    ) -> Result<()> {
        if added.is_empty() {
            return Ok(());
        }
        let gates: Vec<&str> = added.keys().map(String::as_str).collect();
        let counts: Vec<i64> = added.values().map(|(n, _)| *n).collect();
        let tats: Vec<i64> = added.values().map(|(_, tat)| *tat).collect();
        sqlx::query(self.shared.sql.flow.write_gates.clone())
            .bind(&gates)
            .bind(&counts)
            .bind(&tats)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// A queue's first config: count its running jobs that are not counted yet into the gates
    /// they hold, in the caller's transaction (queue gate locked first, then the others, each
    /// set in gate order).
    async fn count_running(&self, conn: &mut PgConnection, queue: &str) -> Result<()> {
        self.lock_gates(conn, &BTreeSet::from([queue_gate(queue)])).await?;
        let rows = sqlx::query(self.shared.sql.flow.count_running.clone())
            .bind(queue)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut added: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for row in &rows {
            let queue: String = get(row, "queue")?;
            let tenant: Option<String> = get(row, "scope_tenant")?;
            let key: Option<String> = get(row, "concurrency_key")?;
            for gate in held_gates(&queue, tenant.as_deref(), key.as_deref()) {
                added.entry(gate).or_insert((0, 0)).0 += 1;
            }
        }
        let others: BTreeSet<String> =
            added.keys().filter(|g| **g != queue_gate(queue)).cloned().collect();
        self.lock_gates(conn, &others).await?;
        self.write_gates(conn, &added).await
    }

    /// The flow of `queue` on `conn`.
    async fn flow_on(&self, conn: &mut PgConnection, queue: &str) -> Result<Option<QueueFlow>> {
        let row = sqlx::query(self.shared.sql.flow.queue_flow.clone())
            .bind(queue)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
        row.as_ref().map(flow_from_row).transpose()
    }

    /// Give `queue` the default config unless it has one (counting its running jobs when it is
    /// its first), in the caller's transaction.
    async fn ensure_config(&self, conn: &mut PgConnection, queue: &str) -> Result<()> {
        let created = sqlx::query(self.shared.sql.flow.insert_default.clone())
            .bind(queue)
            .bind(config_json(&QueueConfig::new(queue))?)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
        if created.is_some() {
            self.count_running(conn, queue).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl FlowStore for PostgresStore {
    async fn set_queue_config(&self, config: &QueueConfig) -> Result<QueueFlow> {
        config.validate()?;
        let json = config_json(config)?;
        self.timed("set_queue_config", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let row = sqlx::query(self.shared.sql.flow.upsert_config.clone())
                .bind(&config.queue)
                .bind(&json)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            if get::<bool>(&row, "inserted")? {
                self.count_running(&mut tx, &config.queue).await?;
            }
            let flow = self.flow_on(&mut tx, &config.queue).await?;
            tx.commit().await.map_err(db_error)?;
            flow.ok_or_else(|| Error::internal("postgres: a stored queue config vanished"))
        })
        .await
    }

    async fn queue_flow(&self, queue: &str) -> Result<Option<QueueFlow>> {
        self.timed("queue_flow", async {
            let row = sqlx::query(self.shared.sql.flow.queue_flow.clone())
                .bind(queue)
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            row.as_ref().map(flow_from_row).transpose()
        })
        .await
    }

    async fn list_queue_flows(&self) -> Result<Vec<QueueFlow>> {
        self.timed("list_queue_flows", async {
            let rows = sqlx::query(self.shared.sql.flow.list_flows.clone())
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            rows.iter().map(flow_from_row).collect()
        })
        .await
    }

    async fn delete_queue_config(&self, queue: &str) -> Result<bool> {
        self.timed("delete_queue_config", async {
            let row = sqlx::query(self.shared.sql.flow.delete_config.clone())
                .bind(queue)
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(row.is_some())
        })
        .await
    }

    async fn set_paused(&self, queue: &str, name: Option<&str>, paused: bool) -> Result<bool> {
        QueueConfig::new(queue).validate()?;
        self.timed("set_paused", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            self.ensure_config(&mut tx, queue).await?;
            let text: String = sqlx::query_scalar(self.shared.sql.flow.lock_config.clone())
                .bind(queue)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let mut config = config_from(&text)?;
            let changed = match name {
                None => std::mem::replace(&mut config.paused, paused) != paused,
                Some(name) if paused => config.paused_names.insert(name.to_owned()),
                Some(name) => config.paused_names.remove(name),
            };
            if changed {
                sqlx::query(self.shared.sql.flow.update_config.clone())
                    .bind(queue)
                    .bind(config_json(&config)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            if changed && !paused {
                // Resumed: idle workers of the queue claim at once.
                sqlx::query(self.shared.sql.flow.wake_queue.clone())
                    .bind(self.channel())
                    .bind(queue)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(changed)
        })
        .await
    }

    async fn record_progress(&self, updates: &[ProgressUpdate]) -> Result<Vec<bool>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = updates.iter().map(|u| u.lease.job_id.uuid()).collect();
        let tokens: Vec<Uuid> = updates.iter().map(|u| u.lease.token.uuid()).collect();
        let progress: Vec<String> = updates.iter().map(|u| u.progress.to_string()).collect();
        self.timed("record_progress", async {
            let written: Vec<i64> =
                sqlx::query_scalar(self.shared.sql.flow.record_progress.clone())
                    .bind(&ids)
                    .bind(&tokens)
                    .bind(&progress)
                    .fetch_all(&self.shared.pool)
                    .await
                    .map_err(db_error)?;
            let mut answers = vec![false; updates.len()];
            for ord in written {
                if let Some(answer) =
                    usize::try_from(ord).ok().and_then(|o| answers.get_mut(o.wrapping_sub(1)))
                {
                    *answer = true;
                }
            }
            Ok(answers)
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
            &q.upsert_config,
            &q.insert_default,
            &q.lock_config,
            &q.update_config,
            &q.count_running,
            &q.lock_gates,
            &q.write_gates,
            &q.queue_flow,
            &q.list_flows,
            &q.delete_config,
            &q.wake_queue,
            &q.record_progress,
        ] {
            crate::assert_expanded(sql);
        }
    }

    #[test]
    fn the_default_config_reads_back() {
        let json = default_config_json();
        let config: QueueConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(config, QueueConfig::new(""));
    }
}
