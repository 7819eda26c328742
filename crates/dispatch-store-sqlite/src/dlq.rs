//! [`DlqStore`] for [`SqliteStore`].
//!
//! Listings, counts, bulk replays and purges take a [`DlqFilter`] whose fields are each
//! optional, so their statements are built (`sea-query`) with one condition per set field: the
//! SQL form of [`DlqFilter::matches`], which the conformance suite holds every store to. The
//! last error's message is the last element of the stored `errors` JSON array, searched with
//! `instr` (case-sensitive; on UTF-8 text, a character match is a byte match). Bulk replays and
//! purges take at most `limit` entries, oldest (lowest ID) first, in one `BEGIN IMMEDIATE`
//! transaction each, so two callers never take the same entry.

use async_trait::async_trait;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, DlqStore, Error, Job, JobId, Page, PageRequest, Replay,
    ReplayOptions, Result, Timestamp, transition,
};
use sea_query::{
    Asterisk, Cond, Condition, Expr, ExprTrait, Func, Order, Query, SelectStatement,
    SqliteQueryBuilder,
};
use sea_query_sqlx::{SqlxBinder, SqlxValues};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::cluster::json;
use crate::enqueue::insert_rows;
use crate::error::db_error;
use crate::row::{dlq_from_row, sql_limit};

/// Mark the entries of a bulk replay, `?1` a JSON array of `[entry ID, job ID]` pairs, as
/// replayed at `?2`.
const MARK_REPLAYED: &str = "UPDATE dlq SET replayed_as = r.job, replayed_at = ?2 \
     FROM (SELECT json_extract(value, '$[0]') AS entry, json_extract(value, '$[1]') AS job \
           FROM json_each(?1)) AS r \
     WHERE dlq.id = r.entry AND dlq.replayed_as IS NULL";

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

/// The SQL form of [`DlqFilter::matches`]: one condition per set field (none when it is unset).
fn matching(filter: &DlqFilter) -> Condition {
    let equals = |column: &'static str, value: &Option<String>| {
        value.clone().map(|value| Expr::col(column).eq(value))
    };
    let failed_at = |t: Option<Timestamp>| t.map(Timestamp::as_unix_micros);
    Cond::all()
        .add_option(equals("queue", &filter.queue))
        .add_option(equals("name", &filter.name))
        .add_option(equals("scope_app", &filter.app))
        .add_option(equals("scope_tenant", &filter.tenant))
        .add_option(failed_at(filter.failed_after).map(|t| Expr::col("failed_at").gte(t)))
        .add_option(failed_at(filter.failed_before).map(|t| Expr::col("failed_at").lt(t)))
        .add_option(filter.error_contains.clone().map(last_error_contains))
        .add_option(filter.replayed.map(|replayed| match replayed {
            true => Expr::col("replayed_as").is_not_null(),
            false => Expr::col("replayed_as").is_null(),
        }))
}

/// Whether the message of the entry's last error contains `text`. An entry without errors has
/// no last message (`NULL`), so it never matches, as in [`DlqFilter::matches`].
fn last_error_contains(text: String) -> Expr {
    let last = Func::cust("json_extract").arg(Expr::col("errors")).arg("$[#-1].message");
    Expr::from(Func::cust("instr").arg(last).arg(text)).gt(0)
}

/// The entries matching `filter` (and after `after`), oldest first; the caller picks the
/// columns.
fn oldest(filter: &DlqFilter, after: Option<DlqId>) -> SelectStatement {
    let cursor = after.map(|id| Expr::col("id").gt(id.to_string()));
    Query::select()
        .from("dlq")
        .cond_where(matching(filter).add_option(cursor))
        .order_by("id", Order::Asc)
        .to_owned()
}

/// Every column of [`oldest`]'s entries.
fn entries(filter: &DlqFilter, after: Option<DlqId>) -> SelectStatement {
    oldest(filter, after).column(Asterisk).to_owned()
}

/// `select` rendered for SQLite with `LIMIT +?` bound to `limit` (a run-time limit, as
/// [`sql_limit`] explains).
fn limited(select: &SelectStatement, limit: usize) -> (String, SqlxValues) {
    let (mut sql, mut values) = select.build_sqlx(SqliteQueryBuilder);
    sql.push_str(" LIMIT +?");
    values.0.0.push(sql_limit(limit).into());
    (sql, values)
}

/// Built text as a statement: it holds identifiers and placeholders only; values are bound.
fn built(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// Mark each entry of `replayed` as replayed as its job at `now`. Every entry must still be
/// unreplayed: the caller read it so in this transaction.
async fn mark_replayed(
    conn: &mut SqliteConnection,
    replayed: &[(DlqId, JobId)],
    now: Timestamp,
) -> Result<()> {
    let marked = sqlx::query(MARK_REPLAYED)
        .bind(json(replayed)?)
        .bind(now.as_unix_micros())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    if marked.rows_affected() != replayed.len() as u64 {
        return Err(Error::internal("DLQ entries changed during their replay"));
    }
    Ok(())
}

/// Replay up to `limit` unreplayed entries matching `filter`, oldest first, in the caller's
/// transaction: the replayed entries with their new jobs, and the jobs' queues.
async fn replay_matching(
    conn: &mut SqliteConnection,
    filter: &DlqFilter,
    options: &ReplayOptions,
    limit: usize,
    now: Timestamp,
) -> Result<(Vec<(DlqId, JobId)>, Vec<String>)> {
    let (sql, values) = limited(&entries(&filter.unreplayed(), None), limit);
    let rows =
        sqlx::query_with(built(sql), values).fetch_all(&mut *conn).await.map_err(db_error)?;
    let entries = rows.iter().map(dlq_from_row).collect::<Result<Vec<_>>>()?;
    let jobs: Vec<Job> = entries.iter().map(|e| transition::replay(e, options, now)).collect();
    insert_rows(conn, &jobs, None).await?;
    let replayed: Vec<(DlqId, JobId)> =
        entries.iter().zip(&jobs).map(|(e, j)| (e.id, j.id)).collect();
    mark_replayed(conn, &replayed, now).await?;
    Ok((replayed, jobs.into_iter().map(|j| j.queue).collect()))
}

#[async_trait]
impl DlqStore for SqliteStore {
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        let (sql, values) = limited(&entries(filter, page.after), limit + 1);
        self.timed("list_dlq", async {
            let rows = sqlx::query_with(built(sql), values)
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

    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        let (sql, values) = Query::select()
            .columns(["queue", "name"])
            .expr(Expr::col(Asterisk).count())
            .from("dlq")
            .cond_where(matching(filter))
            .group_by_columns(["queue", "name"])
            .order_by("queue", Order::Asc)
            .order_by("name", Order::Asc)
            .build_sqlx(SqliteQueryBuilder);
        self.timed("count_dlq", async {
            let rows = sqlx::query_with(built(sql), values)
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
            rows.iter().map(count_from_row).collect()
        })
        .await
    }

    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        let now = self.clock.now();
        let options = options.clone();
        let (replay, queue) = self
            .write("replay_dlq", move |conn| {
                Box::pin(async move {
                    let entry = load(conn, id)
                        .await?
                        .ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
                    if let Some(job_id) = entry.replayed_as {
                        return Ok((Replay::AlreadyReplayed(job_id), None));
                    }
                    let job = transition::replay(&entry, &options, now);
                    insert_rows(conn, std::slice::from_ref(&job), None).await?;
                    mark_replayed(conn, &[(id, job.id)], now).await?;
                    Ok((Replay::Replayed(job.id), Some(job.queue)))
                })
            })
            .await?;
        self.wakeups.notify(queue.as_deref());
        Ok(replay)
    }

    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let (filter, options) = (filter.clone(), options.clone());
        let (replayed, queues) = self
            .write("replay_dlq_matching", move |conn| {
                Box::pin(async move { replay_matching(conn, &filter, &options, limit, now).await })
            })
            .await?;
        self.wakeups.notify(queues.iter().map(String::as_str));
        Ok(replayed)
    }

    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let (oldest, values) = limited(oldest(filter, None).column("id"), limit);
        let sql = format!("DELETE FROM dlq WHERE id IN ({oldest})");
        self.write("purge_dlq", move |conn| {
            Box::pin(async move {
                let done = sqlx::query_with(built(sql), values)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

/// Decode a `(queue, name, count)` row of [`DlqStore::count_dlq`].
fn count_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<DlqCount> {
    let count: i64 = row.try_get(2).map_err(db_error)?;
    Ok(DlqCount {
        queue: row.try_get(0).map_err(db_error)?,
        name: row.try_get(1).map_err(db_error)?,
        count: u64::try_from(count).map_err(|e| Error::internal(format!("sqlite: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of a full filter becomes one bound condition, and the limit stays a run-time
    /// value (`LIMIT +?`).
    #[test]
    fn a_full_filter_binds_every_field() {
        let filter = DlqFilter {
            queue: Some("q".into()),
            name: Some("n".into()),
            app: Some("a".into()),
            tenant: Some("t".into()),
            failed_after: Some(Timestamp::from_unix_micros(1)),
            failed_before: Some(Timestamp::from_unix_micros(2)),
            error_contains: Some("boom".into()),
            replayed: Some(false),
        };
        let (sql, values) = limited(&entries(&filter, Some(DlqId::new())), 10);
        assert!(sql.contains(r#"instr(json_extract("errors", ?), ?) > ?"#), "{sql}");
        assert!(sql.contains(r#""replayed_as" IS NULL"#), "{sql}");
        assert!(sql.ends_with(r#"ORDER BY "id" ASC LIMIT +?"#), "{sql}");
        assert_eq!(values.0.0.len(), 11, "{sql}");
        let (sql, values) = limited(&entries(&DlqFilter::default(), None), 10);
        // An unset filter has no condition; sea-query writes its empty `all` as `TRUE`.
        assert_eq!(sql, r#"SELECT * FROM "dlq" WHERE TRUE ORDER BY "id" ASC LIMIT +?"#);
        assert_eq!(values.0.0.len(), 1);
    }
}
