//! Every statement the store runs, built once per store for its schema.
//!
//! Templates name the schema `{s}` (replaced by the quoted, validated schema name) and the store's
//! clock `{now}`: parameter `$1`, an injected clock's time in microseconds, or NULL to read the
//! database clock. Each statement resolves `{now}` once, in a `t` CTE, so one statement sees one
//! time. Sums of a time and a duration saturate at `i64::MAX`, like `Timestamp + Duration`
//! (and are NULL for a NULL duration).

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::workflow_sql::WorkflowQueries;

/// The store's now: the injected clock's time (`$1`) or the database's transaction time, in
/// microseconds since the epoch.
const NOW: &str = "coalesce($1::bigint, (extract(epoch from now()) * 1000000)::bigint)";

/// A new UUIDv7 made by the database (PostgreSQL 15 has no `uuidv7()`): milliseconds since the
/// epoch in the first 48 bits, version 7, random rest. DLQ IDs are made this way so keyset
/// pagination of the DLQ follows the order entries were written.
const UUID_V7: &str = "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing \
     substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) \
     from 1 for 6), 52, 1), 53, 1), 'hex')::uuid";

/// The columns of a job row, as `row::job_from_row` reads them (alias `j`).
const JOB_COLUMNS: &str = "j.id, j.seq, j.name, j.queue, j.payload, j.priority, j.state, \
     j.attempt, j.max_attempts, j.timeout_us, j.run_at, j.created_at, j.finished_at, \
     j.unique_key, j.scope_app, j.scope_tenant, j.lease_owner, j.lease_token, j.lease_expires, \
     j.cancel_requested, j.errors::text AS errors, j.dlq_id";

/// The columns of a DLQ row, as `row::dlq_from_row` reads them (alias `d`).
const DLQ_COLUMNS: &str = "d.id, d.job_id, d.name, d.queue, d.payload, d.priority, d.attempts, \
     d.max_attempts, d.timeout_us, d.scope_app, d.scope_tenant, d.errors::text AS errors, \
     d.failed_at, d.replayed_as, d.replayed_at";

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
const DRIVE_DEATH: &str = "failed_runs AS (UPDATE {s}.runs r SET state = 'failed', \
       error = coalesce(u.errors -> -1 ->> 'message', 'the drive job died'), \
       updated_at = u.finished_at, finished_at = u.finished_at \
       FROM upd u WHERE u.state = 'dead' AND r.drive_job = u.id \
       AND r.state IN ('running', 'suspended')), \
     dropped_waits AS (DELETE FROM {s}.event_waits w USING upd u, {s}.runs r \
       WHERE u.state = 'dead' AND r.drive_job = u.id AND w.run_id = r.id)";

/// Store a batch. `$2..$15` are the batch's columns (one array each, in batch order); items
/// with `candidate = false` (repeats of a unique key within the batch) are not inserted. An item
/// whose ID is stored with its name and payload (a retried enqueue, answered `retried`) is not
/// inserted; nothing is inserted when any ID is stored with another name or payload (`clash`).
/// A key held by a live job or within its window is not inserted; the live-holder unique index
/// settles concurrent enqueues.
const ENQUEUE: &str = "WITH t AS (SELECT {now} AS now), \
     i AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::int4[], \
       $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::int8[], $13::text[], \
       $14::text[], $15::bool[]) WITH ORDINALITY AS i(id, name, queue, payload, priority, \
       run_abs, run_delay, max_attempts, timeout_us, unique_key, unique_window, scope_app, \
       scope_tenant, candidate, ord)), \
     stored AS (SELECT j.id, (j.name <> i.name OR j.payload <> i.payload) AS reused \
       FROM {s}.jobs j JOIN i ON i.id = j.id), \
     clash AS (SELECT stored.id FROM stored WHERE stored.reused LIMIT 1), \
     ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, unique_key, unique_until, scope_app, \
       scope_tenant) \
       SELECT i.id, i.name, i.queue, i.payload, i.priority, 'available', 0, i.max_attempts, \
       i.timeout_us, coalesce(i.run_abs, {sat(t.now, i.run_delay)}), t.now, i.unique_key, \
       {sat(t.now, i.unique_window)}, i.scope_app, i.scope_tenant FROM i CROSS JOIN t \
       WHERE i.candidate AND NOT EXISTS (SELECT 1 FROM clash) \
       AND NOT EXISTS (SELECT 1 FROM stored WHERE stored.id = i.id) \
       AND (i.unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.jobs h \
         WHERE h.name = i.name AND h.unique_key = i.unique_key \
         AND (h.state IN ('available', 'running') OR h.unique_until > t.now))) \
       ORDER BY i.ord \
       ON CONFLICT (name, unique_key) \
         WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING \
       RETURNING id, queue), \
     woke AS (SELECT pg_notify($16, CASE WHEN count(DISTINCT queue) = 1 THEN min(queue) \
       ELSE '' END) FROM ins HAVING count(*) > 0) \
     SELECT (SELECT id FROM clash) AS clash, array(SELECT id FROM ins) AS created, \
       array(SELECT stored.id FROM stored) AS retried, (SELECT count(*) FROM woke) AS notified";

/// The job holding each `(name, key)` of `$2`/`$3` now, newest first.
const HOLDERS: &str = "SELECT DISTINCT ON (k.name, k.key) k.name, k.key, h.id \
     FROM unnest($2::text[], $3::text[]) AS k(name, key) \
     JOIN {s}.jobs h ON h.name = k.name AND h.unique_key = k.key \
       AND (h.state IN ('available', 'running') OR h.unique_until > {now}) \
     ORDER BY k.name, k.key, h.seq DESC";

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
/// `claim_mark`); only when those ranges can not fill the batch are the hinted levels read
/// below their hints too (`below`), so a claim comes back short only when nothing else is due.
///
/// Planned once per session (a generic plan: claims run on sessions of their own that plan
/// once, see `Shared::hot`), so nothing in its plan
/// may hinge on the parameters' values: the picked rows are updated by primary key through an
/// array, a plan that stays an index lookup whatever row count the planner guesses (joined to
/// `picked`, a generic plan guesses millions and hashes the whole table).
///
/// The claim commits asynchronously ([`ASYNC_COMMIT`]): a claim lost to a server crash leaves
/// its jobs available, so they run again, as after any lost lease (at least once); the attempt's
/// finish, a durable commit, flushes the claim's WAL record with its own.
const CLAIM: &str = "WITH RECURSIVE t AS (SELECT {now} AS now, {async_commit} AS async_commit), \
     pairs AS (SELECT DISTINCT u.q, v.n FROM unnest($2::text[]) AS u(q) \
       CROSS JOIN unnest($3::text[]) AS v(n)), \
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
       ORDER BY c.priority DESC, c.run_at, c.seq LIMIT $4) \
     UPDATE {s}.jobs j SET state = 'running', attempt = j.attempt + 1, lease_owner = $5, \
       lease_token = $7, lease_expires = {sat(t.now, $6)}, \
       cancel_requested = false \
     FROM t WHERE j.id = ANY (ARRAY(SELECT id FROM picked)) \
     RETURNING {job_columns}";

/// `synchronous_commit = off` for the rest of the statement's transaction (`SET LOCAL`): its
/// commit returns without waiting for the WAL flush, a fsync saved. Only for writes whose loss in
/// a server crash loses nothing promised: the next durable commit on the server flushes them.
const ASYNC_COMMIT: &str = "set_config('synchronous_commit', 'off', true)";

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

/// Extend the leases `$2`/`$3` (job, token) to now + `$4` µs, locking rows in ID order.
const HEARTBEAT: &str = "WITH t AS (SELECT {now} AS now), \
     i AS (SELECT * FROM unnest($2::uuid[], $3::uuid[]) AS i(job_id, token)), \
     locked AS (SELECT j.id FROM {s}.jobs j JOIN i ON i.job_id = j.id AND i.token = j.lease_token \
       WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j) \
     UPDATE {s}.jobs j SET lease_expires = {sat(t.now, $4)} FROM locked l, t WHERE j.id = l.id \
     RETURNING j.id, j.lease_token, j.cancel_requested";

/// Cancel job `$2`: at once when available, as a request when running. When it drives a run
/// that has not ended, the run's cancel is requested instead (reason `$3`, kept when one is
/// recorded; a waiting drive job due at once, woken on channel `$4`), as `CANCEL_RUN` does and
/// locking the rows in its order (job, then run); the job is left alone (`run_cancel`). No row
/// when the job is not available or running.
const REQUEST_CANCEL: &str = "WITH t AS (SELECT {now} AS now), \
     job AS (SELECT j.id, j.state FROM {s}.jobs j WHERE j.id = $2 \
       AND j.state IN ('available', 'running') FOR UPDATE OF j), \
     run AS (SELECT x.id, x.cancel_reason FROM {s}.runs x JOIN job ON x.drive_job = job.id \
       WHERE x.state NOT IN ('completed', 'failed', 'cancelled') FOR UPDATE OF x), \
     marked AS (UPDATE {s}.runs x SET cancel_reason = $3, updated_at = t.now FROM run, t \
       WHERE x.id = run.id AND run.cancel_reason IS NULL), \
     due AS (UPDATE {s}.jobs j SET run_at = least(j.run_at, t.now) FROM job, run, t \
       WHERE j.id = job.id AND job.state = 'available' RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, due.queue) FROM due), \
     upd AS (UPDATE {s}.jobs j SET \
       state = CASE WHEN j.state = 'available' THEN 'cancelled' ELSE j.state END, \
       finished_at = CASE WHEN j.state = 'available' THEN t.now ELSE j.finished_at END, \
       cancel_requested = (j.state = 'running') \
     FROM t, job WHERE j.id = job.id AND NOT EXISTS (SELECT 1 FROM run) RETURNING j.state) \
     SELECT (SELECT upd.state FROM upd) AS state, EXISTS (SELECT 1 FROM run) AS run_cancel, \
       (SELECT count(*) FROM woke) AS notified FROM job";

/// The state of job `$1`.
const JOB_STATE: &str = "SELECT j.state FROM {s}.jobs j WHERE j.id = $1";

/// Reclaim up to `$2` expired leases (skipping rows others hold), with a `LeaseExpired` error
/// each: cancelled after a cancel request, else available with attempts left, else dead with a
/// DLQ entry written (and its workflow run failed) in this statement.
const RESCUE: &str = "WITH t AS (SELECT {now} AS now), \
     expired AS (SELECT j.id, j.lease_expires, j.seq FROM {s}.jobs j \
       WHERE j.state = 'running' AND j.lease_expires <= (SELECT now FROM t) \
       ORDER BY j.lease_expires, j.seq LIMIT $2 FOR UPDATE SKIP LOCKED), \
     upd AS (UPDATE {s}.jobs j SET \
       state = CASE WHEN j.cancel_requested THEN 'cancelled' \
         WHEN j.attempt < j.max_attempts THEN 'available' ELSE 'dead' END, \
       run_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts THEN t.now \
         ELSE j.run_at END, \
       finished_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts THEN NULL \
         ELSE t.now END, \
       errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, \
         'kind', 'lease_expired', 'message', \
         coalesce('lease held by ' || j.lease_owner || ' expired', 'lease expired'), \
         'at', t.now)), \
       dlq_id = CASE WHEN NOT j.cancel_requested AND j.attempt >= j.max_attempts \
         THEN {uuid_v7} END, \
       lease_owner = NULL, lease_token = NULL, lease_expires = NULL, cancel_requested = false \
       FROM expired e, t WHERE j.id = e.id \
       RETURNING j.id, j.name, j.queue, j.payload, j.priority, j.attempt, j.max_attempts, \
       j.timeout_us, j.scope_app, j.scope_tenant, j.errors, j.finished_at, j.state, j.dlq_id, \
       e.lease_expires AS expired_at, e.seq), \
     dead AS ({dead_copy}), \
     {drive_death}, \
     woke AS ({woke}) \
     SELECT u.id, u.state, u.dlq_id, u.expired_at, u.seq, (SELECT count(*) FROM woke) AS notified \
     FROM upd u";

/// Microseconds until the earliest available job of queues `$2` and names `$3` is due (0 when
/// one is due now); NULL when none waits. One index probe per (queue, name) pair.
const NEXT_DUE: &str = "SELECT CASE WHEN min(d.run_at) IS NOT NULL \
       THEN greatest(min(d.run_at) - {now}, 0) END AS wait \
     FROM (SELECT DISTINCT q FROM unnest($2::text[]) AS u(q)) qs \
     CROSS JOIN (SELECT DISTINCT n FROM unnest($3::text[]) AS u(n)) ns \
     CROSS JOIN LATERAL (SELECT j.run_at FROM {s}.jobs j WHERE j.state = 'available' \
       AND ARRAY[j.queue, j.name] = ARRAY[qs.q, ns.n] ORDER BY j.run_at LIMIT 1) d";

const GET_JOB: &str = "SELECT {job_columns} FROM {s}.jobs j WHERE j.id = $1";

const LIST_JOBS: &str = "SELECT {job_columns} FROM {s}.jobs j \
     WHERE ($1::uuid IS NULL OR j.id > $1) AND ($2::text IS NULL OR j.state = $2) \
     AND ($3::text IS NULL OR j.queue = $3) AND ($4::text IS NULL OR j.name = $4) \
     ORDER BY j.id LIMIT $5";

const COUNT_JOBS: &str = "SELECT j.queue, j.state, count(*) AS n FROM {s}.jobs j \
     GROUP BY j.queue, j.state";

const GET_DLQ: &str = "SELECT {dlq_columns} FROM {s}.dlq d WHERE d.id = $1";

const LIST_DLQ: &str = "SELECT {dlq_columns} FROM {s}.dlq d \
     WHERE ($1::uuid IS NULL OR d.id > $1) AND ($2::text IS NULL OR d.queue = $2) \
     AND ($3::text IS NULL OR d.name = $3) \
     AND ($4::bool IS NULL OR (d.replayed_as IS NOT NULL) = $4) ORDER BY d.id LIMIT $5";

/// Replay entry `$2` as job `$3`, at most once: the entry row is locked, and a replayed entry
/// inserts nothing.
const REPLAY_DLQ: &str = "WITH t AS (SELECT {now} AS now), \
     e AS (SELECT d.* FROM {s}.dlq d WHERE d.id = $2 FOR UPDATE), \
     ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, scope_app, scope_tenant) \
       SELECT $3, e.name, e.queue, e.payload, e.priority, 'available', 0, e.max_attempts, \
       e.timeout_us, t.now, t.now, e.scope_app, e.scope_tenant FROM e, t \
       WHERE e.replayed_as IS NULL RETURNING id, queue), \
     mark AS (UPDATE {s}.dlq d SET replayed_as = ins.id, replayed_at = t.now FROM ins, t \
       WHERE d.id = $2 RETURNING d.id), \
     woke AS (SELECT pg_notify($4, ins.queue) FROM ins) \
     SELECT e.replayed_as, (SELECT id FROM ins) AS created, (SELECT count(*) FROM mark) AS marked, \
       (SELECT count(*) FROM woke) AS notified FROM e";

const PURGE_DLQ: &str = "DELETE FROM {s}.dlq d WHERE ($1::text IS NULL OR d.queue = $1) \
     AND ($2::text IS NULL OR d.name = $2) AND ($3::bigint IS NULL OR d.failed_at < $3) \
     AND ($4::bool IS NULL OR (d.replayed_as IS NOT NULL) = $4)";

/// The statements of one store, for its schema. Cheap to clone a statement out of (shared text).
#[derive(Debug)]
pub(crate) struct Queries {
    pub enqueue: SqlStr,
    pub holders: SqlStr,
    pub claim: SqlStr,
    pub finish: SqlStr,
    pub last_finish: SqlStr,
    pub heartbeat: SqlStr,
    pub request_cancel: SqlStr,
    pub job_state: SqlStr,
    pub rescue: SqlStr,
    pub next_due: SqlStr,
    pub get_job: SqlStr,
    pub list_jobs: SqlStr,
    pub count_jobs: SqlStr,
    pub get_dlq: SqlStr,
    pub list_dlq: SqlStr,
    pub replay_dlq: SqlStr,
    pub purge_dlq: SqlStr,
    /// The workflow statements.
    pub wf: WorkflowQueries,
}

impl Queries {
    /// The statements for the schema named by `quoted`, a validated, double-quoted identifier.
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| build(template, quoted);
        Self {
            enqueue: build(ENQUEUE),
            holders: build(HOLDERS),
            claim: build(CLAIM),
            finish: build(&FINISH.replace("{woke}", &WOKE.replace("$chan", "$9"))),
            last_finish: build(LAST_FINISH),
            heartbeat: build(HEARTBEAT),
            request_cancel: build(REQUEST_CANCEL),
            job_state: build(JOB_STATE),
            rescue: build(&RESCUE.replace("{woke}", &WOKE.replace("$chan", "$3"))),
            next_due: build(NEXT_DUE),
            get_job: build(GET_JOB),
            list_jobs: build(LIST_JOBS),
            count_jobs: build(COUNT_JOBS),
            get_dlq: build(GET_DLQ),
            list_dlq: build(LIST_DLQ),
            replay_dlq: build(REPLAY_DLQ),
            purge_dlq: build(PURGE_DLQ),
            wf: WorkflowQueries::new(build),
        }
    }
}

/// `template` as a statement for the schema named by `quoted` (a validated, double-quoted
/// identifier): placeholders expanded, `{now}` and `{s}` last.
pub(crate) fn build(template: &str, quoted: &str) -> SqlStr {
    let sql = expand_sat(template)
        .replace("{dead_copy}", DEAD_COPY)
        .replace("{drive_death}", DRIVE_DEATH)
        .replace("{job_columns}", JOB_COLUMNS)
        .replace("{dlq_columns}", DLQ_COLUMNS)
        .replace("{uuid_v7}", UUID_V7)
        .replace("{async_commit}", ASYNC_COMMIT)
        .replace("{now}", NOW)
        .replace("{s}", quoted);
    // Safe: fixed text and a schema name checked against [a-z_][a-z0-9_]*.
    AssertSqlSafe(sql).into_sql_str()
}

/// Replace each `{sat(a, b)}` with `a + b` computed exactly and saturated at `i64::MAX`.
fn expand_sat(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{sat(") {
        out.push_str(&rest[..start]);
        let args_start = start + "{sat(".len();
        let Some(len) = rest[args_start..].find(")}") else { break };
        let args = &rest[args_start..args_start + len];
        let (a, b) = args.split_once(',').unwrap_or((args, "0"));
        let sum = format!("({}::numeric + {})", a.trim(), b.trim());
        // Not LEAST: it ignores NULLs, and a NULL duration must give a NULL time.
        out.push_str(&format!(
            "(CASE WHEN {sum} > {MAX} THEN {MAX} ELSE {sum}::bigint END)",
            MAX = i64::MAX
        ));
        rest = &rest[args_start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sat_expands_every_occurrence() {
        let sql = expand_sat("a {sat(t.now, $6)} b {sat(x, y)} c");
        let max = "9223372036854775807";
        assert_eq!(
            sql,
            format!(
                "a (CASE WHEN (t.now::numeric + $6) > {max} THEN {max} \
                 ELSE (t.now::numeric + $6)::bigint END) b \
                 (CASE WHEN (x::numeric + y) > {max} THEN {max} ELSE (x::numeric + y)::bigint END) c"
            )
        );
    }

    #[test]
    fn no_placeholder_is_left() {
        let q = Queries::new("\"dispatch\"");
        for sql in [&q.enqueue, &q.claim, &q.finish, &q.rescue, &q.replay_dlq, &q.next_due] {
            assert!(!sql.as_str().contains('{'), "{}", sql.as_str());
            assert!(!sql.as_str().contains("$chan"), "{}", sql.as_str());
        }
        assert!(q.claim.as_str().contains("\"dispatch\".jobs"));
    }
}
