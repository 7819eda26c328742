//! The workflow statements, built once per store beside the job statements of [`crate::sql`]
//! (same placeholders: `{s}` the schema, `{now}` the store's clock from `$1`, `{sat(a, b)}`).
//!
//! Fenced statements (a drive's calls) take `$2` the drive job, `$3` the lease token and `$4` the
//! run, and start with [`FENCE`]: the job row is locked `FOR UPDATE` only while that lease holds
//! it, so nothing can finish, rescue or re-claim the job until the statement commits, and every
//! write joins `ok`, which is empty when the lease does not hold the run's drive job. They answer
//! `found` (the run exists) and `held` (the fence held).

use sqlx::SqlStr;

/// The fence of a drive's call; see the module docs.
const FENCE: &str = "lock AS (SELECT j.id FROM {s}.jobs j WHERE j.id = $2 AND j.state = 'running' \
       AND j.lease_token = $3 FOR UPDATE), \
     r AS (SELECT x.* FROM {s}.runs x WHERE x.id = $4), \
     ok AS (SELECT r.* FROM r JOIN lock l ON l.id = r.drive_job)";

/// What every fenced statement answers.
const FENCED: &str = "EXISTS (SELECT 1 FROM r) AS found, EXISTS (SELECT 1 FROM ok) AS held";

/// The columns of a run row, as `row::run_from_row` reads them (alias `r`).
const RUN_COLUMNS: &str = "r.id, r.name, r.version, r.state, r.input, r.output, r.error, \
     r.scope_app, r.scope_tenant, r.idempotency_key, r.parent, r.drive_job, r.created_at, \
     r.updated_at, r.finished_at, r.cancel_reason";

/// A run's checkpoints (alias `c`) as three arrays in write order, as
/// `row::checkpoints_from_row` reads them.
const CHECKPOINT_ARRAYS: &str = "coalesce(array_agg(c.key ORDER BY c.seq), '{}') AS ck_keys, \
     coalesce(array_agg(c.data ORDER BY c.seq), '{}') AS ck_data, \
     coalesce(array_agg(c.at ORDER BY c.seq), '{}') AS ck_at";

/// Start a run (`$2..$9`) and its drive job (`$10..$22`, as one enqueue item) unless the run
/// is stored with this name, input and drive job (`same`: a retried start, nothing changes), the
/// run's (name, idempotency key) is taken (`existing`), its or the job's ID is (`clash`), or the
/// job's unique key is held (`held`). A concurrent start of the same key makes the run insert do
/// nothing (the partial unique index settles it) and so the job insert too; any other concurrent
/// clash is a unique violation that rolls everything back. One NOTIFY (`$23`) for the job.
const START_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     same AS (SELECT x.id FROM {s}.runs x WHERE x.id = $2 AND x.name = $3 AND x.input = $5 \
       AND x.drive_job = $10), \
     existing AS (SELECT x.id FROM {s}.runs x WHERE $8::text IS NOT NULL AND x.name = $3 \
       AND x.idempotency_key = $8), \
     clash AS (SELECT 'run' AS what FROM {s}.runs x WHERE x.id = $2 \
       AND NOT EXISTS (SELECT 1 FROM same) \
       UNION ALL SELECT 'job' FROM {s}.jobs j WHERE j.id = $10 \
       AND NOT EXISTS (SELECT 1 FROM same)), \
     held AS (SELECT h.id FROM {s}.jobs h, t WHERE $19::text IS NOT NULL AND h.name = $11 \
       AND h.unique_key = $19 AND (h.state IN ('available', 'running') OR h.unique_until > t.now) \
       ORDER BY h.seq DESC LIMIT 1), \
     run_ins AS (INSERT INTO {s}.runs (id, name, version, state, input, scope_app, scope_tenant, \
       idempotency_key, parent, drive_job, created_at, updated_at) \
       SELECT $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10, t.now, t.now FROM t \
       WHERE NOT EXISTS (SELECT 1 FROM same) AND NOT EXISTS (SELECT 1 FROM existing) \
       AND NOT EXISTS (SELECT 1 FROM clash) AND NOT EXISTS (SELECT 1 FROM held) \
       ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
       RETURNING id), \
     job_ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, unique_key, unique_until, scope_app, \
       scope_tenant) \
       SELECT $10, $11, $12, $13, $14, 'available', 0, $17, $18, \
       coalesce($15, {sat(t.now, $16)}), t.now, $19, {sat(t.now, $20)}, $21, $22 \
       FROM run_ins, t RETURNING queue), \
     woke AS (SELECT pg_notify($23, queue) FROM job_ins) \
     SELECT (SELECT id FROM same) AS same, (SELECT id FROM existing) AS existing, \
       (SELECT max(what) FROM clash) AS clash, \
       (SELECT id FROM held) AS held, (SELECT id FROM run_ins) AS created, \
       (SELECT count(*) FROM woke) AS notified";

/// The run of a (name `$1`, idempotency key `$2`), read after a start lost the race for it.
const RUN_BY_KEY: &str = "SELECT x.id FROM {s}.runs x WHERE x.name = $1 AND x.idempotency_key = $2";

const GET_RUN: &str = "SELECT {run_columns} FROM {s}.runs r WHERE r.id = $1";

const LIST_RUNS: &str = "SELECT {run_columns} FROM {s}.runs r \
     WHERE ($1::uuid IS NULL OR r.id > $1) AND ($2::text IS NULL OR r.state = $2) \
     AND ($3::text IS NULL OR r.name = $3) ORDER BY r.id LIMIT $4";

/// Run `$1`'s checkpoints; no row for an unknown run.
const CHECKPOINTS: &str = "SELECT ck.* FROM {s}.runs r CROSS JOIN LATERAL \
     (SELECT {checkpoint_arrays} FROM {s}.checkpoints c WHERE c.run_id = r.id) ck \
     WHERE r.id = $1";

/// Fenced: the run and its checkpoints; a suspended run becomes running (`flipped_at`). No row
/// for an unknown run.
const LOAD_RUN: &str = "WITH t AS (SELECT {now} AS now), {fence}, \
     flip AS (UPDATE {s}.runs x SET state = 'running', updated_at = t.now FROM ok, t \
       WHERE x.id = ok.id AND x.state = 'suspended' RETURNING x.updated_at) \
     SELECT {run_columns}, EXISTS (SELECT 1 FROM ok) AS held, \
       (SELECT updated_at FROM flip) AS flipped_at, (SELECT now FROM t) AS store_now, ck.* \
     FROM r CROSS JOIN LATERAL (SELECT {checkpoint_arrays} FROM {s}.checkpoints c \
       WHERE c.run_id = r.id AND EXISTS (SELECT 1 FROM ok)) ck";

/// [`LOAD_RUN`] without a lock or a write, for a run that is not suspended (nothing to flip):
/// the fence is read in the statement's snapshot (`held`), as the locking one reads it, but
/// the transaction stays read-only, so its commit waits for no WAL flush. A suspended run
/// (`state`) is loaded again by [`LOAD_RUN`]. No row for an unknown run.
const READ_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     lease AS (SELECT j.id FROM {s}.jobs j WHERE j.id = $2 AND j.state = 'running' \
       AND j.lease_token = $3), \
     r AS (SELECT x.* FROM {s}.runs x WHERE x.id = $4), \
     ok AS (SELECT r.id FROM r JOIN lease l ON l.id = r.drive_job) \
     SELECT {run_columns}, EXISTS (SELECT 1 FROM ok) AS held, (SELECT now FROM t) AS store_now, \
       ck.* \
     FROM r CROSS JOIN LATERAL (SELECT {checkpoint_arrays} FROM {s}.checkpoints c \
       WHERE c.run_id = r.id AND EXISTS (SELECT 1 FROM ok) AND r.state <> 'suspended') ck";

/// Fenced, for many drives at once (group commit, see `crate::checkpoint_batch`): writes
/// `$2..$7` (drive job, lease token, run, and for a run's end its state, output and error;
/// one write per run) and checkpoints `$8..$10` (run, key, data; keys distinct per run). Each
/// write happens only when its fence holds: its checkpoints upserted in order (a rewritten key
/// keeps its `seq`, its place in write order), or its run ended (its state; its output or
/// error, each kept when none is given; its update and finish times; its waits dropped). The
/// job rows are locked in ID order, so two batches committing at once can not deadlock. One row
/// per write: `run`, `found`, `held`.
const SAVE_CHECKPOINT_BATCH: &str = "WITH t AS (SELECT {now} AS now), \
     q AS (SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bytea[], \
       $7::text[]) AS q(job, token, run, state, output, error)), \
     lock AS (SELECT j.id FROM {s}.jobs j JOIN q ON q.job = j.id AND q.token = j.lease_token \
       WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j), \
     r AS (SELECT x.id, x.drive_job FROM {s}.runs x JOIN q ON q.run = x.id), \
     ok AS (SELECT r.id FROM r JOIN lock l ON l.id = r.drive_job), \
     ins AS (INSERT INTO {s}.checkpoints (run_id, key, data, at) \
       SELECT c.run, c.key, c.data, t.now FROM t, \
       unnest($8::uuid[], $9::text[], $10::bytea[]) WITH ORDINALITY AS c(run, key, data, ord) \
       WHERE c.run IN (SELECT id FROM ok) ORDER BY c.ord \
       ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at \
       RETURNING 1), \
     e AS (SELECT q.* FROM q JOIN ok ON ok.id = q.run WHERE q.state IS NOT NULL), \
     ended AS (UPDATE {s}.runs x SET state = e.state, output = coalesce(e.output, x.output), \
       error = coalesce(e.error, x.error), updated_at = t.now, finished_at = t.now FROM e, t \
       WHERE x.id = e.run), \
     dropped AS (DELETE FROM {s}.event_waits w USING e WHERE w.run_id = e.run) \
     SELECT q.run, EXISTS (SELECT 1 FROM r WHERE r.id = q.run) AS found, \
       EXISTS (SELECT 1 FROM ok WHERE ok.id = q.run) AS held, \
       (SELECT count(*) FROM ins) AS written \
     FROM q";

/// Fenced suspend. `$5` wake-at, `$6..$9` the waits (key, name, correlation, deadline) in order,
/// `$10` the channel. When one of the waits already has its checkpoint (`pre`: an event reached
/// a wait an earlier suspend registered while the run was being driven), nothing happens and
/// the answer is `delivered`. Else the first wait (in order) with an unexpired kept event of its name,
/// correlation and the run's scope takes the oldest one (`found`): the event is deleted and
/// written as that wait's checkpoint, and nothing else happens. Otherwise the run's waits become
/// exactly these (`stale`: earlier waits not listed are deleted; the last of a repeated key
/// wins; re-registering a key moves it to the back), the
/// run becomes suspended and the drive job is finished as a snooze until `$5`, exactly as
/// FINISH does it: attempt given back, lease cleared, the token recorded as the last finish,
/// cancelled instead when a cancel was requested (of the job). A run with a cancel request
/// (`cx`, its row locked after the fence, so a [`CANCEL_RUN`] either commits before and is seen
/// here or waits for this statement and then sees the drive job it left) does none of this
/// (`go` is empty): no event taken, no wait registered, nothing changed (`cancel_requested`).
const SUSPEND: &str = "WITH t AS (SELECT {now} AS now), {fence}, \
     cx AS (SELECT x.id, x.cancel_reason FROM {s}.runs x JOIN ok ON x.id = ok.id \
       FOR UPDATE OF x), \
     w AS (SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::int8[]) \
       WITH ORDINALITY AS w(key, name, correlation, deadline, ord)), \
     pre AS (SELECT 1 FROM ok JOIN cx ON cx.id = ok.id JOIN {s}.checkpoints c ON c.run_id = ok.id \
       JOIN w ON w.key = c.key WHERE cx.cancel_reason IS NULL LIMIT 1), \
     go AS (SELECT ok.* FROM ok JOIN cx ON cx.id = ok.id WHERE cx.cancel_reason IS NULL \
       AND NOT EXISTS (SELECT 1 FROM pre)), \
     found AS (SELECT w.key, k.seq FROM go CROSS JOIN t CROSS JOIN w CROSS JOIN LATERAL \
       (SELECT e.seq FROM {s}.kept_events e WHERE e.name = w.name \
         AND e.correlation = w.correlation AND e.scope_app IS NOT DISTINCT FROM go.scope_app \
         AND e.scope_tenant IS NOT DISTINCT FROM go.scope_tenant AND e.keep_until > t.now \
         ORDER BY e.seq LIMIT 1 FOR UPDATE SKIP LOCKED) k \
       ORDER BY w.ord LIMIT 1), \
     took AS (DELETE FROM {s}.kept_events e USING found f WHERE e.seq = f.seq \
       RETURNING f.key, e.payload), \
     delivered AS (INSERT INTO {s}.checkpoints (run_id, key, data, at) \
       SELECT $4, took.key, took.payload, t.now FROM took, t \
       ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at), \
     stale AS (DELETE FROM {s}.event_waits e USING go WHERE e.run_id = go.id \
       AND e.key <> ALL($6::text[]) AND NOT EXISTS (SELECT 1 FROM found)), \
     reg AS (INSERT INTO {s}.event_waits (run_id, key, name, correlation, scope_app, \
       scope_tenant, deadline) \
       SELECT go.id, d.key, d.name, d.correlation, go.scope_app, go.scope_tenant, d.deadline \
       FROM go, (SELECT DISTINCT ON (w.key) w.* FROM w ORDER BY w.key, w.ord DESC) d \
       WHERE NOT EXISTS (SELECT 1 FROM found) ORDER BY d.ord \
       ON CONFLICT (run_id, key) DO UPDATE SET seq = DEFAULT, name = excluded.name, \
       correlation = excluded.correlation, scope_app = excluded.scope_app, \
       scope_tenant = excluded.scope_tenant, deadline = excluded.deadline), \
     susp AS (UPDATE {s}.runs x SET state = 'suspended', updated_at = t.now FROM go, t \
       WHERE x.id = go.id AND NOT EXISTS (SELECT 1 FROM found)), \
     snooze AS (UPDATE {s}.jobs j SET \
       state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'available' END, \
       attempt = CASE WHEN j.cancel_requested THEN j.attempt \
         ELSE greatest(j.attempt - 1, 0) END, \
       run_at = CASE WHEN j.cancel_requested THEN j.run_at ELSE $5 END, \
       finished_at = CASE WHEN j.cancel_requested THEN t.now END, \
       dlq_id = NULL, lease_owner = NULL, lease_token = NULL, lease_expires = NULL, \
       cancel_requested = false, last_finish_token = j.lease_token \
       FROM go, t WHERE j.id = go.drive_job AND NOT EXISTS (SELECT 1 FROM found) \
       RETURNING j.state, j.queue), \
     woke AS (SELECT pg_notify($10, s.queue) FROM snooze s WHERE s.state = 'available') \
     SELECT {fenced}, EXISTS (SELECT 1 FROM took) OR EXISTS (SELECT 1 FROM pre) AS delivered, \
       (SELECT state FROM snooze) AS job_state, \
       EXISTS (SELECT 1 FROM cx WHERE cx.cancel_reason IS NOT NULL) AS cancel_requested, \
       (SELECT count(*) FROM woke) AS notified";

/// Fenced: the checkpoint of key `$5` (`data`), or else the wait of that key deleted
/// (`removed`). A publish delivering to that wait at the same moment holds its row: the delete
/// waits for it and then finds the row gone, while this statement's snapshot misses the
/// checkpoint it wrote; the caller reads [`CHECKPOINT_DATA`] again in that case.
const RESOLVE_WAIT: &str = "WITH t AS (SELECT {now} AS now), {fence}, \
     cp AS (SELECT c.data FROM {s}.checkpoints c, ok WHERE c.run_id = ok.id AND c.key = $5), \
     gone AS (DELETE FROM {s}.event_waits w USING ok WHERE w.run_id = ok.id AND w.key = $5 \
       AND NOT EXISTS (SELECT 1 FROM cp) RETURNING w.seq) \
     SELECT {fenced}, (SELECT data FROM cp) AS data, EXISTS (SELECT 1 FROM gone) AS removed";

/// The data of run `$1`'s checkpoint `$2`.
const CHECKPOINT_DATA: &str =
    "SELECT c.data FROM {s}.checkpoints c WHERE c.run_id = $1 AND c.key = $2";

/// Ask run `$2` to stop for reason `$3`; `$4` the channel. The drive job's row is locked first
/// (`job`), then the run's (`r`, waiting for it): the order of the fenced statements, so a
/// concurrent suspend either commits first (this statement then sees the drive job it left
/// available) or sees the reason. A run in a final state is left alone; else the reason is
/// recorded unless one is (`marked`), and an available drive job is made due now (`due`) with
/// one NOTIFY of its queue. Answers the run's `state` (no row: unknown run).
const CANCEL_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     job AS (SELECT j.id, j.state FROM {s}.jobs j JOIN {s}.runs x ON j.id = x.drive_job \
       WHERE x.id = $2 FOR UPDATE OF j), \
     r AS (SELECT x.id, x.state, x.cancel_reason FROM {s}.runs x LEFT JOIN job ON true \
       WHERE x.id = $2 FOR UPDATE OF x), \
     live AS (SELECT r.* FROM r \
       WHERE r.state NOT IN ('completed', 'failed', 'cancelled')), \
     marked AS (UPDATE {s}.runs x SET cancel_reason = $3, updated_at = t.now FROM live, t \
       WHERE x.id = live.id AND live.cancel_reason IS NULL), \
     due AS (UPDATE {s}.jobs j SET run_at = least(j.run_at, t.now) FROM job, live, t \
       WHERE j.id = job.id AND job.state = 'available' RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, due.queue) FROM due) \
     SELECT r.state, (SELECT count(*) FROM woke) AS notified FROM r";

/// The first statement of a replay or a migration (both one transaction): lock run `$1`'s
/// drive job row, then the run's (the order of the fenced statements and [`CANCEL_RUN`]), so no
/// claim, drive or cancel interleaves, and every later statement of the transaction (a snapshot
/// of its own) sees what they committed before. Answers the run's `run_state`, its drive job's
/// `job_state`, and the `seq` of its checkpoint `$2` (`key_seq`; NULL when `$2` is NULL or no
/// such checkpoint exists). No row: unknown run.
const LOCK_DRIVE: &str = "WITH job AS (SELECT j.id, j.state FROM {s}.jobs j \
       JOIN {s}.runs x ON j.id = x.drive_job WHERE x.id = $1 FOR UPDATE OF j) \
     SELECT x.state AS run_state, job.state AS job_state, \
       (SELECT c.seq FROM {s}.checkpoints c WHERE c.run_id = x.id AND c.key = $2) AS key_seq \
     FROM {s}.runs x LEFT JOIN job ON true WHERE x.id = $1 FOR UPDATE OF x";

/// Drop run `$1`'s event waits (a replay, after [`LOCK_DRIVE`]). A statement of its own: a
/// publish delivering to one of them holds its row, and the delete waits for it, so the next
/// statement's snapshot sees the checkpoint that publish wrote.
const DROP_WAITS: &str = "DELETE FROM {s}.event_waits w WHERE w.run_id = $1";

/// The columns a re-armed drive job (alias `j`) is given: no attempt, no lease, no cancel
/// request, not finished. Its state and run time come with it.
const REARM: &str = "attempt = 0, lease_owner = NULL, lease_token = NULL, lease_expires = NULL, \
     cancel_requested = false, finished_at = NULL";

/// Replay run `$2` from its checkpoint `$3` (after [`LOCK_DRIVE`] and [`DROP_WAITS`], in their
/// transaction): the checkpoints written after it (greater `seq`) are deleted, the run is
/// running again (output, error, finish time and cancel request cleared) and its drive job is
/// re-armed, due now, with one NOTIFY (`$4`) of its queue.
const REPLAY_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     cp AS (SELECT c.seq FROM {s}.checkpoints c WHERE c.run_id = $2 AND c.key = $3), \
     dropped AS (DELETE FROM {s}.checkpoints c USING cp WHERE c.run_id = $2 AND c.seq > cp.seq), \
     reopened AS (UPDATE {s}.runs x SET state = 'running', output = NULL, error = NULL, \
       finished_at = NULL, cancel_reason = NULL, updated_at = t.now FROM t, cp \
       WHERE x.id = $2 RETURNING x.drive_job), \
     rearmed AS (UPDATE {s}.jobs j SET state = 'available', run_at = t.now, {rearm} \
       FROM reopened r, t WHERE j.id = r.drive_job RETURNING j.queue), \
     woke AS (SELECT pg_notify($4, q.queue) FROM rearmed q) \
     SELECT EXISTS (SELECT 1 FROM reopened) AS replayed, (SELECT count(*) FROM woke) AS notified";

/// Move run `$2` to version `$3` (after [`LOCK_DRIVE`], in its transaction): a failed or
/// cancelled run is running again (output, error, finish time and cancel request cleared), and
/// its drive job is renamed `$4` and re-armed: due at its current run time when it is available
/// (a suspended run keeps its wake time), else now. One NOTIFY (`$5`) of its queue.
const MIGRATE_RUN: &str = "WITH t AS (SELECT {now} AS now), \
     moved AS (UPDATE {s}.runs x SET version = $3, updated_at = t.now, \
       state = CASE WHEN x.state IN ('failed', 'cancelled') THEN 'running' ELSE x.state END, \
       output = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL ELSE x.output END, \
       error = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL ELSE x.error END, \
       finished_at = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL \
         ELSE x.finished_at END, \
       cancel_reason = CASE WHEN x.state IN ('failed', 'cancelled') THEN NULL \
         ELSE x.cancel_reason END \
       FROM t WHERE x.id = $2 AND x.state <> 'completed' RETURNING x.drive_job), \
     rearmed AS (UPDATE {s}.jobs j SET name = $4, state = 'available', \
       run_at = CASE WHEN j.state = 'available' THEN j.run_at ELSE t.now END, {rearm} \
       FROM moved m, t WHERE j.id = m.drive_job RETURNING j.queue), \
     woke AS (SELECT pg_notify($5, q.queue) FROM rearmed q) \
     SELECT EXISTS (SELECT 1 FROM moved) AS migrated, (SELECT count(*) FROM woke) AS notified";

/// How many expired kept events a publish deletes at most.
const PURGE: usize = 16;

/// Take the transaction-level advisory locks `$1` (sorted), one per (name, correlation) an
/// event is published or waited on: a publish and a suspend of one key take turns, so each
/// statement that follows sees what the other committed.
const LOCK_EVENT_KEYS: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS u(k)";

/// Publish event `$8` (name `$2`, correlation `$3`, scope `$4`/`$5`, payload `$6`, broadcast
/// `$7`, kept for `$9` µs from now). The oldest matching wait (all of them for a broadcast) is taken,
/// skipping waits another statement holds (they are being delivered to, resolved or dropped):
/// deleted, its checkpoint written, its run's drive job due now when it is available and not due
/// yet. A drive job locked by another statement is skipped rather than waited for (this
/// statement holds wait rows a finish may want: waiting could deadlock), and its ID answered in
/// `missed`: the lock may be one a heartbeat or finish took on the row without changing it (a
/// locking statement that waited for the suspend's commit locks the new row version before it
/// finds it no longer matches), so the caller wakes those jobs again, after the commit, with
/// [`WAKE_DRIVES`]. Nobody waiting, not broadcast and not expired: kept. One NOTIFY (`$10`)
/// when delivered.
/// Each publish also deletes up to [`PURGE`] expired kept events (of any key): as every kept
/// event comes from a publish, expired ones can not pile up.
const PUBLISH: &str = "WITH t AS (SELECT {now} AS now), \
     expired AS (DELETE FROM {s}.kept_events e WHERE e.seq IN (SELECT x.seq \
       FROM {s}.kept_events x, t WHERE x.keep_until <= t.now ORDER BY x.keep_until \
       LIMIT {purge} FOR UPDATE SKIP LOCKED)), \
     picked AS (SELECT w.seq FROM {s}.event_waits w WHERE w.name = $2 AND w.correlation = $3 \
       AND w.scope_app IS NOT DISTINCT FROM $4 AND w.scope_tenant IS NOT DISTINCT FROM $5 \
       ORDER BY w.seq LIMIT CASE WHEN $7 THEN NULL ELSE 1 END FOR UPDATE SKIP LOCKED), \
     taken AS (DELETE FROM {s}.event_waits w USING picked p WHERE w.seq = p.seq \
       RETURNING w.seq, w.run_id, w.key), \
     written AS (INSERT INTO {s}.checkpoints (run_id, key, data, at) \
       SELECT d.run_id, d.key, $6, t.now FROM taken d, t ORDER BY d.seq \
       ON CONFLICT (run_id, key) DO UPDATE SET data = excluded.data, at = excluded.at), \
     drives AS (SELECT j.id, j.queue, j.state, j.run_at FROM taken d \
       JOIN {s}.runs x ON x.id = d.run_id JOIN {s}.jobs j ON j.id = x.drive_job), \
     due AS (SELECT j.id FROM {s}.jobs j, t WHERE j.id = ANY (array(SELECT d.id FROM drives d, t \
         WHERE d.state = 'available' AND d.run_at > t.now)) \
       AND j.state = 'available' AND j.run_at > t.now ORDER BY j.id FOR UPDATE OF j SKIP LOCKED), \
     woken AS (UPDATE {s}.jobs j SET run_at = t.now FROM due, t WHERE j.id = due.id), \
     missed AS (SELECT d.id FROM drives d, t WHERE d.state = 'available' AND d.run_at > t.now \
       AND d.id NOT IN (SELECT id FROM due)), \
     kept AS (INSERT INTO {s}.kept_events (id, name, correlation, scope_app, scope_tenant, \
       payload, keep_until) \
       SELECT $8, $2, $3, $4, $5, $6, {sat(t.now, $9)} FROM t \
       WHERE NOT $7 AND $9 > 0 AND NOT EXISTS (SELECT 1 FROM taken) RETURNING seq), \
     woke AS (SELECT pg_notify($10, CASE WHEN count(DISTINCT queue) = 1 THEN min(queue) \
       ELSE '' END) FROM drives HAVING count(*) > 0) \
     SELECT array(SELECT run_id FROM taken GROUP BY run_id ORDER BY min(seq)) AS delivered, \
       EXISTS (SELECT 1 FROM kept) AS kept, (SELECT count(*) FROM woke) AS notified, \
       array(SELECT id FROM missed) AS missed";

/// Make the drive jobs `$2` due now, those still available and not yet due (after a
/// [`PUBLISH`] that had to skip them); waits for row locks (it holds no other). One NOTIFY
/// (`$3`) when any was woken.
const WAKE_DRIVES: &str = "WITH t AS (SELECT {now} AS now), \
     woken AS (UPDATE {s}.jobs j SET run_at = t.now FROM t WHERE j.id = ANY($2::uuid[]) \
       AND j.state = 'available' AND j.run_at > t.now RETURNING j.queue), \
     woke AS (SELECT pg_notify($3, CASE WHEN count(DISTINCT queue) = 1 THEN min(queue) \
       ELSE '' END) FROM woken HAVING count(*) > 0) \
     SELECT (SELECT count(*) FROM woke) AS notified";

/// The workflow statements of one store.
#[derive(Debug)]
pub(crate) struct WorkflowQueries {
    pub start_run: SqlStr,
    pub run_by_key: SqlStr,
    pub get_run: SqlStr,
    pub list_runs: SqlStr,
    pub checkpoints: SqlStr,
    pub load_run: SqlStr,
    pub read_run: SqlStr,
    pub save_checkpoint_batch: SqlStr,
    pub suspend: SqlStr,
    pub resolve_wait: SqlStr,
    pub checkpoint_data: SqlStr,
    pub cancel_run: SqlStr,
    pub lock_event_keys: SqlStr,
    pub publish: SqlStr,
    pub wake_drives: SqlStr,
    pub lock_drive: SqlStr,
    pub drop_waits: SqlStr,
    pub replay_run: SqlStr,
    pub migrate_run: SqlStr,
}

impl WorkflowQueries {
    /// The statements, finished by `build` (the schema's [`crate::sql::build`]).
    pub(crate) fn new(build: impl Fn(&str) -> SqlStr) -> Self {
        let build = |template: &str| {
            build(
                &template
                    .replace("{fence}", FENCE)
                    .replace("{fenced}", FENCED)
                    .replace("{run_columns}", RUN_COLUMNS)
                    .replace("{checkpoint_arrays}", CHECKPOINT_ARRAYS)
                    .replace("{rearm}", REARM)
                    .replace("{purge}", &PURGE.to_string()),
            )
        };
        Self {
            start_run: build(START_RUN),
            run_by_key: build(RUN_BY_KEY),
            get_run: build(GET_RUN),
            list_runs: build(LIST_RUNS),
            checkpoints: build(CHECKPOINTS),
            load_run: build(LOAD_RUN),
            read_run: build(READ_RUN),
            save_checkpoint_batch: build(SAVE_CHECKPOINT_BATCH),
            suspend: build(SUSPEND),
            resolve_wait: build(RESOLVE_WAIT),
            checkpoint_data: build(CHECKPOINT_DATA),
            cancel_run: build(CANCEL_RUN),
            lock_event_keys: build(LOCK_EVENT_KEYS),
            publish: build(PUBLISH),
            wake_drives: build(WAKE_DRIVES),
            lock_drive: build(LOCK_DRIVE),
            drop_waits: build(DROP_WAITS),
            replay_run: build(REPLAY_RUN),
            migrate_run: build(MIGRATE_RUN),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sql::Queries;

    #[test]
    fn no_placeholder_is_left() {
        let q = Queries::new("\"dispatch\"").wf;
        for sql in [
            &q.start_run,
            &q.load_run,
            &q.read_run,
            &q.save_checkpoint_batch,
            &q.suspend,
            &q.resolve_wait,
        ]
        .into_iter()
        .chain([&q.cancel_run, &q.publish, &q.checkpoints, &q.list_runs])
        .chain([&q.lock_drive, &q.drop_waits, &q.replay_run, &q.migrate_run])
        {
            assert!(!sql.as_str().contains("{s}"), "{}", sql.as_str());
            assert!(!sql.as_str().contains("{now}"), "{}", sql.as_str());
            assert!(!sql.as_str().contains("{fence"), "{}", sql.as_str());
            assert!(!sql.as_str().contains("_columns}"), "{}", sql.as_str());
            assert!(!sql.as_str().contains("{sat("), "{}", sql.as_str());
            assert!(!sql.as_str().contains("{purge}"), "{}", sql.as_str());
            assert!(!sql.as_str().contains("{rearm}"), "{}", sql.as_str());
        }
        assert!(q.suspend.as_str().contains("\"dispatch\".jobs"));
    }
}
