//! Enqueue: one statement stores a whole batch (array parameters), shared by
//! [`JobStore::enqueue`](dispatch_core::JobStore::enqueue) and
//! [`PostgresStore::enqueue_in`]; enqueues through the store are group-committed.
//!
//! Unique keys: the first item of a `(name, key)` in the batch is the batch's candidate; later
//! repeats answer whatever it answers. A candidate whose key is held (a live job, or a finished
//! one within its window) is not stored; a second statement, only then, reads the holders. If a
//! holder finished between the two statements, the item is tried again.
//!
//! The partial unique index on live holders settles concurrent enqueues of one key exactly. A
//! window is checked against the statement's snapshot, so a holder enqueued, claimed and
//! finished entirely while another enqueue of its key is executing does not hold that one back.
//!
//! # Group commit
//!
//! Otherwise every enqueue is a transaction of its own, and each commits with a NOTIFY, which
//! PostgreSQL serializes on a global lock at commit: at a thousand single enqueues a second the
//! commits queue up behind each other and the latency tail grows. Instead an enqueue queues its
//! jobs and then takes one of [`WRITERS`] writer permits; whoever holds one writes everything
//! queued in one statement, on a session that plans it once, and answers every caller after the
//! commit. A caller whose jobs another writer took only waits for its answer. At rest a lone
//! enqueue finds a free writer and goes out at once, so grouping adds no latency.
//!
//! The write runs in a task of its own: a caller that gives up (its timeout, a dropped future)
//! never abandons the jobs of the others it took along (see [`crate::group`]).
//!
//! A group is one batch to the statement: a unique key repeated across callers answers as it
//! would had the calls run one after the other. A group the statement refuses as a whole (an ID
//! reused with another payload, or given by two callers: `Conflict`) is written again one caller
//! at a time, so only the caller at fault sees the error.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use dispatch_core::{Enqueued, Error, ErrorKind, JobId, NewJob, Result};
use sqlx::{PgConnection, SqlStr};
use uuid::Uuid;

use crate::group::{Group, Queued, take_all};
use crate::row::{get, micros, run_at_parts};
use crate::{PostgresStore, db_error, statement};

/// How often a candidate whose key's holder vanished is tried again before giving up.
const MAX_ROUNDS: usize = 4;

/// Group writes in flight at once. Notifying commits serialize on the server anyway, so more
/// writers would only wait there; two let one group form while the other commits.
pub(crate) const WRITERS: usize = 2;

/// What every enqueue checks before writing: each job valid, text PostgreSQL can store, no ID
/// twice in the batch.
pub(crate) fn validate_batch(jobs: &[NewJob], max_payload_bytes: usize) -> Result<()> {
    let mut ids = HashSet::with_capacity(jobs.len());
    for job in jobs {
        job.validate(max_payload_bytes)?;
        check_text(job)?;
        if !ids.insert(job.id) {
            return Err(reused(job.id, &job.name));
        }
    }
    Ok(())
}

/// PostgreSQL `text` can not hold NUL characters.
fn check_text(job: &NewJob) -> Result<()> {
    let texts = [
        Some(job.name.as_str()),
        Some(job.queue.as_str()),
        job.unique.as_ref().map(|u| u.key.as_str()),
        job.scope.app.as_deref(),
        job.scope.tenant.as_deref(),
        job.concurrency.as_ref().map(|c| c.key.as_str()),
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Err(Error::invalid_input(format!(
            "job {:?}: names, queues, unique keys, scopes and concurrency keys must not contain \
             NUL characters",
            job.name
        )));
    }
    Ok(())
}

fn reused(id: JobId, name: &str) -> Error {
    Error::new(ErrorKind::Conflict, format!("job {name:?}: a job with ID {id} already exists"))
}

/// The batch as the enqueue statement's array parameters: the items at `indices`, each stored
/// only when its `candidate` flag is set.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    queues: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    priorities: Vec<i32>,
    run_abs: Vec<Option<i64>>,
    run_delay: Vec<Option<i64>>,
    max_attempts: Vec<i64>,
    timeouts: Vec<Option<i64>>,
    unique_keys: Vec<Option<&'a str>>,
    unique_windows: Vec<Option<i64>>,
    scope_apps: Vec<Option<&'a str>>,
    scope_tenants: Vec<Option<&'a str>>,
    candidate: Vec<bool>,
    concurrency_keys: Vec<Option<&'a str>>,
    concurrency_limits: Vec<Option<i32>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &'a [NewJob], indices: &[usize], candidate: impl Fn(usize) -> bool) -> Self {
        let mut c = Self::default();
        for &i in indices {
            let job = &jobs[i];
            let (run_abs, run_delay) = run_at_parts(job.run_at);
            c.ids.push(job.id.uuid());
            c.names.push(&job.name);
            c.queues.push(&job.queue);
            c.payloads.push(&job.payload);
            c.priorities.push(job.priority);
            c.run_abs.push(run_abs);
            c.run_delay.push(run_delay);
            c.max_attempts.push(i64::from(job.max_attempts));
            c.timeouts.push(job.timeout.map(micros));
            c.unique_keys.push(job.unique.as_ref().map(|u| u.key.as_str()));
            c.unique_windows.push(job.unique.as_ref().and_then(|u| u.window).map(micros));
            c.scope_apps.push(job.scope.app.as_deref());
            c.scope_tenants.push(job.scope.tenant.as_deref());
            c.candidate.push(candidate(i));
            let key = job.concurrency.as_ref();
            c.concurrency_keys.push(key.map(|k| k.key.as_str()));
            c.concurrency_limits.push(key.map(|k| i32::try_from(k.limit).unwrap_or(i32::MAX)));
        }
        c
    }
}

/// What one run of the enqueue statement did.
struct Inserted {
    /// The IDs it stored.
    created: HashSet<Uuid>,
    /// The IDs already stored with the item's name and payload (retried items).
    retried: Vec<Uuid>,
}

/// The `(name, key)` of a keyed job.
fn key_of(job: &NewJob) -> Option<(&str, &str)> {
    job.unique.as_ref().map(|u| (job.name.as_str(), u.key.as_str()))
}

/// For each item, the index of the earlier item of the batch whose unique key it repeats.
fn repeats(jobs: &[NewJob]) -> Vec<Option<usize>> {
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    jobs.iter()
        .enumerate()
        .map(|(i, job)| match first.entry(key_of(job)?) {
            Entry::Occupied(seen) => Some(*seen.get()),
            Entry::Vacant(slot) => {
                slot.insert(i);
                None
            }
        })
        .collect()
}

/// Store a batch. `$2..$15` are the batch's columns (one array each, in batch order); items
/// with `candidate = false` (repeats of a unique key within the batch) are not inserted. An item
/// whose ID is stored with its name and payload (a retried enqueue, answered `retried`) is not
/// inserted; nothing is inserted when any ID is stored with another name or payload (`clash`).
/// A key held by a live job or within its window is not inserted; the live-holder unique index
/// settles concurrent enqueues. `$17`/`$18` are the items' concurrency keys and limits; a queue
/// that gets a job with a key and has no config gets the default one (`cfg`, `{default_config}`
/// with the queue's name), since only a gated claim looks at keys.
const ENQUEUE: &str = "WITH t AS (SELECT {now} AS now), \
     i AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::int4[], \
       $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::int8[], $13::text[], \
       $14::text[], $15::bool[], $17::text[], $18::int4[]) WITH ORDINALITY AS i(id, name, \
       queue, payload, priority, run_abs, run_delay, max_attempts, timeout_us, unique_key, \
       unique_window, scope_app, scope_tenant, candidate, concurrency_key, concurrency_limit, \
       ord)), \
     stored AS (SELECT j.id, (j.name <> i.name OR j.payload <> i.payload) AS reused \
       FROM {s}.jobs j JOIN i ON i.id = j.id), \
     clash AS (SELECT stored.id FROM stored WHERE stored.reused LIMIT 1), \
     ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, unique_key, unique_until, scope_app, \
       scope_tenant, concurrency_key, concurrency_limit) \
       SELECT i.id, i.name, i.queue, i.payload, i.priority, 'available', 0, i.max_attempts, \
       i.timeout_us, coalesce(i.run_abs, {sat(t.now, i.run_delay)}), t.now, i.unique_key, \
       {sat(t.now, i.unique_window)}, i.scope_app, i.scope_tenant, i.concurrency_key, \
       i.concurrency_limit FROM i CROSS JOIN t \
       WHERE i.candidate AND NOT EXISTS (SELECT 1 FROM clash) \
       AND NOT EXISTS (SELECT 1 FROM stored WHERE stored.id = i.id) \
       AND (i.unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.jobs h \
         WHERE h.name = i.name AND h.unique_key = i.unique_key \
         AND (h.state IN ('available', 'running') OR h.unique_until > t.now))) \
       ORDER BY i.ord \
       ON CONFLICT (name, unique_key) \
         WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING \
       RETURNING id, queue, concurrency_key), \
     cfg AS (INSERT INTO {s}.queue_configs (queue, config) \
       SELECT DISTINCT ins.queue, jsonb_set('{default_config}'::jsonb, ARRAY['queue'], \
       to_jsonb(ins.queue)) FROM ins WHERE ins.concurrency_key IS NOT NULL \
       ON CONFLICT (queue) DO NOTHING), \
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

/// The statements of enqueue, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    enqueue: SqlStr,
    holders: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let enqueue = ENQUEUE.replace("{default_config}", &crate::flow::default_config_json());
        Self { enqueue: statement(&enqueue, quoted), holders: statement(HOLDERS, quoted) }
    }
}

/// The enqueues waiting for a writer, and the writer permits.
pub(crate) type Enqueues = Group<Vec<NewJob>, Vec<Enqueued>>;

/// The group of one store's enqueues: [`WRITERS`] permits, each group everything queued.
pub(crate) fn enqueues() -> Enqueues {
    Group::new(WRITERS, take_all, "a grouped enqueue")
}

impl PostgresStore {
    /// Validate and store `jobs` on `conn` (autocommit, or the caller's transaction).
    pub(crate) async fn enqueue_on(
        &self,
        conn: &mut PgConnection,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>> {
        validate_batch(jobs, self.max_payload_bytes)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let repeats = repeats(jobs);
        let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        let mut pending: Vec<usize> = (0..jobs.len()).filter(|&i| repeats[i].is_none()).collect();
        let mut columns =
            Columns::of(jobs, &(0..jobs.len()).collect::<Vec<_>>(), |i| repeats[i].is_none());
        // Items already stored with their name and payload: a retried enqueue, answered
        // `Created` as the first call was (repeats of a key included), nothing written.
        let mut retried = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            let inserted = self.insert(conn, &columns).await?;
            retried.extend(inserted.retried);
            let (taken, new): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| {
                let id = jobs[i].id.uuid();
                !inserted.created.contains(&id) && !retried.contains(&id)
            });
            for i in new {
                results[i] = Some(Enqueued::Created(jobs[i].id));
            }
            pending = self.answer_duplicates(conn, jobs, &taken, &mut results).await?;
            if pending.is_empty() {
                break;
            }
            columns = Columns::of(jobs, &pending, |_| true);
        }
        if !pending.is_empty() {
            return Err(Error::unavailable(
                "postgres: unique keys changed hands during the enqueue; retry",
            ));
        }
        (0..jobs.len())
            .map(|i| match repeats[i] {
                _ if retried.contains(&jobs[i].id.uuid()) => Some(Enqueued::Created(jobs[i].id)),
                Some(first) => results[first].map(|r| Enqueued::Duplicate(r.id())),
                None => results[i],
            })
            .map(|r| r.ok_or_else(|| Error::internal("postgres: an enqueue item went unanswered")))
            .collect()
    }

    /// Run the enqueue statement: the IDs it stored, and those already stored (retried items).
    /// A reused ID (stored with another name or payload) fails with `Conflict`.
    async fn insert(&self, conn: &mut PgConnection, c: &Columns<'_>) -> Result<Inserted> {
        let row = sqlx::query(self.shared.sql.enqueue.enqueue.clone())
            .bind(self.now_param())
            .bind(&c.ids)
            .bind(&c.names)
            .bind(&c.queues)
            .bind(&c.payloads)
            .bind(&c.priorities)
            .bind(&c.run_abs)
            .bind(&c.run_delay)
            .bind(&c.max_attempts)
            .bind(&c.timeouts)
            .bind(&c.unique_keys)
            .bind(&c.unique_windows)
            .bind(&c.scope_apps)
            .bind(&c.scope_tenants)
            .bind(&c.candidate)
            .bind(self.channel())
            .bind(&c.concurrency_keys)
            .bind(&c.concurrency_limits)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if let Some(clash) = get::<Option<Uuid>>(&row, "clash")? {
            let name = c.ids.iter().position(|&id| id == clash).map(|i| c.names[i]);
            return Err(reused(JobId::from_uuid(clash), name.unwrap_or_default()));
        }
        Ok(Inserted {
            created: get::<Vec<Uuid>>(&row, "created")?.into_iter().collect(),
            retried: get::<Vec<Uuid>>(&row, "retried")?,
        })
    }

    /// Answer the items at `taken` (candidates that were not stored) with their key's holder;
    /// the ones whose holder is gone are returned to be tried again.
    async fn answer_duplicates(
        &self,
        conn: &mut PgConnection,
        jobs: &[NewJob],
        taken: &[usize],
        results: &mut [Option<Enqueued>],
    ) -> Result<Vec<usize>> {
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        for &i in taken {
            let (name, key) = key_of(&jobs[i]).ok_or_else(|| {
                Error::internal("postgres: a job without a unique key was not stored")
            })?;
            keys.0.push(name);
            keys.1.push(key);
        }
        let rows = sqlx::query(self.shared.sql.enqueue.holders.clone())
            .bind(self.now_param())
            .bind(&keys.0)
            .bind(&keys.1)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let mut holders = HashMap::new();
        for row in &rows {
            let key: (String, String) = (get(row, "name")?, get(row, "key")?);
            holders.insert(key, JobId::from_uuid(get(row, "id")?));
        }
        let mut again = Vec::new();
        for &i in taken {
            let key = key_of(&jobs[i]).map(|(n, k)| (n.to_owned(), k.to_owned()));
            match key.and_then(|key| holders.get(&key).copied()) {
                Some(holder) => results[i] = Some(Enqueued::Duplicate(holder)),
                None => again.push(i),
            }
        }
        Ok(again)
    }
}

impl PostgresStore {
    /// Store `jobs` in the next group write. Bad input is answered at once and never joins a
    /// group.
    pub(crate) async fn enqueue_grouped(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate_batch(&jobs, self.max_payload_bytes)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.shared
            .enqueues
            .join(jobs, |group| {
                let store = self.clone();
                async move { store.write_group(group).await }
            })
            .await
    }

    /// Write `group` in one statement and answer every caller in it.
    async fn write_group(&self, group: Vec<Queued<Vec<NewJob>, Vec<Enqueued>>>) {
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut jobs = Vec::with_capacity(group.iter().map(|q| q.item.len()).sum());
        for queued in group {
            ranges.push(jobs.len()..jobs.len() + queued.item.len());
            jobs.extend(queued.item);
            replies.push(queued.reply);
        }
        match self.write(&jobs).await {
            Ok(mut results) => {
                for (reply, range) in replies.into_iter().zip(ranges).rev() {
                    let _ = reply.send(Ok(results.split_off(range.start)));
                }
            }
            Err(error) if error.kind() == ErrorKind::Conflict && ranges.len() > 1 => {
                for (reply, range) in replies.into_iter().zip(ranges) {
                    let _ = reply.send(self.write(&jobs[range]).await);
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(Error::new(error.kind(), error.message().to_owned())));
                }
            }
        }
    }

    /// One enqueue statement (and its follow-ups) on a hot-path session, under the call timeout.
    async fn write(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        self.timed("enqueue", async {
            let mut conn = self.shared.hot.session().await.map_err(db_error)?;
            let written = self.enqueue_on(&mut conn, jobs).await;
            conn.end(written).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::UniqueKey;

    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.enqueue, &q.holders] {
            crate::assert_expanded(sql);
        }
    }

    fn keyed(name: &str, key: &str) -> NewJob {
        let mut job = NewJob::new(name, Vec::new());
        job.unique = Some(UniqueKey { key: key.to_owned(), window: None });
        job
    }

    #[test]
    fn repeats_point_at_the_first_item_of_a_key() {
        let jobs = [
            keyed("a", "k"),
            NewJob::new("a", vec![]),
            keyed("a", "k"),
            keyed("b", "k"),
            keyed("a", "k"),
        ];
        assert_eq!(repeats(&jobs), [None, None, Some(0), None, Some(0)]);
    }

    #[test]
    fn nul_characters_are_refused() {
        let mut job = NewJob::new("a", vec![0]);
        job.scope.tenant = Some("t\0".into());
        let err = validate_batch(&[job], 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(validate_batch(&[NewJob::new("a", vec![0])], 100).is_ok());
    }
}
