//! [`DlqStore`] for [`SqliteStore`].

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, Page, PageRequest, Replay, Result,
    Timestamp, transition,
};
use sqlx::SqliteConnection;

use crate::SqliteStore;
use crate::enqueue::insert_rows;
use crate::error::db_error;
use crate::row::{dlq_from_row, sql_limit};

async fn load(conn: &mut SqliteConnection, id: DlqId) -> Result<Option<DlqEntry>> {
    sqlx::query("SELECT * FROM dlq WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_error)?
        .as_ref()
        .map(dlq_from_row)
        .transpose()
}

#[async_trait]
impl DlqStore for SqliteStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        let after = page.after.map(|id| id.to_string());
        self.timed("list_dlq", async {
            let rows = sqlx::query(
                "SELECT * FROM dlq WHERE (? IS NULL OR id > ?) AND (? IS NULL OR queue = ?) \
                 AND (? IS NULL OR name = ?) \
                 AND (? IS NULL OR (replayed_as IS NOT NULL) = ?) ORDER BY id LIMIT +?",
            )
            .bind(&after)
            .bind(&after)
            .bind(&filter.queue)
            .bind(&filter.queue)
            .bind(&filter.name)
            .bind(&filter.name)
            .bind(filter.replayed)
            .bind(filter.replayed)
            .bind(sql_limit(limit + 1))
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
            let items = rows.iter().map(dlq_from_row).collect::<Result<_>>()?;
            Ok(Page::from_overfetch(items, limit, |e: &DlqEntry| e.id))
        })
        .await
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        self.timed("get_dlq", async {
            let mut conn = self.readers.acquire().await.map_err(db_error)?;
            load(&mut conn, id).await
        })
        .await
    }

    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        let now = self.clock.now();
        let (replay, queue) = self
            .write("replay_dlq", move |conn| {
                Box::pin(async move {
                    let entry = load(conn, id)
                        .await?
                        .ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
                    if let Some(job_id) = entry.replayed_as {
                        return Ok((Replay::AlreadyReplayed(job_id), None));
                    }
                    let job = transition::replay(&entry, now);
                    insert_rows(conn, std::slice::from_ref(&job), None).await?;
                    let updated = sqlx::query(
                        "UPDATE dlq SET replayed_as = ?, replayed_at = ? \
                     WHERE id = ? AND replayed_as IS NULL",
                    )
                    .bind(job.id.to_string())
                    .bind(now.as_unix_micros())
                    .bind(id.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    if updated.rows_affected() != 1 {
                        return Err(Error::internal(format!(
                            "DLQ entry {id} changed during replay"
                        )));
                    }
                    Ok((Replay::Replayed(job.id), Some(job.queue)))
                })
            })
            .await?;
        self.wakeups.notify(queue.as_deref());
        Ok(replay)
    }

    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        let filter = filter.clone();
        self.write("purge_dlq", move |conn| {
            Box::pin(async move {
                let failed_before = filter.failed_before.map(Timestamp::as_unix_micros);
                let done = sqlx::query(
                    "DELETE FROM dlq WHERE (? IS NULL OR queue = ?) AND (? IS NULL OR name = ?) \
                     AND (? IS NULL OR failed_at < ?) \
                     AND (? IS NULL OR (replayed_as IS NOT NULL) = ?)",
                )
                .bind(&filter.queue)
                .bind(&filter.queue)
                .bind(&filter.name)
                .bind(&filter.name)
                .bind(failed_before)
                .bind(failed_before)
                .bind(filter.replayed)
                .bind(filter.replayed)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}
