//! [`DlqStore`] for [`PostgresStore`].

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, JobId, Page, PageRequest, Replay,
    Result, Timestamp,
};
use uuid::Uuid;

use crate::row::{dlq_from_row, get, sql_limit};
use crate::{PostgresStore, db_error};

#[async_trait]
impl DlqStore for PostgresStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        self.timed("list_dlq", async {
            let rows = sqlx::query(self.shared.sql.list_dlq.clone())
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
            let row = sqlx::query(self.shared.sql.get_dlq.clone())
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
            let row = sqlx::query(self.shared.sql.replay_dlq.clone())
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
            let done = sqlx::query(self.shared.sql.purge_dlq.clone())
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
