//! Enqueue: one statement stores a whole batch (array parameters), shared by
//! [`JobStore::enqueue`](dispatch_core::JobStore::enqueue) and
//! [`PostgresStore::enqueue_in`].
//!
//! Unique keys: the first item of a `(name, key)` in the batch is the batch's candidate; later
//! repeats answer whatever it answers. A candidate whose key is held (a live job, or a finished
//! one within its window) is not stored; a second statement, only then, reads the holders. If a
//! holder finished between the two statements, the item is tried again.
//!
//! The partial unique index on live holders settles concurrent enqueues of one key exactly. A
//! window is checked against the statement's snapshot, so a holder enqueued, claimed and
//! finished entirely while another enqueue of its key is executing does not hold that one back.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use dispatch_core::{Enqueued, Error, ErrorKind, JobId, NewJob, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::row::{get, micros, run_at_parts};
use crate::{PostgresStore, db_error};

/// How often a candidate whose key's holder vanished is tried again before giving up.
const MAX_ROUNDS: usize = 4;

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
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Err(Error::invalid_input(format!(
            "job {:?}: names, queues, unique keys and scopes must not contain NUL characters",
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
        let row = sqlx::query(self.shared.sql.enqueue.clone())
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
        let rows = sqlx::query(self.shared.sql.holders.clone())
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

#[cfg(test)]
mod tests {
    use dispatch_core::UniqueKey;

    use super::*;

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
