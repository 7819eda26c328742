//! The gated claim: a claim of queues with a flow config, decided by
//! [`Admission`](dispatch_core::flow::Admission) in the claim's own `BEGIN IMMEDIATE`
//! transaction. The writer is the one place every claim of the file goes through, so two claims
//! never both admit past a gate: the second reads the gates the first wrote.
//!
//! Per (queue, name) pair whose queue and name are not paused: a queue read in lanes finds its
//! tenants by a skip scan of `jobs_claim_tenant` (one index search per tenant, never a walk of
//! the jobs), reads every open lane's best due jobs in one statement (a correlated search of the
//! index per tenant) and the lane of jobs without a tenant from the claim index, and interleaves
//! them ([`round_robin`]); another queue is read in claim order. Jobs whose key gate is full are
//! skipped, reading at most [`LANE_SCAN_LIMIT`] entries per lane. The sequences are merged
//! ([`merge`]) and offered to the admission until the limit is admitted; the admitted jobs are
//! claimed as the plain claim does, marked counted, and the changed gates written back.

use std::collections::{BTreeMap, HashMap};

use dispatch_core::flow::{
    Admission, Candidate, ClaimOrder, ConcurrencyKey, LANE_SCAN_LIMIT, key_gate, merge, queue_gate,
    round_robin, tenant_gate,
};
use dispatch_core::{ClaimRequest, ClaimedJob, JobId, QueueConfig, Result, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::gate::{add_running, gate_state, json_list, load_configs, load_gates, write_gates};
use crate::claim::{Claim, claim_plain, claimed_jobs, internal, queue_name_pairs};
use crate::error::db_error;
use crate::row::{JobRow, job_from_row, sql_limit, token_text};

/// The tenants with available jobs of a (queue, name) pair, with their tenant gate's state: a
/// skip scan, each step one search of `jobs_claim_tenant` for the next tenant after the last.
const TENANTS: &str = "WITH RECURSIVE t(tenant) AS (\
    SELECT (SELECT scope_tenant FROM jobs INDEXED BY jobs_claim_tenant \
            WHERE state = 'available' AND queue = ?1 AND name = ?2 AND scope_tenant IS NOT NULL \
            ORDER BY scope_tenant LIMIT 1) \
    UNION ALL \
    SELECT (SELECT scope_tenant FROM jobs INDEXED BY jobs_claim_tenant \
            WHERE state = 'available' AND queue = ?1 AND name = ?2 AND scope_tenant > t.tenant \
            ORDER BY scope_tenant LIMIT 1) FROM t WHERE t.tenant IS NOT NULL) \
    SELECT t.tenant, g.running, g.tat FROM t LEFT JOIN flow_gates AS g \
    ON g.gate = 't' || char(31) || ?1 || char(31) || t.tenant WHERE t.tenant IS NOT NULL";

/// The columns a candidate is read with: the job's, its key gate's state and its tenant gate's
/// (every gate a candidate may pass is read before the admission writes it back).
const CANDIDATE: &str = "j.seq, j.id, j.scope_tenant, j.priority, j.run_at, j.concurrency_key, \
    j.concurrency_limit, g.running, g.tat, tg.running, tg.tat";

/// The joins of a candidate's key gate (`g`) and its tenant gate within its queue (`tg`).
const GATES: &str = "LEFT JOIN flow_gates AS g ON g.gate = 'k' || char(31) || j.concurrency_key \
    LEFT JOIN flow_gates AS tg ON tg.gate = 't' || char(31) || j.queue || char(31) || j.scope_tenant";

/// Jobs of the tenant lanes `?1` (a JSON array) of a (queue, name) pair, up to `?5` per lane in
/// claim order, due by `?4`: one search of `jobs_claim_tenant` per tenant.
fn tenant_lanes_sql() -> String {
    format!(
        "SELECT {CANDIDATE} FROM json_each(?1) AS t \
         JOIN jobs AS j ON j.seq IN (SELECT seq FROM jobs INDEXED BY jobs_claim_tenant \
         WHERE state = 'available' AND queue = ?2 AND name = ?3 AND scope_tenant = t.value \
         AND run_at <= ?4 ORDER BY priority DESC, run_at, seq LIMIT +?5) {GATES}"
    )
}

/// Due jobs of a (queue, name) pair in claim order from the claim index: the first `?4`
/// entries, of which those without a tenant when `?5` is set, at most `?6`.
fn pair_sql() -> String {
    format!(
        "SELECT {CANDIDATE} FROM (SELECT seq FROM jobs INDEXED BY jobs_claim \
         WHERE state = 'available' AND queue = ?1 AND name = ?2 AND run_at <= ?3 \
         ORDER BY priority DESC, run_at, seq LIMIT +?4) AS c JOIN jobs AS j ON j.seq = c.seq \
         {GATES} WHERE (?5 = 0 OR j.scope_tenant IS NULL) \
         ORDER BY j.priority DESC, j.run_at, j.seq LIMIT +?6"
    )
}

/// One candidate row with the stored states of its key and tenant gates (name, running, tat).
struct Read {
    candidate: Candidate,
    gates: Vec<(String, i64, i64)>,
}

fn read_row(row: &SqliteRow, queue: &str, name: &str) -> Result<Read> {
    let seq: i64 = row.try_get(0).map_err(db_error)?;
    let id: String = row.try_get(1).map_err(db_error)?;
    let id: JobId = id.parse()?;
    let tenant: Option<String> = row.try_get(2).map_err(db_error)?;
    let priority: i32 = row.try_get(3).map_err(db_error)?;
    let run_at: i64 = row.try_get(4).map_err(db_error)?;
    let key: Option<String> = row.try_get(5).map_err(db_error)?;
    let limit: Option<i64> = row.try_get(6).map_err(db_error)?;
    let running: Option<i64> = row.try_get(7).map_err(db_error)?;
    let tat: Option<i64> = row.try_get(8).map_err(db_error)?;
    let key = match (key, limit) {
        (Some(key), Some(limit)) => {
            Some(ConcurrencyKey::new(key, u32::try_from(limit).map_err(internal)?))
        }
        _ => None,
    };
    let tenant_running: Option<i64> = row.try_get(9).map_err(db_error)?;
    let tenant_tat: Option<i64> = row.try_get(10).map_err(db_error)?;
    let mut gates = Vec::with_capacity(2);
    if let Some(key) = &key {
        gates.push((key_gate(&key.key), running.unwrap_or(0), tat.unwrap_or(0)));
    }
    if let Some(tenant) = &tenant {
        let state = (tenant_running.unwrap_or(0), tenant_tat.unwrap_or(0));
        gates.push((tenant_gate(queue, tenant), state.0, state.1));
    }
    let candidate = Candidate {
        id,
        queue: queue.to_owned(),
        name: name.to_owned(),
        tenant,
        key,
        order: ClaimOrder::new(priority, Timestamp::from_unix_micros(run_at), seq),
    };
    Ok(Read { candidate, gates })
}

/// Keep the candidates of `rows` whose key gate is open (telling the admission each key gate's
/// state as it is met), at most `take`. Answers them and whether a full key skipped any.
fn open_candidates(
    admission: &mut Admission,
    rows: Vec<Read>,
    take: usize,
) -> (Vec<Candidate>, bool) {
    let mut kept = Vec::new();
    let mut skipped = false;
    for read in rows {
        if kept.len() == take {
            break;
        }
        for (gate, running, tat) in read.gates {
            admission.know(gate, gate_state(running, tat));
        }
        match &read.candidate.key {
            Some(key) if !admission.key_open(key) => skipped = true,
            _ => kept.push(read.candidate),
        }
    }
    (kept, skipped)
}

/// Lease up to the request's limit of due jobs on `conn`, inside the claim's transaction: the
/// plain claim ([`claim_plain`]) when none of the request's queues has a config, else the gated
/// claim. The plain claim's statement runs first and claims nothing when a queue has a config;
/// only then are the configs read, so a claim of plain queues stays one statement.
pub(crate) async fn claim_batch(
    conn: &mut SqliteConnection,
    claim: &Claim,
    now: Timestamp,
) -> Result<Vec<ClaimedJob>> {
    let claimed = claim_plain(conn, claim, now).await?;
    if !claimed.is_empty() {
        return Ok(claimed);
    }
    let configs = load_configs(conn, &claim.request().queues).await?;
    if configs.is_empty() {
        return Ok(claimed);
    }
    claim_gated(conn, claim.request(), configs, now).await
}

/// Claim up to `request.limit` jobs of gated queues (and of the request's other queues, whose
/// jobs pass only their key gates), as [`Admission`] decides, on `conn` inside the claim's
/// transaction.
async fn claim_gated(
    conn: &mut SqliteConnection,
    request: &ClaimRequest,
    configs: Vec<QueueConfig>,
    now: Timestamp,
) -> Result<Vec<ClaimedJob>> {
    let queue_gates: Vec<String> = configs.iter().map(|c| queue_gate(&c.queue)).collect();
    let gates = load_gates(conn, &queue_gates).await?;
    let start = Start { request, configs: &configs, gates: &gates, now };
    let (admission, admitted) = match admit(conn, &start, true).await? {
        Some(done) => done,
        None => admit(conn, &start, false)
            .await?
            .ok_or_else(|| internal("a gated claim with full lanes asked for fuller ones"))?,
    };
    if admitted.is_empty() {
        return Ok(Vec::new());
    }
    let rows = lease_admitted(conn, request, &admitted, now).await?;
    write_gates(conn, admission.changed()).await?;
    add_running(conn, &uncounted_slots(&admission, &admitted)).await?;
    claimed_jobs(rows)
}

/// What every admission of one gated claim starts from.
struct Start<'a> {
    request: &'a ClaimRequest,
    configs: &'a [QueueConfig],
    gates: &'a [(String, dispatch_core::GateState)],
    now: Timestamp,
}

/// Read the candidates and admit up to the limit: the admission and the admitted jobs.
///
/// A `shallow` read takes from each tenant lane only its share of the limit (the limit over the
/// open lanes, rounded up), which is a prefix of the full lanes' round-robin, so the admissions
/// are the same as with full lanes until a shallow sequence runs out. When one runs out while
/// the claim still has room and its queue could still admit, this answers `None` and the caller
/// reads again in full (a queue whose gate closed would have refused the rest anyway). With a
/// thousand tenants and a limit of 10, the shallow read is one job per lane, not ten.
async fn admit(
    conn: &mut SqliteConnection,
    start: &Start<'_>,
    shallow: bool,
) -> Result<Option<(Admission, Vec<Candidate>)>> {
    let Start { request, configs, gates, now } = *start;
    let limit = request.limit;
    let mut admission = Admission::new(now, configs.iter().cloned(), gates.iter().cloned());
    let mut sequences = Vec::new();
    // Per sequence: its queue, when the sequence is shallower than a full read.
    let mut cut = Vec::new();
    for (queue, name) in queue_name_pairs(&request.queues, &request.names) {
        let config = admission.config(&queue).cloned();
        if let Some(config) = &config
            && (!config.claimable(&name) || !admission.lane_open(&queue, None))
        {
            continue;
        }
        if config.as_ref().is_some_and(QueueConfig::in_lanes) {
            let pair = (queue.as_str(), name.as_str());
            let (lanes, shallower) =
                read_lanes_of(conn, &mut admission, pair, now, limit, shallow).await?;
            sequences.push(round_robin(lanes));
            cut.push(shallower.then_some(queue));
        } else {
            sequences
                .push(read_pair(conn, &mut admission, &queue, &name, now, limit, false).await?);
            cut.push(None);
        }
    }
    let mut left: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let from: HashMap<i64, usize> = sequences
        .iter()
        .enumerate()
        .flat_map(|(i, sequence)| sequence.iter().map(move |c| (c.order.seq, i)))
        .collect();
    let mut admitted = Vec::new();
    for candidate in merge(sequences) {
        if admitted.len() == limit {
            break;
        }
        let i = from.get(&candidate.order.seq).copied().unwrap_or_default();
        if admission.admit(&candidate) {
            admitted.push(candidate);
        }
        left[i] = left[i].saturating_sub(1);
        if left[i] == 0
            && admitted.len() < limit
            && let Some(queue) = &cut[i]
            && admission.lane_open(queue, None)
        {
            return Ok(None);
        }
    }
    Ok(Some((admission, admitted)))
}

/// The running slots admitted jobs hold that the admission did not count: the queue and tenant
/// gates of a job whose queue has no config (its admission passed only its key gate). Counted
/// there too, so a counted job (`flow_counted`) holds a slot in every gate of its
/// [`held_gates`](dispatch_core::flow::held_gates), which is what the release trigger gives
/// back. The memory store counts such a job in its queue's gates only when the queue gets its
/// first config; the counts anyone can read are the same (a queue without a config shows no
/// count, and its first config does not count a job that is counted already).
fn uncounted_slots(admission: &Admission, admitted: &[Candidate]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for job in admitted.iter().filter(|job| admission.config(&job.queue).is_none()) {
        *counts.entry(queue_gate(&job.queue)).or_insert(0) += 1;
        if let Some(tenant) = &job.tenant {
            *counts.entry(tenant_gate(&job.queue, tenant)).or_insert(0) += 1;
        }
    }
    counts
}

/// Lease the admitted jobs as the plain claim does (running, attempt spent, cancel flag
/// cleared), marked counted; answered in admission order.
async fn lease_admitted(
    conn: &mut SqliteConnection,
    request: &ClaimRequest,
    admitted: &[Candidate],
    now: Timestamp,
) -> Result<Vec<JobRow>> {
    let seqs: Vec<i64> = admitted.iter().map(|c| c.order.seq).collect();
    let json = serde_json::to_string(&seqs).map_err(internal)?;
    let rows = sqlx::query(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
         lease_token = ?, lease_expires = ?, cancel_requested = 0, flow_counted = 1 \
         WHERE seq IN (SELECT value FROM json_each(?)) AND state = 'available' RETURNING *",
    )
    .bind(request.worker.to_string())
    .bind(token_text(request.token))
    .bind((now + request.lease_ttl).as_unix_micros())
    .bind(json)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    if rows.len() != admitted.len() {
        return Err(internal("a gated claim's admitted job was not available"));
    }
    let place: HashMap<i64, usize> = seqs.iter().enumerate().map(|(i, seq)| (*seq, i)).collect();
    let mut rows = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    rows.sort_by_key(|r| place.get(&r.seq).copied());
    Ok(rows)
}

/// The lanes of a (queue, name) pair read in lanes: each open tenant lane's best due jobs with an
/// open key gate, then the lane of jobs without a tenant; each at most `limit`, or its share of
/// it when `shallow` (see [`admit`]). Answers the lanes and whether they are shallower than a
/// full read (a lane was cut at its share).
async fn read_lanes_of(
    conn: &mut SqliteConnection,
    admission: &mut Admission,
    (queue, name): (&str, &str),
    now: Timestamp,
    limit: usize,
    shallow: bool,
) -> Result<(Vec<Vec<Candidate>>, bool)> {
    let rows = sqlx::query(TENANTS).bind(queue).bind(name).fetch_all(&mut *conn).await;
    let mut open = Vec::new();
    for row in rows.map_err(db_error)? {
        let tenant: String = row.try_get(0).map_err(db_error)?;
        let running: Option<i64> = row.try_get(1).map_err(db_error)?;
        let tat: Option<i64> = row.try_get(2).map_err(db_error)?;
        let state = gate_state(running.unwrap_or(0), tat.unwrap_or(0));
        admission.know(tenant_gate(queue, &tenant), state);
        if admission.lane_open(queue, Some(&tenant)) {
            open.push(tenant);
        }
    }
    let share = if shallow { limit.div_ceil(open.len() + 1).max(1) } else { limit };
    let mut lanes = read_tenant_lanes(conn, admission, (queue, name), &open, now, share).await?;
    lanes.push(read_pair(conn, admission, queue, name, now, share, true).await?);
    let shallower = share < limit && lanes.iter().any(|lane| lane.len() == share);
    Ok((lanes, shallower))
}

/// The open tenant lanes `open` of a (queue, name) pair, each its best due jobs with an open key
/// gate, at most `limit`.
async fn read_tenant_lanes(
    conn: &mut SqliteConnection,
    admission: &mut Admission,
    (queue, name): (&str, &str),
    open: &[String],
    now: Timestamp,
    limit: usize,
) -> Result<Vec<Vec<Candidate>>> {
    let mut first = read_lanes(conn, queue, name, open, now, limit).await?;
    let mut lanes = Vec::with_capacity(open.len() + 1);
    for tenant in open {
        let reads = first.remove(tenant.as_str()).unwrap_or_default();
        let full = reads.len() == limit;
        let (mut kept, skipped) = open_candidates(admission, reads, limit);
        if skipped && full {
            // Full keys skipped some of the first `limit`: read on, up to the scan limit.
            let one = std::slice::from_ref(tenant);
            let mut again = read_lanes(conn, queue, name, one, now, LANE_SCAN_LIMIT).await?;
            let reads = again.remove(tenant.as_str()).unwrap_or_default();
            kept = open_candidates(admission, reads, limit).0;
        }
        lanes.push(kept);
    }
    Ok(lanes)
}

/// Up to `take` due jobs of each of the tenant lanes `tenants` of a (queue, name) pair, each
/// lane in claim order: one statement.
async fn read_lanes(
    conn: &mut SqliteConnection,
    queue: &str,
    name: &str,
    tenants: &[String],
    now: Timestamp,
    take: usize,
) -> Result<HashMap<String, Vec<Read>>> {
    let mut lanes: HashMap<String, Vec<Read>> = HashMap::new();
    if tenants.is_empty() {
        return Ok(lanes);
    }
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let rows = sqlx::query(sqlx::AssertSqlSafe(tenant_lanes_sql()))
        .bind(json_list(tenants.iter().map(String::as_str))?)
        .bind(queue)
        .bind(name)
        .bind(now.as_unix_micros())
        .bind(sql_limit(take))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    for row in &rows {
        let read = read_row(row, queue, name)?;
        let tenant = read.candidate.tenant.clone().unwrap_or_default();
        lanes.entry(tenant).or_default().push(read);
    }
    // The index search gives each lane's jobs by `seq`: put them in claim order.
    for lane in lanes.values_mut() {
        lane.sort_by_key(|read| read.candidate.order);
    }
    Ok(lanes)
}

/// The due jobs of a (queue, name) pair in claim order with an open key gate, at most `limit`
/// (only those without a tenant when `untenanted`, the last lane of a queue read in lanes),
/// reading at most [`LANE_SCAN_LIMIT`] entries of the claim index.
async fn read_pair(
    conn: &mut SqliteConnection,
    admission: &mut Admission,
    queue: &str,
    name: &str,
    now: Timestamp,
    limit: usize,
    untenanted: bool,
) -> Result<Vec<Candidate>> {
    // Jobs without a tenant sit among the tenants' jobs in the claim index: read up to the scan
    // limit of entries for them from the start.
    let scan = if untenanted { LANE_SCAN_LIMIT } else { limit };
    let reads = pair_reads(conn, queue, name, now, scan, untenanted, limit).await?;
    let full = reads.len() == limit;
    let (kept, skipped) = open_candidates(admission, reads, limit);
    if !(skipped && full) {
        return Ok(kept);
    }
    // Full keys skipped some of the first `limit`: read on, up to the scan limit.
    let reads =
        pair_reads(conn, queue, name, now, LANE_SCAN_LIMIT, untenanted, LANE_SCAN_LIMIT).await?;
    Ok(open_candidates(admission, reads, limit).0)
}

async fn pair_reads(
    conn: &mut SqliteConnection,
    queue: &str,
    name: &str,
    now: Timestamp,
    scan: usize,
    untenanted: bool,
    take: usize,
) -> Result<Vec<Read>> {
    // Safe: the text holds only fixed SQL and placeholders; values are bound.
    let rows = sqlx::query(sqlx::AssertSqlSafe(pair_sql()))
        .bind(queue)
        .bind(name)
        .bind(now.as_unix_micros())
        .bind(sql_limit(scan))
        .bind(i64::from(untenanted))
        .bind(sql_limit(take))
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    rows.iter().map(|row| read_row(row, queue, name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;

    /// The plans of the gated claim's reads on a freshly migrated store: the tenant skip scan
    /// and the lanes search `jobs_claim_tenant` (one search per step or tenant, never a scan of
    /// jobs, no sort), and a pair's read searches the claim index.
    #[tokio::test]
    async fn lane_reads_search_the_tenant_index() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("plans.db").to_str().unwrap()).await.unwrap();
        let mut conn = store.writer.lock().await;
        let mut plan_of = async |sql: &str| {
            let sql = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
            let rows = sqlx::query(sql).fetch_all(&mut *conn).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
            plan.join("\n")
        };
        let tenants = plan_of(TENANTS).await;
        assert_eq!(
            tenants.matches("SEARCH jobs USING COVERING INDEX jobs_claim_tenant").count()
                + tenants.matches("SEARCH jobs USING INDEX jobs_claim_tenant").count(),
            2,
            "{tenants}"
        );
        assert!(tenants.contains("scope_tenant>?"), "{tenants}");
        assert!(!tenants.contains("SCAN jobs") && !tenants.contains("TEMP B-TREE"), "{tenants}");
        let lanes = plan_of(&tenant_lanes_sql()).await;
        assert!(lanes.contains("INDEX jobs_claim_tenant (queue=? AND name=? AND scope_tenant=?"));
        assert!(!lanes.contains("SCAN jobs") && !lanes.contains("TEMP B-TREE"), "{lanes}");
        let pair = plan_of(&pair_sql()).await;
        assert!(pair.contains("INDEX jobs_claim (queue=? AND name=?"), "{pair}");
        assert!(!pair.contains("SCAN jobs"), "{pair}");
    }
}
