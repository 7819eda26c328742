//! Events: publishing, and a drive's event waits (a suspend that registers them, the
//! resolution of one that timed out).
//!
//! Every call is one statement, except that a publish, and a suspend that waits for events,
//! are one short transaction: they first take a transaction-level advisory lock per (name,
//! correlation) they touch, then run their statement. Without it a publish and a suspend of one
//! key running at once could each miss the other (the event kept, the wait registered, neither
//! delivered): a statement's snapshot is taken before any lock it takes, so the lock has to come
//! first, in a statement of its own.

use dispatch_core::{
    LeaseRef, NewEvent, Published, Result, RunId, Suspend, SuspendOutcome, WaitResolution,
    WaitingFor,
};
use sqlx::SqlStr;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::lease_lost;
use crate::row::get;
use crate::run::{Bound, FENCE, FENCED, check_fence};
use crate::{PostgresStore, db_error, statement};

/// Fenced suspend. `$5` wake-at, `$6..$9` the waits (key, name, correlation, deadline) in order,
/// `$10` the channel, `$11` what the run waits for (JSON text, kept on the suspended run). When one of the waits already has its checkpoint (`pre`: an event reached
/// a wait an earlier suspend registered while the run was being driven), nothing happens and
/// the answer is `delivered`. Else the first wait (in order) with an unexpired kept event of its name,
/// correlation and the run's scope takes the oldest one (`found`): the event is deleted and
/// written as that wait's checkpoint, and nothing else happens. Otherwise the run's waits become
/// exactly these (`stale`: earlier waits not listed are deleted; the last of a repeated key
/// wins; re-registering a key moves it to the back), the
/// run becomes suspended and the drive job is finished as a snooze until `$5`, exactly as
/// FINISH does it: attempt given back, lease cleared, the token recorded as the last finish,
/// cancelled instead when a cancel was requested (of the job). A run with a cancel request
/// (`cx`, its row locked after the fence, so a run's cancel, `CANCEL_RUN` of `workflow`, either
/// commits before and is seen here or waits for this statement and then sees the drive job it
/// left) does none of this (`go` is empty): no event taken, no wait registered, nothing changed
/// (`cancel_requested`).
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
     susp AS (UPDATE {s}.runs x SET state = 'suspended', waiting = $11::jsonb, \
       updated_at = t.now FROM go, t \
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

/// The statements of events, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    suspend: SqlStr,
    resolve_wait: SqlStr,
    checkpoint_data: SqlStr,
    lock_event_keys: SqlStr,
    publish: SqlStr,
    wake_drives: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| {
            let template = template
                .replace("{fence}", FENCE)
                .replace("{fenced}", FENCED)
                .replace("{purge}", &PURGE.to_string());
            statement(&template, quoted)
        };
        Self {
            suspend: build(SUSPEND),
            resolve_wait: build(RESOLVE_WAIT),
            checkpoint_data: build(CHECKPOINT_DATA),
            lock_event_keys: build(LOCK_EVENT_KEYS),
            publish: build(PUBLISH),
            wake_drives: build(WAKE_DRIVES),
        }
    }
}

impl PostgresStore {
    /// Suspend the run of `suspend` fenced by `lease` ([`SUSPEND`]), after taking the advisory
    /// locks of the events it waits for.
    pub(crate) async fn suspend_fenced(
        &self,
        lease: LeaseRef,
        suspend: Suspend,
    ) -> Result<SuspendOutcome> {
        let wake_at = suspend.required_wake_at()?;
        let waits = &suspend.waits;
        let keys: Vec<&str> = waits.iter().map(|w| w.key.as_str()).collect();
        let names: Vec<&str> = waits.iter().map(|w| w.name.as_str()).collect();
        let correlations: Vec<&str> = waits.iter().map(|w| w.correlation.as_str()).collect();
        let deadlines: Vec<i64> = waits.iter().map(|w| w.deadline.as_unix_micros()).collect();
        let locks = self.event_locks(waits.iter().map(|w| (&*w.name, &*w.correlation)));
        let run = suspend.run;
        let waiting = WaitingFor::to_column(&suspend.waiting)?;
        self.timed("suspend_run", async {
            let query = self
                .fenced(&self.shared.sql.events.suspend, lease, run)
                .bind(wake_at.as_unix_micros())
                .bind(&keys)
                .bind(&names)
                .bind(&correlations)
                .bind(&deadlines)
                .bind(self.channel())
                .bind(&waiting);
            let row = self.fetch_one_locked(&locks, query).await?;
            check_fence(&row, run)?;
            if get::<bool>(&row, "cancel_requested")? {
                return Ok(SuspendOutcome::CancelRequested);
            }
            if get::<bool>(&row, "delivered")? {
                return Ok(SuspendOutcome::Delivered);
            }
            match get::<Option<String>>(&row, "job_state")? {
                Some(_) => Ok(SuspendOutcome::Suspended { wake_at }),
                None => Err(lease_lost(run)),
            }
        })
        .await
    }

    /// Resolve wait `key` of `run` fenced by `lease` ([`RESOLVE_WAIT`]).
    pub(crate) async fn resolve_fenced(
        &self,
        lease: LeaseRef,
        run: RunId,
        key: &str,
    ) -> Result<WaitResolution> {
        self.timed("resolve_wait", async {
            let row = self
                .fenced(&self.shared.sql.events.resolve_wait, lease, run)
                .bind(key)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error)?;
            check_fence(&row, run)?;
            if let Some(data) = get::<Option<Vec<u8>>>(&row, "data")? {
                return Ok(WaitResolution::Delivered(data));
            }
            if get::<bool>(&row, "removed")? {
                return Ok(WaitResolution::TimedOut);
            }
            // No wait was left to remove: either none was registered, or a publish delivered to
            // it while the statement ran, after its snapshot. Read the checkpoint again.
            let data: Option<Vec<u8>> =
                sqlx::query_scalar(self.shared.sql.events.checkpoint_data.clone())
                    .bind(run.uuid())
                    .bind(key)
                    .fetch_optional(&self.shared.pool)
                    .await
                    .map_err(db_error)?;
            Ok(data.map_or(WaitResolution::TimedOut, WaitResolution::Delivered))
        })
        .await
    }

    /// Publish `event` ([`PUBLISH`]) after taking its advisory lock, then wake the drive jobs
    /// it had to skip.
    pub(crate) async fn publish(&self, event: NewEvent) -> Result<Published> {
        event.validate(self.max_payload_bytes)?;
        let locks = self.event_locks([(&*event.name, &*event.correlation)]);
        self.timed("publish_event", async {
            let query = sqlx::query(self.shared.sql.events.publish.clone())
                .bind(self.now_param())
                .bind(&event.name)
                .bind(&event.correlation)
                .bind(event.scope.app.as_deref())
                .bind(event.scope.tenant.as_deref())
                .bind(event.payload.as_slice())
                .bind(event.broadcast)
                .bind(event.id.uuid())
                .bind(i64::try_from(event.keep_for.as_micros()).unwrap_or(i64::MAX))
                .bind(self.channel());
            let row = self.fetch_one_locked(&locks, query).await?;
            let missed: Vec<Uuid> = get(&row, "missed")?;
            if !missed.is_empty() {
                self.wake_drives(&missed).await;
            }
            let delivered: Vec<Uuid> = get(&row, "delivered")?;
            Ok(Published {
                delivered_to: delivered.into_iter().map(RunId::from_uuid).collect(),
                kept: get(&row, "kept")?,
            })
        })
        .await
    }

    /// Make drive jobs a publish delivered to but had to skip due now (see
    /// [`PUBLISH`]). The publish is committed, so a failure here is not
    /// the caller's: it is logged, and the run wakes at its wait's deadline at the latest.
    async fn wake_drives(&self, jobs: &[Uuid]) {
        let wake = sqlx::query(self.shared.sql.events.wake_drives.clone())
            .bind(self.now_param())
            .bind(jobs)
            .bind(self.channel())
            .execute(&self.shared.pool);
        if let Err(error) = wake.await {
            tracing::warn!(%error, "could not wake the drive jobs of a delivered event");
        }
    }

    /// The advisory lock keys of (name, correlation) pairs in this store's schema, sorted and
    /// distinct, so concurrent callers take them in one order.
    fn event_locks<'a>(&self, keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<i64> {
        let mut locks: Vec<i64> = keys
            .into_iter()
            .map(|(name, correlation)| event_lock(self.schema(), name, correlation))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        locks
    }

    /// Run `query` and fetch its one row: alone when `locks` is empty, else in a transaction
    /// that first takes those advisory locks (see the module docs).
    async fn fetch_one_locked(&self, locks: &[i64], query: Bound<'_>) -> Result<PgRow> {
        if locks.is_empty() {
            return query.fetch_one(&self.shared.pool).await.map_err(db_error);
        }
        let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
        sqlx::query(self.shared.sql.events.lock_event_keys.clone())
            .bind(locks)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let row = query.fetch_one(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(row)
    }
}

/// The advisory lock key of events named `name` with key `correlation` in `schema`: FNV-1a
/// over the three (0xff, never in UTF-8, between them), stable across processes. Collisions
/// only make unrelated publishes and suspends take turns.
fn event_lock(schema: &str, name: &str, correlation: &str) -> i64 {
    let bytes = schema.bytes().chain([0xff]).chain(name.bytes()).chain([0xff]);
    let hash = bytes.chain(correlation.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [
            &q.suspend,
            &q.resolve_wait,
            &q.checkpoint_data,
            &q.lock_event_keys,
            &q.publish,
            &q.wake_drives,
        ] {
            crate::assert_expanded(sql);
        }
        assert!(q.suspend.as_str().contains("\"dispatch\".jobs"));
    }

    #[test]
    fn event_locks_depend_on_every_part() {
        let lock = event_lock("s", "paid", "o-1");
        assert_eq!(lock, event_lock("s", "paid", "o-1"), "stable");
        assert_ne!(lock, event_lock("t", "paid", "o-1"));
        assert_ne!(lock, event_lock("s", "paid", "o-2"));
        assert_ne!(event_lock("s", "ab", "c"), event_lock("s", "a", "bc"));
    }
}
