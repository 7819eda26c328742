//! [`DlqStore`] for [`PostgresStore`]. A lookup and the replay of one entry are hand-written
//! statements. Listings, counts, bulk replays and purges take a [`DlqFilter`] whose set fields
//! vary, so their statements are built with sea-query ([`matching`]), on the store's
//! schema-qualified table; [`DlqFilter::matches`] is the rule their predicates say.
//!
//! A bulk replay is one short transaction of two statements: the built one picks and locks up
//! to `limit` matching entries not yet replayed (`ORDER BY id … FOR UPDATE SKIP LOCKED`, so two
//! concurrent replays take disjoint entries and neither waits), then [`REPLAY_PICKED`] enqueues
//! their jobs under IDs made here, marks the entries and wakes the queues, as one set. Entries
//! not yet replayed have an index of their own (`dlq_unreplayed`, migration 0010), so a
//! replay's pick reads its batch, not the entries replayed before it.

use async_trait::async_trait;
use dispatch_core::job::MAX_NAME_LEN;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, DlqStore, Error, JobId, Page, PageRequest, Replay,
    ReplayOptions, Result,
};
use sea_query::{
    Alias, Asterisk, Condition, Expr, ExprTrait, LockBehavior, LockType, Order, Query,
    SelectStatement,
};
use sqlx::{PgConnection, SqlStr};
use uuid::Uuid;

use crate::row::{DLQ_COLUMN_NAMES, DLQ_COLUMNS, dlq_from_row, get, micros};
use crate::{PostgresStore, built, built_limit, db_error, statement};

const GET_DLQ: &str = "SELECT {dlq_columns} FROM {s}.dlq d WHERE d.id = $1";

/// Replay entry `$2` as job `$3` (`transition::replay`: into queue `$4` when set, else the
/// entry's; due `$5` µs after now), at most once: the entry row is locked, and a replayed entry
/// inserts nothing. `$6` is the wake-up channel.
const REPLAY_DLQ: &str = "WITH t AS (SELECT {now} AS now), \
     e AS (SELECT d.* FROM {s}.dlq d WHERE d.id = $2 FOR UPDATE), \
     ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, scope_app, scope_tenant) \
       SELECT $3, e.name, coalesce($4::text, e.queue), e.payload, e.priority, 'available', 0, \
       e.max_attempts, e.timeout_us, {sat(t.now, $5::bigint)}, t.now, e.scope_app, \
       e.scope_tenant FROM e, t WHERE e.replayed_as IS NULL RETURNING id, queue), \
     mark AS (UPDATE {s}.dlq d SET replayed_as = ins.id, replayed_at = t.now FROM ins, t \
       WHERE d.id = $2 RETURNING d.id), \
     woke AS (SELECT pg_notify($6, ins.queue) FROM ins) \
     SELECT e.replayed_as, (SELECT id FROM ins) AS created, (SELECT count(*) FROM mark) AS marked, \
       (SELECT count(*) FROM woke) AS notified FROM e";

/// Replay the entries `$2`, which this transaction picked and locked, as the jobs `$3` (one
/// per entry, in the same order), as [`REPLAY_DLQ`] does one (`$4` queue, `$5` delay, `$6`
/// channel): one insert, one update and one `NOTIFY` (the queue, or empty for several) for the
/// whole set. Answers each entry replayed with its job.
const REPLAY_PICKED: &str = "WITH t AS (SELECT {now} AS now), \
     x AS (SELECT * FROM unnest($2::uuid[], $3::uuid[]) AS x(entry_id, job_id)), \
     e AS (SELECT d.id, x.job_id, d.name, d.queue, d.payload, d.priority, d.max_attempts, \
       d.timeout_us, d.scope_app, d.scope_tenant FROM {s}.dlq d JOIN x ON x.entry_id = d.id \
       WHERE d.replayed_as IS NULL), \
     ins AS (INSERT INTO {s}.jobs (id, name, queue, payload, priority, state, attempt, \
       max_attempts, timeout_us, run_at, created_at, scope_app, scope_tenant) \
       SELECT e.job_id, e.name, coalesce($4::text, e.queue), e.payload, e.priority, 'available', \
       0, e.max_attempts, e.timeout_us, {sat(t.now, $5::bigint)}, t.now, e.scope_app, \
       e.scope_tenant FROM e CROSS JOIN t ORDER BY e.id RETURNING id, queue), \
     mark AS (UPDATE {s}.dlq d SET replayed_as = e.job_id, replayed_at = t.now FROM e, t \
       WHERE d.id = e.id RETURNING d.id, d.replayed_as), \
     woke AS (SELECT pg_notify($6, CASE WHEN count(DISTINCT queue) = 1 THEN min(queue) \
       ELSE '' END) FROM ins HAVING count(*) > 0) \
     SELECT m.id, m.replayed_as, (SELECT count(*) FROM woke) AS notified FROM mark m";

/// The statements of the DLQ, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    get_dlq: SqlStr,
    replay_dlq: SqlStr,
    replay_picked: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build =
            |template: &str| statement(&template.replace("{dlq_columns}", DLQ_COLUMNS), quoted);
        Self {
            get_dlq: build(GET_DLQ),
            replay_dlq: build(REPLAY_DLQ),
            replay_picked: build(REPLAY_PICKED),
        }
    }
}

/// The alias of the DLQ table in built statements.
const D: &str = "d";

/// Column `name` of the DLQ table (alias [`D`]).
fn col(name: &str) -> Expr {
    Expr::col((Alias::new(D), Alias::new(name)))
}

/// [`DlqFilter::matches`] as a condition on the DLQ table (alias [`D`]). A NULL column never
/// equals a wanted value, as `None` never equals `Some` there. The last error is the last
/// element of `errors`; `strpos` compares code points, so it finds exactly the byte sequences
/// `str::contains` finds.
fn matching(filter: &DlqFilter) -> Condition {
    let mut all = Condition::all();
    let texts = [
        ("queue", &filter.queue),
        ("name", &filter.name),
        ("scope_app", &filter.app),
        ("scope_tenant", &filter.tenant),
    ];
    for (column, want) in texts {
        if let Some(want) = want {
            all = all.add(col(column).eq(want.as_str()));
        }
    }
    if let Some(after) = filter.failed_after {
        all = all.add(col("failed_at").gte(after.as_unix_micros()));
    }
    if let Some(before) = filter.failed_before {
        all = all.add(col("failed_at").lt(before.as_unix_micros()));
    }
    if let Some(text) = &filter.error_contains {
        let last_error = format!(r#"strpos("{D}"."errors" -> -1 ->> 'message', $1) > 0"#);
        all = all.add(Expr::cust_with_values(last_error, [text.as_str()]));
    }
    match filter.replayed {
        Some(true) => all.add(col("replayed_as").is_not_null()),
        Some(false) => all.add(col("replayed_as").is_null()),
        None => all,
    }
}

/// Whether no stored entry can match `filter`: PostgreSQL text holds no NUL character, so a
/// wanted text with one matches nothing (and could not be sent as text).
fn matches_nothing(filter: &DlqFilter) -> bool {
    [&filter.queue, &filter.name, &filter.app, &filter.tenant, &filter.error_contains]
        .into_iter()
        .flatten()
        .any(|text| text.contains('\0'))
}

/// A replay's queue override must be a queue name an enqueue would take.
fn check_options(options: &ReplayOptions) -> Result<()> {
    let Some(queue) = &options.queue else { return Ok(()) };
    if queue.is_empty() || queue.len() > MAX_NAME_LEN || queue.contains('\0') {
        return Err(Error::invalid_input(format!(
            "replay queue {queue:?} must be 1 to {MAX_NAME_LEN} bytes without NUL characters"
        )));
    }
    Ok(())
}

impl PostgresStore {
    /// `SELECT … FROM <schema>.dlq AS d`, for a built statement.
    fn select_dlq(&self) -> SelectStatement {
        let mut select = Query::select();
        select.from_as((Alias::new(self.schema()), Alias::new("dlq")), Alias::new(D));
        select
    }

    /// Pick and lock, on `conn`, up to `limit` entries matching `filter` and not yet replayed,
    /// oldest first, skipping entries another transaction holds.
    async fn pick_unreplayed(
        &self,
        conn: &mut PgConnection,
        filter: &DlqFilter,
        limit: usize,
    ) -> Result<Vec<Uuid>> {
        let mut select = self.select_dlq();
        select
            .expr(col("id"))
            .cond_where(matching(&filter.unreplayed()))
            .order_by((Alias::new(D), Alias::new("id")), Order::Asc)
            .limit(built_limit(limit))
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        let rows = built(&select).fetch_all(&mut *conn).await.map_err(db_error)?;
        rows.iter().map(|row| get(row, "id")).collect()
    }

    /// [`REPLAY_PICKED`] on `conn` for `entries`: each replayed entry with its new job.
    async fn replay_picked(
        &self,
        conn: &mut PgConnection,
        entries: &[Uuid],
        options: &ReplayOptions,
    ) -> Result<Vec<(DlqId, JobId)>> {
        let jobs: Vec<Uuid> = entries.iter().map(|_| JobId::new().uuid()).collect();
        let rows = sqlx::query(self.shared.sql.dlq.replay_picked.clone())
            .bind(self.now_param())
            .bind(entries)
            .bind(&jobs)
            .bind(options.queue.as_deref())
            .bind(options.delay.map_or(0, micros))
            .bind(self.channel())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let mut replayed = rows
            .iter()
            .map(|row| {
                let entry = DlqId::from_uuid(get(row, "id")?);
                Ok((entry, JobId::from_uuid(get(row, "replayed_as")?)))
            })
            .collect::<Result<Vec<_>>>()?;
        replayed.sort_unstable_by_key(|(entry, _)| *entry);
        Ok(replayed)
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
        if matches_nothing(filter) {
            return Ok(Page::from_overfetch(Vec::new(), limit, |e: &DlqEntry| e.id));
        }
        let mut select = self.select_dlq();
        for column in DLQ_COLUMN_NAMES {
            match column {
                "errors" => select.expr_as(col(column).cast_as("text"), Alias::new(column)),
                _ => select.expr(col(column)),
            };
        }
        let mut condition = matching(filter);
        if let Some(after) = page.after {
            condition = condition.add(col("id").gt(after.uuid()));
        }
        select
            .cond_where(condition)
            .order_by((Alias::new(D), Alias::new("id")), Order::Asc)
            .limit(built_limit(limit + 1));
        self.timed("list_dlq", async {
            let rows = built(&select).fetch_all(&self.shared.pool).await.map_err(db_error)?;
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

    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        if matches_nothing(filter) {
            return Ok(Vec::new());
        }
        let mut select = self.select_dlq();
        select
            .expr(col("queue"))
            .expr(col("name"))
            .expr_as(Expr::col(Asterisk).count(), Alias::new("n"))
            .cond_where(matching(filter))
            .group_by_col((Alias::new(D), Alias::new("queue")))
            .group_by_col((Alias::new(D), Alias::new("name")));
        self.timed("count_dlq", async {
            let rows = built(&select).fetch_all(&self.shared.pool).await.map_err(db_error)?;
            let mut counts = rows
                .iter()
                .map(|row| {
                    Ok(DlqCount {
                        queue: get(row, "queue")?,
                        name: get(row, "name")?,
                        count: u64::try_from(get::<i64>(row, "n")?).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            // Byte order, as every store sorts (the server's collation may differ).
            counts.sort_unstable_by(|a, b| (&a.queue, &a.name).cmp(&(&b.queue, &b.name)));
            Ok(counts)
        })
        .await
    }

    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        check_options(options)?;
        let new_id = JobId::new();
        self.timed("replay_dlq", async {
            // One statement: lock the entry, enqueue the copy unless it was replayed, record it.
            let row = sqlx::query(self.shared.sql.dlq.replay_dlq.clone())
                .bind(self.now_param())
                .bind(id.uuid())
                .bind(new_id.uuid())
                .bind(options.queue.as_deref())
                .bind(options.delay.map_or(0, micros))
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

    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        check_options(options)?;
        if limit == 0 || matches_nothing(filter) {
            return Ok(Vec::new());
        }
        self.timed("replay_dlq_matching", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            let picked = self.pick_unreplayed(&mut tx, filter, limit).await?;
            if picked.is_empty() {
                return Ok(Vec::new());
            }
            let replayed = self.replay_picked(&mut tx, &picked, options).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(replayed)
        })
        .await
    }

    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64> {
        if limit == 0 || matches_nothing(filter) {
            return Ok(0);
        }
        // The oldest `limit` matching entries, locked (waiting for a replay that holds one,
        // which may change whether it matches) and deleted.
        let mut doomed = self.select_dlq();
        doomed
            .expr(col("id"))
            .cond_where(matching(filter))
            .order_by((Alias::new(D), Alias::new("id")), Order::Asc)
            .limit(built_limit(limit))
            .lock(LockType::Update);
        let delete = Query::delete()
            .from_table((Alias::new(self.schema()), Alias::new("dlq")))
            .and_where(Expr::col(Alias::new("id")).in_subquery(doomed))
            .to_owned();
        self.timed("purge_dlq", async {
            let done = built(&delete).execute(&self.shared.pool).await.map_err(db_error)?;
            Ok(done.rows_affected())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use dispatch_core::Timestamp;
    use sea_query::PostgresQueryBuilder;

    use super::*;

    #[test]
    fn every_placeholder_is_expanded() {
        let q = Sql::new("\"dispatch\"");
        for sql in [&q.get_dlq, &q.replay_dlq, &q.replay_picked] {
            crate::assert_expanded(sql);
        }
    }

    fn built(filter: &DlqFilter) -> String {
        let mut select = Query::select();
        select
            .expr(col("id"))
            .from_as((Alias::new("s"), Alias::new("dlq")), Alias::new(D))
            .cond_where(matching(filter));
        select.to_string(PostgresQueryBuilder)
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        let sql = built(&DlqFilter::default());
        assert_eq!(sql, r#"SELECT "d"."id" FROM "s"."dlq" AS "d" WHERE TRUE"#);
    }

    #[test]
    fn every_field_becomes_a_predicate() {
        let filter = DlqFilter {
            queue: Some("q".into()),
            name: Some("n".into()),
            app: Some("a".into()),
            tenant: Some("t".into()),
            failed_after: Some(Timestamp::from_unix_micros(10)),
            failed_before: Some(Timestamp::from_unix_micros(20)),
            error_contains: Some("boom".into()),
            replayed: Some(false),
        };
        assert_eq!(
            built(&filter),
            r#"SELECT "d"."id" FROM "s"."dlq" AS "d" WHERE "d"."queue" = 'q' AND "d"."name" = 'n' AND "d"."scope_app" = 'a' AND "d"."scope_tenant" = 't' AND "d"."failed_at" >= 10 AND "d"."failed_at" < 20 AND (strpos("d"."errors" -> -1 ->> 'message', 'boom') > 0) AND "d"."replayed_as" IS NULL"#
        );
    }

    #[test]
    fn nul_characters_match_nothing() {
        let filter = DlqFilter { tenant: Some("a\0".into()), ..DlqFilter::default() };
        assert!(matches_nothing(&filter));
        assert!(!matches_nothing(&DlqFilter::default()));
    }
}
