//! [`DlqStore`] for [`PostgresStore`].

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, JobId, Page, PageRequest, Replay,
    Result, Timestamp,
};
use sqlx::SqlStr;
use uuid::Uuid;

use crate::row::{DLQ_COLUMNS, dlq_from_row, get, sql_limit};
use crate::{PostgresStore, db_error, statement};

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

/// The statements of the DLQ, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    get_dlq: SqlStr,
    list_dlq: SqlStr,
    replay_dlq: SqlStr,
    purge_dlq: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build =
            |template: &str| statement(&template.replace("{dlq_columns}", DLQ_COLUMNS), quoted);
        Self {
            get_dlq: build(GET_DLQ),
            list_dlq: build(LIST_DLQ),
            replay_dlq: build(REPLAY_DLQ),
            purge_dlq: build(PURGE_DLQ),
        }
    }
}

#[async_trait]
impl DlqStore for PostgresStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        self.timed("list_dlq", async {
            let rows = sqlx::query(self.shared.sql.dlq.list_dlq.clone())
                .bind(page.after.map(|id| id.uuid()))
                .bind(&filter.queue)
                .bind(&filter.name)
                .bind(filter.replayed)
                .bind(sql_limit(limit + 1))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let items = rows.iter().map(dlq_from_row).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |e: &DlqEntry| e.id))
        })
        .await
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.timed("get_dlq", async {
            let row = sqlx::query(self.shared.sql.dlq.get_dlq.clone())
                .bind(id.uuid())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?;
            row.as_ref().map(dlq_from_row).transpose()
        })
        .await
    }

    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        let new_id = JobId::new();
        self.timed("replay_dlq", async {
            // One statement: lock the entry, enqueue the copy unless it was replayed, record it.
            let row = sqlx::query(self.shared.sql.dlq.replay_dlq.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(new_id.uuid())
                .bind(self.channel())
                .fetch_optional(&self.shared.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
            let before: Option<Uuid> = get(&row, "replayed_as")?;
            let created: Option<Uuid> = get(&row, "created")?;
            match (before, created) {
                (Some(job), _) => Ok(Replay::AlreadyReplayed(JobId::from_uuid(job))),
                (None, Some(job)) if get::<i64>(&row, "marked")? == 1 => {
                    Ok(Replay::Replayed(JobId::from_uuid(job)))
                }
                _ => {
                    Err(Error::internal(format!("postgres: DLQ entry {id} changed during replay")))
                }
            }
        })
        .await
    }

    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        self.timed("purge_dlq", async {
            let done = sqlx::query(self.shared.sql.dlq.purge_dlq.clone())
                .bind(&filter.queue)
                .bind(&filter.name)
                .bind(filter.failed_before.map(Timestamp::as_unix_micros))
                .bind(filter.replayed)
                .execute(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(done.rows_affected())
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
        for sql in [&q.get_dlq, &q.list_dlq, &q.replay_dlq, &q.purge_dlq] {
            crate::assert_expanded(sql);
        }
    }
}
