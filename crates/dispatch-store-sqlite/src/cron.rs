//! [`CronStore`] for [`SqliteStore`]: entries in the `cron` table (migration 0009), one per
//! `(scope, name)`.
//!
//! Writes are `BEGIN IMMEDIATE` transactions on the writer that load the entry, decide in Rust
//! by the contract's rules (as the memory store, the reference, does) and store the whole row
//! back; holding SQLite's write lock, nothing changes the row in between. A fire call is one
//! such transaction: fenced by the leader's term (recorded as a `cron` leader write), then each
//! fire's compare-and-set on the entry's next fire, with its jobs enqueued by the store's own
//! enqueue code (unique keys and all) in the same transaction. Due reads use a partial index of
//! enabled entries by next fire.

use async_trait::async_trait;
use dispatch_core::{
    CronEntry, CronFilter, CronFire, CronFireOutcome, CronId, CronRecord, CronStore, DueCron,
    Error, JobId, Leader, Page, PageRequest, Result, Scope, Timestamp, cron,
};
use sea_query::{Asterisk, Cond, Expr, ExprTrait, Order, Query, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use sqlx::SqliteConnection;

use crate::SqliteStore;
use crate::cluster::fence;
use crate::enqueue::{enqueue_batch, validate_batch};
use crate::error::db_error;
use crate::row::{cron_entry_json, cron_from_row, sql_limit};

/// Insert a record or write every column of the stored one (its name and scope never change).
const PUT: &str = "INSERT INTO cron (id, name, scope_app, scope_tenant, entry, enabled, \
     next_fire, last_fired, last_job, created_at, updated_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET entry = excluded.entry, enabled = excluded.enabled, \
     next_fire = excluded.next_fire, last_fired = excluded.last_fired, \
     last_job = excluded.last_job, updated_at = excluded.updated_at";

/// The entry of a `(scope, name)`: the unique index's name prefix, the scope compared NULL-safe.
const FIND: &str = "SELECT * FROM cron WHERE name = ?1 AND scope_app IS ?2 AND scope_tenant IS ?3";

/// Enabled entries due at `?1`, soonest first, at most `?2`. The condition repeats the partial
/// index's word for word, which SQLite needs to use it.
const DUE: &str = "SELECT * FROM cron WHERE enabled AND next_fire IS NOT NULL \
     AND next_fire <= ?1 ORDER BY next_fire, id LIMIT +?2";

/// Whether job `?1` is available or running (an overlapping fire is skipped while it is).
const UNFINISHED: &str =
    "SELECT count(*) FROM jobs WHERE id = ? AND state IN ('available', 'running')";

/// One entry by ID, on `conn`.
async fn load(conn: &mut SqliteConnection, id: CronId) -> Result<Option<CronRecord>> {
    sqlx::query("SELECT * FROM cron WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(cron_from_row)
        .transpose()
}

/// The entry of `(scope, name)`, on `conn`.
async fn find(
    conn: &mut SqliteConnection,
    scope: &Scope,
    name: &str,
) -> Result<Option<CronRecord>> {
    sqlx::query(FIND)
        .bind(name)
        .bind(scope.app.as_deref())
        .bind(scope.tenant.as_deref())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(cron_from_row)
        .transpose()
}

/// Store `record`, new or changed.
async fn put(conn: &mut SqliteConnection, record: &CronRecord) -> Result<()> {
    let entry = &record.entry;
    sqlx::query(PUT)
        .bind(record.id.to_string())
        .bind(&entry.name)
        .bind(entry.scope.app.as_deref())
        .bind(entry.scope.tenant.as_deref())
        .bind(cron_entry_json(entry)?)
        .bind(entry.enabled)
        .bind(record.next_fire.map(Timestamp::as_unix_micros))
        .bind(record.last_fired.map(Timestamp::as_unix_micros))
        .bind(record.last_job.map(|id| id.to_string()))
        .bind(record.created_at.as_unix_micros())
        .bind(record.updated_at.as_unix_micros())
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Whether `job` is available or running.
async fn unfinished(conn: &mut SqliteConnection, job: JobId) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(UNFINISHED)
        .bind(job.to_string())
        .fetch_one(conn)
        .await
        .map_err(db_error)?;
    Ok(n > 0)
}

/// Apply one fire in the caller's (fenced) transaction, per [`CronStore::fire_cron`]; the
/// queues of the jobs it created go to `woken`.
async fn apply(
    conn: &mut SqliteConnection,
    fire: CronFire,
    now: Timestamp,
    woken: &mut Vec<String>,
) -> Result<CronFireOutcome> {
    let Some(mut record) = load(conn, fire.id).await? else {
        return Ok(CronFireOutcome::Stale);
    };
    if !record.entry.enabled || record.next_fire != Some(fire.expected_next) {
        return Ok(CronFireOutcome::Stale);
    }
    record.next_fire = fire.next_fire;
    if fire.skip_if_running
        && let Some(previous) = record.last_job
        && unfinished(conn, previous).await?
    {
        put(conn, &record).await?;
        return Ok(CronFireOutcome::Overlapped { previous });
    }
    let queues: Vec<String> = fire.jobs.iter().map(|j| j.queue.clone()).collect();
    let enqueued = enqueue_batch(conn, fire.jobs, now).await?;
    let created = enqueued.iter().zip(queues).filter(|(e, _)| !e.is_duplicate());
    woken.extend(created.map(|(_, queue)| queue));
    if let Some(last) = enqueued.last() {
        record.last_fired = fire.fired;
        record.last_job = Some(last.id());
    }
    put(conn, &record).await?;
    Ok(CronFireOutcome::Fired(enqueued))
}

#[async_trait]
impl CronStore for SqliteStore {
    async fn save_cron(
        &self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        self.write_now("save_cron", move |conn, now| {
            Box::pin(async move {
                let stored = find(conn, &entry.scope, &entry.name).await?;
                let record = cron::saved(stored, entry, next_fire, now);
                put(conn, &record).await?;
                Ok(record)
            })
        })
        .await
    }

    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>> {
        self.timed("get_cron", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            load(&mut conn, id).await
        })
        .await
    }

    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        self.timed("find_cron", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            find(&mut conn, scope, name).await
        })
        .await
    }

    async fn list_cron(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        let limit = page.effective_limit();
        let scope = filter.scope.as_ref().map(|scope| {
            Cond::all()
                .add(Expr::col("scope_app").is(scope.app.clone()))
                .add(Expr::col("scope_tenant").is(scope.tenant.clone()))
        });
        let condition = Cond::all()
            .add_option(page.after.map(|id| Expr::col("id").gt(id.to_string())))
            .add_option(scope)
            .add_option(filter.enabled.map(|enabled| Expr::col("enabled").eq(enabled)));
        let (mut sql, mut values) = Query::select()
            .column(Asterisk)
            .from("cron")
            .cond_where(condition)
            .order_by("id", Order::Asc)
            .build_sqlx(SqliteQueryBuilder);
        // A run-time limit, as `sql_limit` explains.
        sql.push_str(" LIMIT +?");
        values.0.0.push(sql_limit(limit + 1).into());
        self.timed("list_cron", async {
            // Safe: the text holds identifiers and placeholders only; values are bound.
            let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
            let items = rows.iter().map(cron_from_row).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |r: &CronRecord| r.id))
        })
        .await
    }

    async fn set_cron_enabled(
        &self,
        id: CronId,
        enabled: bool,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        self.write_now("set_cron_enabled", move |conn, now| {
            Box::pin(async move {
                let mut record = load(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("no cron entry {id}")))?;
                cron::set_enabled(&mut record, enabled, next_fire, now);
                put(conn, &record).await?;
                Ok(record)
            })
        })
        .await
    }

    async fn delete_cron(&self, id: CronId) -> Result<bool> {
        self.write("delete_cron", move |conn| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM cron WHERE id = ?")
                    .bind(id.to_string())
                    .execute(conn)
                    .await
                    .map_err(db_error)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn due_cron(&self, limit: usize) -> Result<DueCron> {
        let now = self.clock.now();
        self.timed("due_cron", async {
            let rows = sqlx::query(DUE)
                .bind(now.as_unix_micros())
                .bind(sql_limit(limit))
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
            let entries = rows.iter().map(cron_from_row).collect::<Result<_>>()?;
            Ok(DueCron { now, entries })
        })
        .await
    }

    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>> {
        for fire in &fires {
            validate_batch(&fire.jobs, self.max_payload_bytes)?;
        }
        let term = term.clone();
        let (outcomes, woken) = self
            .write_now("fire_cron", move |conn, now| {
                Box::pin(async move {
                    fence(conn, &term, "cron", now).await?;
                    let mut woken = Vec::new();
                    let mut outcomes = Vec::with_capacity(fires.len());
                    for fire in fires {
                        outcomes.push(apply(conn, fire, now, &mut woken).await?);
                    }
                    Ok((outcomes, woken))
                })
            })
            .await?;
        self.wakeups.notify(woken.iter().map(String::as_str));
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    /// Due reads search the partial index of enabled entries (no sort), and lookups by
    /// `(scope, name)` search the unique index.
    #[tokio::test]
    async fn due_and_find_read_their_indexes() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("cron.db").to_str().unwrap()).await.unwrap();
        let mut conn = store.writer.lock().await;
        for (sql, index) in [(DUE, "cron_due"), (FIND, "cron_scope_name")] {
            let sql = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
            let rows = sqlx::query(sql).fetch_all(&mut *conn).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
            let plan = plan.join("\n");
            assert!(plan.contains(&format!("INDEX {index}")), "{index}:\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    /// An unset scope part and an empty one are different scopes.
    #[tokio::test]
    async fn an_empty_scope_part_is_not_an_unset_one() {
        let dir = std::env::temp_dir()
            .join("dispatch-sqlite-unit")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("scope.db").to_str().unwrap()).await.unwrap();
        let mut entry = entry();
        let unset = store.save_cron(entry.clone(), None).await.unwrap();
        entry.scope = Scope { app: Some(String::new()), tenant: None };
        let empty = store.save_cron(entry.clone(), None).await.unwrap();
        assert_ne!(unset.id, empty.id);
        let found = store.find_cron(&entry.scope, &entry.name).await.unwrap();
        assert_eq!(found.map(|r| r.id), Some(empty.id));
    }

    fn entry() -> CronEntry {
        CronEntry {
            name: "n".into(),
            scope: Scope::default(),
            schedule: "@hourly".into(),
            timezone: "UTC".into(),
            job: dispatch_core::CronJob {
                name: "j".into(),
                queue: "q".into(),
                payload: Vec::new(),
                priority: 0,
                max_attempts: 1,
                timeout: None,
            },
            catch_up: dispatch_core::CatchUp::Skip,
            grace: std::time::Duration::ZERO,
            overlap: dispatch_core::Overlap::Allow,
            jitter: std::time::Duration::ZERO,
            enabled: true,
        }
    }
}
