//! [`CronStore`] for [`PostgresStore`]: entries in `cron_entries` (migration 0009), one row
//! per `(scope, name)`.
//!
//! A save is one upsert whose `CASE` says `CronStore::save_cron`'s rule for the next fire
//! (`CronEntry::schedule_differs`, or enabling a disabled entry), so concurrent saves of one
//! entry each apply whole. A listing, whose filters vary, is built with sea-query.
//!
//! A fire is one transaction per call, on the store's pool (so behind a transaction pooler as
//! well): the fence as a sweep's ([`FENCE`], action `cron`, the leadership row locked until the
//! commit), then the entries locked in ID order with the state of their last jobs, the
//! compare-and-set decided here for the whole batch, the jobs of every firing entry enqueued
//! by the store's enqueue statement in one batch (unique keys answer `Duplicate`, and the
//! `NOTIFY` goes out at the commit), and the entries advanced by one update. A batch that names
//! one entry twice is applied in rounds, each entry once per round, so a later fire of the
//! entry sees what the earlier one wrote.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    CronEntry, CronFilter, CronFire, CronFireOutcome, CronId, CronRecord, CronStore, DueCron,
    Enqueued, Error, JobId, Leader, Page, PageRequest, Result, Scope, Timestamp,
};
use sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sqlx::{PgConnection, SqlStr};
use uuid::Uuid;

use crate::cluster::{FENCE, HOLDS, not_leader, sql_term};
use crate::enqueue::validate_batch;
use crate::row::{CRON_COLUMN_NAMES, CRON_COLUMNS, cron_from_row, get, sql_limit};
use crate::{PostgresStore, built, built_limit, db_error, statement};

/// The expressions of the unique index `cron_entries_scope_name`: the conflict target of
/// [`SAVE`] and the key [`FIND`] reads by.
const SCOPE_KEY: &str = "(coalesce(scope_app, '')), (coalesce(scope_tenant, '')), name, \
     (scope_app IS NULL), (scope_tenant IS NULL)";

/// Save entry `$6` (JSON) as `$2` (name `$3`, scope `$4`/`$5`, enabled `$7`, next fire `$8`),
/// or update the entry of the same scope and name: it keeps its ID, creation time, last fire
/// and last job, and takes `$8` only when its schedule or time zone change or it is enabled
/// again (`CronStore::save_cron`).
const SAVE: &str = "WITH t AS (SELECT {now} AS now) \
     INSERT INTO {s}.cron_entries AS c (id, name, scope_app, scope_tenant, entry, enabled, \
       next_fire, created_at, updated_at) \
     SELECT $2, $3, $4, $5, $6::text::jsonb, $7, $8, t.now, t.now FROM t \
     ON CONFLICT ({scope_key}) DO UPDATE SET entry = excluded.entry, enabled = excluded.enabled, \
       next_fire = CASE \
         WHEN (c.entry ->> 'schedule') IS DISTINCT FROM (excluded.entry ->> 'schedule') \
           OR (c.entry ->> 'timezone') IS DISTINCT FROM (excluded.entry ->> 'timezone') \
           OR (excluded.enabled AND NOT c.enabled) THEN excluded.next_fire \
         ELSE c.next_fire END, \
       updated_at = excluded.updated_at \
     RETURNING {cron_columns}";

/// Entry `$1`.
const GET: &str = "SELECT {cron_columns} FROM {s}.cron_entries c WHERE c.id = $1";

/// The entry named `$3` in scope `$1`/`$2` (an unset part matches only an unset part), read
/// through the unique index.
const FIND: &str = "SELECT {cron_columns} FROM {s}.cron_entries c \
     WHERE coalesce(c.scope_app, '') = coalesce($1::text, '') \
       AND coalesce(c.scope_tenant, '') = coalesce($2::text, '') AND c.name = $3 \
       AND (c.scope_app IS NULL) = ($1::text IS NULL) \
       AND (c.scope_tenant IS NULL) = ($2::text IS NULL)";

/// Enable (`$3`) or disable entry `$2`: enabling a disabled one takes next fire `$4`, anything
/// else keeps it (`CronStore::set_cron_enabled`). The entry's JSON mirrors the flag.
const SET_ENABLED: &str = "WITH t AS (SELECT {now} AS now) \
     UPDATE {s}.cron_entries c SET enabled = $3, \
       next_fire = CASE WHEN $3 AND NOT c.enabled THEN $4 ELSE c.next_fire END, \
       entry = jsonb_set(c.entry, ARRAY['enabled'], to_jsonb($3::boolean)), updated_at = t.now \
     FROM t WHERE c.id = $2 RETURNING {cron_columns}";

/// Delete entry `$1`.
const DELETE: &str = "DELETE FROM {s}.cron_entries c WHERE c.id = $1";

/// The store's now and up to `$2` enabled entries due by it, soonest first (through
/// `cron_entries_due`); one row with NULL entry columns when none is due.
const DUE: &str = "WITH t AS (SELECT {now} AS now) \
     SELECT t.now AS store_now, x.* FROM t LEFT JOIN LATERAL (SELECT {cron_columns} \
       FROM {s}.cron_entries c WHERE c.enabled AND c.next_fire IS NOT NULL \
         AND c.next_fire <= t.now ORDER BY c.next_fire, c.id LIMIT $2) x ON true \
     ORDER BY x.next_fire, x.id";

/// The fence of a fire ([`FENCE`], action `cron`): `held` is false when the term `$2`/`$3`/`$4`
/// does not hold, and then nothing was written.
const FIRE_FENCE: &str = "WITH t AS (SELECT {now} AS now), {fence} \
     SELECT EXISTS (SELECT 1 FROM held) AS held";

/// Lock the entries `$1` in ID order, with whether each one's last job is available or running
/// (the overlap rule; NULL for none, or a job pruned since).
const LOCK: &str = "SELECT c.id, c.enabled, c.next_fire, c.last_job, \
       (j.state IN ('available', 'running')) AS last_live \
     FROM {s}.cron_entries c LEFT JOIN {s}.jobs j ON j.id = c.last_job \
     WHERE c.id = ANY($1::uuid[]) ORDER BY c.id FOR UPDATE OF c";

/// Advance the entries `$1` to next fires `$2`, and set the last fire `$3` and last job `$4`
/// where given (NULL keeps them).
const ADVANCE: &str = "UPDATE {s}.cron_entries c SET next_fire = u.next_fire, \
       last_fired = coalesce(u.last_fired, c.last_fired), \
       last_job = coalesce(u.last_job, c.last_job) \
     FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::uuid[]) \
       AS u(id, next_fire, last_fired, last_job) WHERE c.id = u.id";

/// The statements of this file, for one store's schema.
#[derive(Debug)]
pub(crate) struct Sql {
    save: SqlStr,
    get: SqlStr,
    find: SqlStr,
    set_enabled: SqlStr,
    delete: SqlStr,
    due: SqlStr,
    fence: SqlStr,
    lock: SqlStr,
    advance: SqlStr,
}

impl Sql {
    /// The statements for the schema named by `quoted` (see [`statement`]).
    pub(crate) fn new(quoted: &str) -> Self {
        let build = |template: &str| {
            let sql = template
                .replace("{fence}", FENCE)
                .replace("{action}", "'cron'")
                .replace("{older_kept}", &(LEADER_WRITES_KEPT - 1).to_string())
                .replace("{holds}", HOLDS)
                .replace("{scope_key}", SCOPE_KEY)
                .replace("{cron_columns}", CRON_COLUMNS);
            statement(&sql, quoted)
        };
        Self {
            save: build(SAVE),
            get: build(GET),
            find: build(FIND),
            set_enabled: build(SET_ENABLED),
            delete: build(DELETE),
            due: build(DUE),
            fence: build(FIRE_FENCE),
            lock: build(LOCK),
            advance: build(ADVANCE),
        }
    }
}

/// The entry as stored (JSON), after checking PostgreSQL can store it: text and `jsonb` hold no
/// NUL character.
fn entry_json(entry: &CronEntry) -> Result<String> {
    let json = serde_json::to_string(entry)
        .map_err(|e| Error::invalid_input(format!("cron entry {:?}: {e}", entry.name)))?;
    // serde_json writes a NUL in a string as this escape, which `jsonb` refuses.
    if json.contains("\\u0000") {
        return Err(Error::invalid_input(format!(
            "cron entry {:?}: names, scopes, schedules and jobs must not contain NUL characters",
            entry.name
        )));
    }
    Ok(json)
}

/// An entry as [`LOCK`] read it.
struct Locked {
    enabled: bool,
    next_fire: Option<i64>,
    last_job: Option<Uuid>,
    /// The last job is available or running.
    last_live: bool,
}

/// One entry's new fire state, for [`ADVANCE`].
#[derive(Default)]
struct Advances {
    ids: Vec<Uuid>,
    next_fire: Vec<Option<i64>>,
    last_fired: Vec<Option<i64>>,
    last_job: Vec<Option<Uuid>>,
}

impl Advances {
    fn push(&mut self, fire: &CronFire, last_fired: Option<Timestamp>, last_job: Option<JobId>) {
        self.ids.push(fire.id.uuid());
        self.next_fire.push(fire.next_fire.map(Timestamp::as_unix_micros));
        self.last_fired.push(last_fired.map(Timestamp::as_unix_micros));
        self.last_job.push(last_job.map(|id| id.uuid()));
    }
}

/// The indices of `remaining` split into this round (the first fire of each entry) and later.
fn next_round(fires: &[CronFire], remaining: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = HashSet::new();
    remaining.iter().partition(|&&i| seen.insert(fires[i].id))
}

/// What the compare-and-set decides for `fire` against its entry as locked: `None` to fire.
fn decide(fire: &CronFire, entry: Option<&Locked>) -> Option<CronFireOutcome> {
    let Some(entry) = entry else { return Some(CronFireOutcome::Stale) };
    if !entry.enabled || entry.next_fire != Some(fire.expected_next.as_unix_micros()) {
        return Some(CronFireOutcome::Stale);
    }
    match entry.last_job {
        Some(previous) if fire.skip_if_running && entry.last_live => {
            Some(CronFireOutcome::Overlapped { previous: JobId::from_uuid(previous) })
        }
        _ => None,
    }
}

impl PostgresStore {
    /// One statement answering at most one entry.
    async fn cron_row(
        &self,
        sql: &SqlStr,
        bind: impl FnOnce(Q<'_>) -> Q<'_>,
    ) -> Result<Option<CronRecord>> {
        let query = bind(sqlx::query(sql.clone()));
        let row = query.fetch_optional(&self.shared.pool).await.map_err(db_error)?;
        row.as_ref().map(cron_from_row).transpose()
    }

    /// The fence of a fire on `conn`, else `NotLeader` (nothing written).
    async fn fence_cron(&self, conn: &mut PgConnection, term: &Leader) -> Result<()> {
        let row = sqlx::query(self.shared.sql.cron.fence.clone())
            .bind(self.now_param())
            .bind(&term.name)
            .bind(sql_term(term.term))
            .bind(term.holder.to_string())
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if get::<bool>(&row, "held")? { Ok(()) } else { Err(not_leader(term)) }
    }

    /// Lock the entries of `round` on `conn` ([`LOCK`]), by ID.
    async fn lock_cron(
        &self,
        conn: &mut PgConnection,
        fires: &[CronFire],
        round: &[usize],
    ) -> Result<HashMap<Uuid, Locked>> {
        let ids: Vec<Uuid> = round.iter().map(|&i| fires[i].id.uuid()).collect();
        let rows = sqlx::query(self.shared.sql.cron.lock.clone())
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let locked = Locked {
                    enabled: get(row, "enabled")?,
                    next_fire: get(row, "next_fire")?,
                    last_job: get(row, "last_job")?,
                    last_live: get::<Option<bool>>(row, "last_live")?.unwrap_or(false),
                };
                Ok((get(row, "id")?, locked))
            })
            .collect()
    }

    /// Apply the fires at `round` (each entry at most once) on `conn`, writing their outcomes.
    async fn fire_round(
        &self,
        conn: &mut PgConnection,
        fires: &mut [CronFire],
        round: &[usize],
        outcomes: &mut [Option<CronFireOutcome>],
    ) -> Result<()> {
        let locked = self.lock_cron(conn, fires, round).await?;
        let mut advances = Advances::default();
        let mut firing = Vec::new();
        let mut jobs = Vec::new();
        for &i in round {
            match decide(&fires[i], locked.get(&fires[i].id.uuid())) {
                Some(CronFireOutcome::Stale) => outcomes[i] = Some(CronFireOutcome::Stale),
                Some(overlapped) => {
                    advances.push(&fires[i], None, None);
                    outcomes[i] = Some(overlapped);
                }
                None => {
                    let start = jobs.len();
                    jobs.append(&mut fires[i].jobs);
                    firing.push((i, start..jobs.len()));
                }
            }
        }
        let enqueued = self.enqueue_on(conn, &jobs).await?;
        for (i, range) in firing {
            let answers: Vec<Enqueued> = enqueued[range].to_vec();
            // An empty fire (every missed time skipped) keeps the last fire and job.
            let last_job = answers.last().map(|e| e.id());
            let last_fired = last_job.and(fires[i].fired);
            advances.push(&fires[i], last_fired, last_job);
            outcomes[i] = Some(CronFireOutcome::Fired(answers));
        }
        self.advance_cron(conn, &advances).await
    }

    /// [`ADVANCE`] on `conn`.
    async fn advance_cron(&self, conn: &mut PgConnection, advances: &Advances) -> Result<()> {
        if advances.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(self.shared.sql.cron.advance.clone())
            .bind(&advances.ids)
            .bind(&advances.next_fire)
            .bind(&advances.last_fired)
            .bind(&advances.last_job)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Every fire of `fires` on `conn`, in rounds (see the module docs); outcomes in order.
    async fn apply_fires(
        &self,
        conn: &mut PgConnection,
        mut fires: Vec<CronFire>,
    ) -> Result<Vec<CronFireOutcome>> {
        let mut outcomes = vec![None; fires.len()];
        let mut remaining: Vec<usize> = (0..fires.len()).collect();
        while !remaining.is_empty() {
            let (round, later) = next_round(&fires, &remaining);
            self.fire_round(conn, &mut fires, &round, &mut outcomes).await?;
            remaining = later;
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::internal("postgres: a cron fire went unanswered")))
            .collect()
    }
}

/// A statement of this file with its parameters.
type Q<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

#[async_trait]
impl CronStore for PostgresStore {
    async fn save_cron(
        &self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let json = entry_json(&entry)?;
        self.timed("save_cron", async {
            let saved = self
                .cron_row(&self.shared.sql.cron.save, |q| {
                    q.bind(self.now_param())
                        .bind(CronId::new().uuid())
                        .bind(&entry.name)
                        .bind(entry.scope.app.as_deref())
                        .bind(entry.scope.tenant.as_deref())
                        .bind(&json)
                        .bind(entry.enabled)
                        .bind(next_fire.map(Timestamp::as_unix_micros))
                })
                .await?;
            saved.ok_or_else(|| Error::internal("postgres: saving a cron entry wrote no row"))
        })
        .await
    }

    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>> {
        let sql = &self.shared.sql.cron.get;
        self.timed("get_cron", self.cron_row(sql, |q| q.bind(id.uuid()))).await
    }

    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        let texts = [Some(name), scope.app.as_deref(), scope.tenant.as_deref()];
        if texts.into_iter().flatten().any(|t| t.contains('\0')) {
            // No stored entry holds one.
            return Ok(None);
        }
        let sql = &self.shared.sql.cron.find;
        let find = self.cron_row(sql, |q| {
            q.bind(scope.app.as_deref()).bind(scope.tenant.as_deref()).bind(name)
        });
        self.timed("find_cron", find).await
    }

    async fn list_cron(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        let limit = page.effective_limit();
        let col = |name: &str| Expr::col((Alias::new("c"), Alias::new(name)));
        let mut select = Query::select();
        select.from_as((Alias::new(self.schema()), Alias::new("cron_entries")), Alias::new("c"));
        for column in CRON_COLUMN_NAMES {
            match column {
                "entry" => select.expr_as(col(column).cast_as("text"), Alias::new(column)),
                _ => select.expr(col(column)),
            };
        }
        if let Some(scope) = &filter.scope {
            for (column, want) in [("scope_app", &scope.app), ("scope_tenant", &scope.tenant)] {
                select.and_where(match want {
                    Some(want) => col(column).eq(want.as_str()),
                    None => col(column).is_null(),
                });
            }
        }
        if let Some(enabled) = filter.enabled {
            select.and_where(col("enabled").eq(enabled));
        }
        if let Some(after) = page.after {
            select.and_where(col("id").gt(after.uuid()));
        }
        select
            .order_by((Alias::new("c"), Alias::new("id")), Order::Asc)
            .limit(built_limit(limit + 1));
        self.timed("list_cron", async {
            let rows = built(&select).fetch_all(&self.shared.pool).await.map_err(db_error)?;
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
        self.timed("set_cron_enabled", async {
            let set = self
                .cron_row(&self.shared.sql.cron.set_enabled, |q| {
                    q.bind(self.now_param())
                        .bind(id.uuid())
                        .bind(enabled)
                        .bind(next_fire.map(Timestamp::as_unix_micros))
                })
                .await?;
            set.ok_or_else(|| Error::not_found(format!("no cron entry {id}")))
        })
        .await
    }

    async fn delete_cron(&self, id: CronId) -> Result<bool> {
        self.timed("delete_cron", async {
            let done = sqlx::query(self.shared.sql.cron.delete.clone())
                .bind(id.uuid())
                .execute(&self.shared.pool)
                .await
                .map_err(db_error)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn due_cron(&self, limit: usize) -> Result<DueCron> {
        self.timed("due_cron", async {
            let rows = sqlx::query(self.shared.sql.cron.due.clone())
                .bind(self.now_param())
                .bind(sql_limit(limit))
                .fetch_all(&self.shared.pool)
                .await
                .map_err(db_error)?;
            let first =
                rows.first().ok_or_else(|| Error::internal("postgres: due_cron read no time"))?;
            let now = Timestamp::from_unix_micros(get(first, "store_now")?);
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                // The row of an empty read: the time alone.
                if get::<Option<Uuid>>(row, "id")?.is_some() {
                    entries.push(cron_from_row(row)?);
                }
            }
            Ok(DueCron { now, entries })
        })
        .await
    }

    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>> {
        for fire in &fires {
            validate_batch(&fire.jobs, self.max_payload_bytes)?;
        }
        self.timed("fire_cron", async {
            let mut tx = self.shared.pool.begin().await.map_err(db_error)?;
            // On `NotLeader` (or any error) nothing is kept: dropping `tx` rolls it back.
            self.fence_cron(&mut tx, term).await?;
            let outcomes = self.apply_fires(&mut tx, fires).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(outcomes)
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
        for sql in [
            &q.save,
            &q.get,
            &q.find,
            &q.set_enabled,
            &q.delete,
            &q.due,
            &q.fence,
            &q.lock,
            &q.advance,
        ] {
            crate::assert_expanded(sql);
        }
    }

    fn fire(id: CronId) -> CronFire {
        CronFire {
            id,
            expected_next: Timestamp::from_unix_micros(10),
            jobs: Vec::new(),
            fired: None,
            next_fire: Some(Timestamp::from_unix_micros(20)),
            skip_if_running: true,
        }
    }

    #[test]
    fn an_entry_named_twice_fires_in_two_rounds() {
        let (a, b) = (CronId::new(), CronId::new());
        let fires = [fire(a), fire(b), fire(a), fire(a)];
        assert_eq!(next_round(&fires, &[0, 1, 2, 3]), (vec![0, 1], vec![2, 3]));
        assert_eq!(next_round(&fires, &[2, 3]), (vec![2], vec![3]));
    }

    #[test]
    fn the_compare_and_set_and_the_overlap_rule() {
        let f = fire(CronId::new());
        let entry = |enabled, next_fire, last_live| Locked {
            enabled,
            next_fire,
            last_job: Some(Uuid::nil()),
            last_live,
        };
        assert_eq!(decide(&f, None), Some(CronFireOutcome::Stale));
        assert_eq!(decide(&f, Some(&entry(false, Some(10), false))), Some(CronFireOutcome::Stale));
        assert_eq!(decide(&f, Some(&entry(true, Some(11), false))), Some(CronFireOutcome::Stale));
        assert_eq!(decide(&f, Some(&entry(true, None, false))), Some(CronFireOutcome::Stale));
        assert_eq!(decide(&f, Some(&entry(true, Some(10), false))), None);
        let previous = JobId::from_uuid(Uuid::nil());
        assert_eq!(
            decide(&f, Some(&entry(true, Some(10), true))),
            Some(CronFireOutcome::Overlapped { previous })
        );
        let allow = CronFire { skip_if_running: false, ..f };
        assert_eq!(decide(&allow, Some(&entry(true, Some(10), true))), None);
    }

    #[test]
    fn nul_characters_are_refused() {
        let job = dispatch_core::CronJob {
            name: "report".into(),
            queue: "default".into(),
            payload: Vec::new(),
            priority: 0,
            max_attempts: 1,
            timeout: None,
        };
        let mut entry = CronEntry {
            name: "nightly".into(),
            scope: Scope::default(),
            schedule: "@daily".into(),
            timezone: "UTC".into(),
            job,
            catch_up: dispatch_core::CatchUp::Skip,
            grace: std::time::Duration::ZERO,
            overlap: dispatch_core::Overlap::Allow,
            jitter: std::time::Duration::ZERO,
            enabled: true,
        };
        assert!(entry_json(&entry).is_ok());
        entry.job.queue = "de\0fault".into();
        let err = entry_json(&entry).unwrap_err();
        assert_eq!(err.kind(), dispatch_core::ErrorKind::InvalidInput);
    }
}
