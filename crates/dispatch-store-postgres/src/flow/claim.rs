//! The gated claim: a claim of a request naming a queue with a config runs here instead of the
//! plain claim statement (which sees the config and claims nothing, see `crate::claim`), as one
//! transaction on the store's pool:
//!
//! 1. the store's now and the configs of the requested queues ([`CONFIGS`]);
//! 2. the queue gates of the configured queues locked, in gate order, with their live states
//!    (`flow_lock_gates`): gated claims of one queue take turns from here to the commit;
//! 3. for queues read in lanes, their tenants with available jobs, found by a skip scan of the
//!    lanes index (one probe per tenant), with their tenant gates' states ([`TENANTS`]); lanes
//!    whose gates are closed are dropped ([`Admission::lane_open`]);
//! 4. each (queue, name) pair's or lane's best due jobs ([`CANDIDATES`]): each priority level
//!    found by a skip scan, each level's due range read in claim order, at most
//!    [`LANE_SCAN_LIMIT`] entries of it, jobs whose key gate is full skipped (read without a lock:
//!    a hint), up to the claim's limit per level;
//! 5. the tenant and key gates of the candidates locked, in gate order, with their live states;
//! 6. [`round_robin`] over each pair's lanes, [`merge`] of all sequences, [`Admission::admit`]
//!    in that order until the limit;
//! 7. the admitted jobs claimed by ID, skipping any row another transaction holds or changed
//!    since it was read ([`CLAIM`]), counted jobs marked `flow_counted`;
//! 8. each gate the claimed jobs hold gets their count (and its new arrival time), folding in
//!    its pending releases ([`super::WRITE_GATES`]); commit.
//!
//! What the reads cost: one probe per tenant and per priority level, and at most
//! [`LANE_SCAN_LIMIT`] index entries per level of each lane. The lanes index holds only jobs
//! with a tenant (an index of every available job would cost every plain enqueue and claim one
//! more index entry), so the lane of a fair queue's jobs without a tenant is read from the claim
//! index, passing over jobs with a tenant within that bound: behind more than
//! [`LANE_SCAN_LIMIT`] due jobs with tenants at its priority level, it waits until they drain
//! below it. A lane of several levels may read that many entries per level.
//!
//! The claimed jobs' gates are counted from the jobs actually claimed (a job read in step 4 may
//! be gone by step 7), by [`held_gates`], the same gates the release trigger gives back; the rate
//! arrival times are those of an admission replayed over the claimed jobs alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dispatch_core::flow::{
    Admission, Candidate, ClaimOrder, ConcurrencyKey, GateState, LANE_SCAN_LIMIT, QueueConfig,
    held_gates, key_gate, merge, queue_gate, round_robin, tenant_gate,
};
use dispatch_core::{ClaimRequest, ClaimedJob, JobId, Result, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, SqlStr};
use uuid::Uuid;

use super::config_from;
use crate::error::internal;
use crate::row::{JOB_COLUMNS, JobRow, get, job_from_row, micros, sql_limit};
use crate::{PostgresStore, db_error, statement};

/// The store's now and the configs of queues `$2` (JSON text, any order); makes the transaction's
/// commit asynchronous, as the plain claim's is.
const CONFIGS: &str = "WITH t AS (SELECT {now} AS now, {async_commit} AS async_commit) \
     SELECT (SELECT now FROM t) AS now, ARRAY(SELECT c.config::text FROM {s}.queue_configs c \
       WHERE c.queue = ANY ($2::text[]) ORDER BY c.queue) AS configs";

/// The tenants with available jobs of each pair `$1`/`$2` (queue, name), by a skip scan of the
/// lanes index, with the live state of each tenant's gate in the queue (zero when it has none).
const TENANTS: &str = "WITH RECURSIVE p AS (SELECT DISTINCT * FROM unnest($1::text[], \
       $2::text[]) AS p(q, n)), \
     tenants AS (SELECT p.q, p.n, f.t FROM p CROSS JOIN LATERAL (SELECT j.scope_tenant AS t \
         FROM {s}.jobs j WHERE j.state = 'available' AND j.scope_tenant IS NOT NULL \
         AND j.queue = p.q AND j.name = p.n ORDER BY j.scope_tenant LIMIT 1) f \
       UNION ALL \
       SELECT l.q, l.n, f.t FROM tenants l CROSS JOIN LATERAL (SELECT j.scope_tenant AS t \
         FROM {s}.jobs j WHERE j.state = 'available' AND j.scope_tenant IS NOT NULL \
         AND j.queue = l.q AND j.name = l.n AND j.scope_tenant > l.t \
         ORDER BY j.scope_tenant LIMIT 1) f) \
     SELECT x.q, x.n, x.t, coalesce(g.gate, 't' || chr(31) || x.q || chr(31) || x.t) AS gate, \
       coalesce({live_running}, 0) AS running, coalesce(g.tat, 0) AS tat \
     FROM tenants x LEFT JOIN {s}.gates g ON g.gate = 't' || chr(31) || x.q || chr(31) || x.t";

/// The best due jobs of each read `$2..$5` (queue, name, tenant, untenanted; ordinal `rd`): a
/// read with a tenant is that tenant's lane (the lanes index), one without reads the pair's
/// claim index, keeping only jobs without a tenant when `untenanted`. Each priority level is
/// found by a skip scan; its due range is read in claim order, at most `$6` entries, and of those
/// the first `$7` whose key gate is not full (by its live count, read without a lock) are
/// answered.
const CANDIDATES: &str = "WITH RECURSIVE t AS (SELECT {now} AS now), \
     reads AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[]) \
       WITH ORDINALITY AS r(q, n, tenant, untenanted, rd)), \
     plevels AS (SELECT r.rd, r.q, r.n, r.untenanted, f.priority FROM reads r \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.queue = r.q AND j.name = r.n ORDER BY j.priority LIMIT 1) f \
         WHERE r.tenant IS NULL \
       UNION ALL \
       SELECT l.rd, l.q, l.n, l.untenanted, f.priority FROM plevels l \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.queue = l.q AND j.name = l.n AND j.priority > l.priority \
           ORDER BY j.priority LIMIT 1) f), \
     tlevels AS (SELECT r.rd, r.q, r.n, r.tenant, f.priority FROM reads r \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.scope_tenant IS NOT NULL AND j.queue = r.q AND j.name = r.n \
           AND j.scope_tenant = r.tenant ORDER BY j.priority LIMIT 1) f \
         WHERE r.tenant IS NOT NULL \
       UNION ALL \
       SELECT l.rd, l.q, l.n, l.tenant, f.priority FROM tlevels l \
         CROSS JOIN LATERAL (SELECT j.priority FROM {s}.jobs j WHERE j.state = 'available' \
           AND j.scope_tenant IS NOT NULL AND j.queue = l.q AND j.name = l.n \
           AND j.scope_tenant = l.tenant AND j.priority > l.priority \
           ORDER BY j.priority LIMIT 1) f), \
     scanned AS (SELECT l.rd, c.* FROM plevels l CROSS JOIN LATERAL (SELECT {cand} \
           FROM {s}.jobs j WHERE j.state = 'available' AND j.queue = l.q AND j.name = l.n \
           AND j.priority = l.priority AND j.run_at <= (SELECT now FROM t) \
           ORDER BY j.run_at, j.seq LIMIT $6) c \
         WHERE NOT l.untenanted OR c.scope_tenant IS NULL \
       UNION ALL \
       SELECT l.rd, c.* FROM tlevels l CROSS JOIN LATERAL (SELECT {cand} \
           FROM {s}.jobs j WHERE j.state = 'available' AND j.scope_tenant IS NOT NULL \
           AND j.queue = l.q AND j.name = l.n AND j.scope_tenant = l.tenant \
           AND j.priority = l.priority AND j.run_at <= (SELECT now FROM t) \
           ORDER BY j.run_at, j.seq LIMIT $6) c), \
     open AS (SELECT s.*, row_number() OVER (PARTITION BY s.rd, s.priority \
         ORDER BY s.run_at, s.seq) AS k FROM scanned s \
       WHERE s.concurrency_key IS NULL OR coalesce((SELECT {live_running} FROM {s}.gates g \
         WHERE g.gate = 'k' || chr(31) || s.concurrency_key), 0) < s.concurrency_limit) \
     SELECT o.rd, o.id, o.queue, o.name, o.priority, o.run_at, o.seq, o.scope_tenant, \
       o.concurrency_key, o.concurrency_limit FROM open o WHERE o.k <= $7";

/// The columns a candidate is read with (alias `j`).
const CANDIDATE_COLUMNS: &str = "j.id, j.queue, j.name, j.priority, j.run_at, j.seq, \
     j.scope_tenant, j.concurrency_key, j.concurrency_limit";

/// Claim jobs `$2` that are still available and due, skipping rows other transactions hold, for
/// owner `$3` under token `$4`, leased for `$5` µs; those of `$6` are counted (`flow_counted`).
const CLAIM: &str = "WITH t AS (SELECT {now} AS now), \
     picked AS (SELECT j.id FROM {s}.jobs j WHERE j.id = ANY ($2::uuid[]) \
       AND j.state = 'available' AND j.run_at <= (SELECT now FROM t) \
       ORDER BY j.id FOR UPDATE SKIP LOCKED) \
     UPDATE {s}.jobs j SET state = 'running', attempt = j.attempt + 1, lease_owner = $3, \
       lease_token = $4, lease_expires = {sat(t.now, $5)}, cancel_requested = false, \
       flow_counted = (j.id = ANY ($6::uuid[])) \
     FROM t WHERE j.id = ANY (ARRAY(SELECT id FROM picked)) \
     RETURNING {job_columns}";

/// The statements of the gated claim, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    configs: SqlStr,
    tenants: SqlStr,
    candidates: SqlStr,
    claim: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let flow = |t: &str| {
            t.replace("{live_running}", super::LIVE_RUNNING)
                .replace("{cand}", CANDIDATE_COLUMNS)
                .replace("{job_columns}", JOB_COLUMNS)
                .replace("{async_commit}", crate::claim::ASYNC_COMMIT)
        };
        Self {
            configs: statement(&flow(CONFIGS), quoted),
            tenants: statement(&flow(TENANTS), quoted),
            candidates: statement(&flow(CANDIDATES), quoted),
            claim: statement(&flow(CLAIM), quoted),
        }
    }
}

/// One read of candidates: a (queue, name) pair in claim order, or one lane of a pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Read {
    queue: String,
    name: String,
    /// The lane's tenant; `None` for the pair, or its lane of jobs without a tenant.
    tenant: Option<String>,
    /// Only jobs without a tenant (the untenanted lane of a pair read in lanes).
    untenanted: bool,
}

/// A candidate row of [`CANDIDATES`]: its read's ordinal and the candidate.
fn candidate_from_row(row: &PgRow) -> Result<(usize, Candidate)> {
    let rd: i64 = get(row, "rd")?;
    let key: Option<String> = get(row, "concurrency_key")?;
    let limit: Option<i32> = get(row, "concurrency_limit")?;
    let key = match (key, limit) {
        (Some(key), Some(limit)) => {
            Some(ConcurrencyKey::new(key, u32::try_from(limit).unwrap_or(0)))
        }
        _ => None,
    };
    let run_at: i64 = get(row, "run_at")?;
    let candidate = Candidate {
        id: JobId::from_uuid(get(row, "id")?),
        queue: get(row, "queue")?,
        name: get(row, "name")?,
        tenant: get(row, "scope_tenant")?,
        key,
        order: ClaimOrder::new(
            get(row, "priority")?,
            Timestamp::from_unix_micros(run_at),
            get(row, "seq")?,
        ),
    };
    Ok((usize::try_from(rd).unwrap_or(0).saturating_sub(1), candidate))
}

impl PostgresStore {
    /// Claim for `request`, some of whose queues have a config (see the module docs).
    pub(crate) async fn claim_gated(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
        let claimed = self.claim_gated_in(&mut tx, request).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(claimed)
    }

    async fn claim_gated_in(
        &self,
        conn: &mut PgConnection,
        request: &ClaimRequest,
    ) -> Result<Vec<ClaimedJob>> {
        let sql = &self.shared.sql.flow.claim;
        let queues: BTreeSet<&str> = request.queues.iter().map(String::as_str).collect();
        let names: BTreeSet<&str> = request.names.iter().map(String::as_str).collect();
        let queue_list: Vec<&str> = queues.iter().copied().collect();
        // 1. Now and the configs.
        let row = sqlx::query(sql.configs.clone())
            .bind(self.now_param())
            .bind(&queue_list)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        let now = Timestamp::from_unix_micros(get(&row, "now")?);
        let configs = get::<Vec<String>>(&row, "configs")?
            .iter()
            .map(|text| config_from(text))
            .collect::<Result<Vec<QueueConfig>>>()?;
        let configs: HashMap<String, QueueConfig> =
            configs.into_iter().map(|c| (c.queue.clone(), c)).collect();
        // 2. The queue gates, locked.
        let queue_gates: BTreeSet<String> = configs.keys().map(|q| queue_gate(q)).collect();
        let mut gates = self.lock_gates(conn, &queue_gates).await?;
        let reading = Admission::new(now, configs.values().cloned(), gates.clone());
        // 3. The reads: pairs, and the lanes of pairs read in lanes.
        let mut reads = Vec::new();
        let mut lane_pairs = Vec::new();
        for &queue in &queues {
            let config = configs.get(queue);
            if !reading.lane_open(queue, None) {
                continue;
            }
            for &name in &names {
                match config {
                    Some(config) if !config.claimable(name) => {}
                    Some(config) if config.in_lanes() => {
                        lane_pairs.push((queue, name));
                        reads.push(Read {
                            queue: queue.to_owned(),
                            name: name.to_owned(),
                            tenant: None,
                            untenanted: true,
                        });
                    }
                    _ => reads.push(Read {
                        queue: queue.to_owned(),
                        name: name.to_owned(),
                        tenant: None,
                        untenanted: false,
                    }),
                }
            }
        }
        if !lane_pairs.is_empty() {
            let mut reading = reading;
            for (read, state) in self.tenants(conn, &lane_pairs).await? {
                reading.know(tenant_gate(&read.queue, read.tenant.as_deref().unwrap_or("")), state);
                if reading.lane_open(&read.queue, read.tenant.as_deref()) {
                    reads.push(read);
                }
            }
        }
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        // 4. The candidates of each read.
        let mut per_read = self.candidates(conn, &reads, request.limit).await?;
        // 5. Their tenant and key gates, locked.
        let mut others = BTreeSet::new();
        for candidate in per_read.iter().flatten() {
            if configs.contains_key(&candidate.queue) {
                others.extend(candidate.tenant.as_ref().map(|t| tenant_gate(&candidate.queue, t)));
            }
            others.extend(candidate.key.as_ref().map(|k| key_gate(&k.key)));
        }
        gates.extend(self.lock_gates(conn, &others).await?);
        // 6. Lanes round-robin, sequences merged, admitted in order.
        let mut sequences: Vec<Vec<Candidate>> = Vec::new();
        let mut lanes: BTreeMap<(String, String), Vec<Vec<Candidate>>> = BTreeMap::new();
        for (read, candidates) in reads.iter().zip(per_read.iter_mut()) {
            candidates.sort_by_key(|c| c.order);
            candidates.truncate(request.limit);
            let candidates = std::mem::take(candidates);
            let in_lanes = configs.get(&read.queue).is_some_and(QueueConfig::in_lanes);
            if in_lanes {
                lanes.entry((read.queue.clone(), read.name.clone())).or_default().push(candidates);
            } else {
                sequences.push(candidates);
            }
        }
        sequences.extend(lanes.into_values().map(round_robin));
        let mut admission = Admission::new(now, configs.values().cloned(), gates.clone());
        let admitted: Vec<Candidate> = merge(sequences)
            .into_iter()
            .filter(|c| admission.admit(c))
            .take(request.limit)
            .collect();
        if admitted.is_empty() {
            return Ok(Vec::new());
        }
        // 7. Claimed by ID.
        let counted = |c: &Candidate| configs.contains_key(&c.queue) || c.key.is_some();
        let ids: Vec<Uuid> = admitted.iter().map(|c| c.id.uuid()).collect();
        let counted_ids: Vec<Uuid> =
            admitted.iter().filter(|c| counted(c)).map(|c| c.id.uuid()).collect();
        let rows = sqlx::query(sql.claim.clone())
            .bind(self.now_param())
            .bind(&ids)
            .bind(request.worker.to_string())
            .bind(request.token.uuid())
            .bind(micros(request.lease_ttl))
            .bind(&counted_ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let mut rows = rows.iter().map(job_from_row).collect::<Result<Vec<JobRow>>>()?;
        // 8. The gates of the claimed jobs.
        let claimed: BTreeSet<Uuid> = rows.iter().map(|r| r.job.id.uuid()).collect();
        let mut replay = Admission::new(now, configs.values().cloned(), gates);
        let mut added: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for candidate in admitted.iter().filter(|c| claimed.contains(&c.id.uuid())) {
            replay.admit(candidate);
            if counted(candidate) {
                let key = candidate.key.as_ref().map(|k| k.key.as_str());
                for gate in held_gates(&candidate.queue, candidate.tenant.as_deref(), key) {
                    added.entry(gate).or_insert((0, 0)).0 += 1;
                }
            }
        }
        for (gate, state) in replay.changed() {
            if let Some(entry) = added.get_mut(gate) {
                entry.1 = state.tat.as_unix_micros();
            }
        }
        self.write_gates(conn, &added).await?;
        // RETURNING gives no order: put the batch back in the order it was admitted (lanes
        // round-robin, then claim order).
        let place: HashMap<Uuid, usize> =
            admitted.iter().enumerate().map(|(i, c)| (c.id.uuid(), i)).collect();
        rows.sort_by_key(|r| place.get(&r.job.id.uuid()).copied().unwrap_or(usize::MAX));
        rows.into_iter()
            .map(|row| {
                let lease = row.job.lease.ok_or_else(|| internal("claimed job without lease"))?;
                Ok(ClaimedJob { job: row.job, lease })
            })
            .collect()
    }

    /// The tenants with available jobs of `pairs` (read in lanes), as lane reads, with the state
    /// of each tenant's gate.
    async fn tenants(
        &self,
        conn: &mut PgConnection,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<(Read, GateState)>> {
        let queues: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let names: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let rows = sqlx::query(self.shared.sql.flow.claim.tenants.clone())
            .bind(&queues)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let read = Read {
                    queue: get(row, "q")?,
                    name: get(row, "n")?,
                    tenant: Some(get(row, "t")?),
                    untenanted: false,
                };
                let (_, state) = super::gate_from_row(row)?;
                Ok((read, state))
            })
            .collect()
    }

    /// The candidates of each of `reads`, in the same order.
    async fn candidates(
        &self,
        conn: &mut PgConnection,
        reads: &[Read],
        limit: usize,
    ) -> Result<Vec<Vec<Candidate>>> {
        let queues: Vec<&str> = reads.iter().map(|r| r.queue.as_str()).collect();
        let names: Vec<&str> = reads.iter().map(|r| r.name.as_str()).collect();
        let tenants: Vec<Option<&str>> = reads.iter().map(|r| r.tenant.as_deref()).collect();
        let untenanted: Vec<bool> = reads.iter().map(|r| r.untenanted).collect();
        let rows = sqlx::query(self.shared.sql.flow.claim.candidates.clone())
            .bind(self.now_param())
            .bind(&queues)
            .bind(&names)
            .bind(&tenants)
            .bind(&untenanted)
            .bind(sql_limit(LANE_SCAN_LIMIT))
            .bind(sql_limit(limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let mut per_read = vec![Vec::new(); reads.len()];
        for row in &rows {
            let (rd, candidate) = candidate_from_row(row)?;
            if let Some(read) = per_read.get_mut(rd) {
                read.push(candidate);
            }
        }
        Ok(per_read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.configs, &q.tenants, &q.candidates, &q.claim] {
            crate::assert_expanded(sql);
        }
    }
}
