//! `impl CronStore`: an entry is a hash (`lua/cron.lua` documents its fields and indexes)
//! found by ID, by `(scope, name)` through one hash of name keys, listed through an index
//! ordered by ID, and read as due from a sorted set of the enabled entries by next fire. Every
//! write is one script call, so the save rules hold under concurrent saves; a batch of fires
//! is one fenced script call (`lua/cron_fire.lua`) that enqueues through the enqueue script's
//! own helpers (`lua/enqueue_jobs.lua`), unique keys included.

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    CronEntry, CronFilter, CronFire, CronFireOutcome, CronId, CronRecord, CronStore, DueCron,
    JobId, Leader, Page, PageRequest, Result, Scope, Timestamp,
};
use redis::Value;

use crate::RedisStore;
use crate::enqueue::{enqueued, job_args};
use crate::error::internal;
use crate::keys::hex;
use crate::row::{Fields, array, int, parse_uuid, stored_time, string, time_arg};

/// The most index entries one listing call scans.
const LIST_SCAN: usize = 10_000;

#[async_trait]
impl CronStore for RedisStore {
    async fn save_cron(
        &self,
        entry: CronEntry,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let mut call = self.call(&self.inner.scripts.cron_save);
        call.arg(name_key(&entry.scope, &entry.name)?)
            .arg(hex(CronId::new().uuid()))
            .arg(scope_key(&entry.scope)?)
            .arg(json(&entry)?)
            .arg(json(&(&entry.schedule, &entry.timezone))?)
            .arg(enabled_arg(entry.enabled))
            .arg(time_opt(next_fire));
        required(self.invoke(&call).await?)
    }

    async fn get_cron(&self, id: CronId) -> Result<Option<CronRecord>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.cron_key(&hex(id.uuid())))).await?;
        Fields::parse(reply)?.map(record).transpose()
    }

    /// Two plain reads: the name key's ID, then the entry (`None` if it was deleted between).
    async fn find_cron(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        let names = self.cron_names_key();
        let id: Option<String> =
            self.query(redis::cmd("HGET").arg(names).arg(name_key(scope, name)?)).await?;
        let Some(id) = id else { return Ok(None) };
        let reply = self.query(redis::cmd("HGETALL").arg(self.cron_key(&id))).await?;
        Fields::parse(reply)?.map(record).transpose()
    }

    /// One script call that scans at most 10,000 index entries; as `list_dlq`, a page that
    /// ran out of that budget carries the last scanned ID as its cursor.
    async fn list_cron(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        let limit = page.effective_limit();
        let scope = filter.scope.as_ref().map(scope_key).transpose()?;
        let mut call = self.call(&self.inner.scripts.cron_list);
        call.arg(page.after.map(|id| hex(id.uuid())).unwrap_or_default())
            .arg(limit + 1)
            .arg(LIST_SCAN)
            .arg(scope.unwrap_or_default())
            .arg(filter.enabled.map(enabled_arg).unwrap_or_default());
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(found), Some(resume)) = (reply.next(), reply.next()) else {
            return Err(internal("a cron listing lacks its parts"));
        };
        let items = records(found)?;
        let resume = string(resume)?;
        if items.len() <= limit && !resume.is_empty() {
            let next = Some(CronId::from_uuid(parse_uuid(&resume)?));
            return Ok(Page { items, next });
        }
        Ok(Page::from_overfetch(items, limit, |record| record.id))
    }

    async fn set_cron_enabled(
        &self,
        id: CronId,
        enabled: bool,
        next_fire: Option<Timestamp>,
    ) -> Result<CronRecord> {
        let mut call = self.call(&self.inner.scripts.cron_enable);
        call.arg(hex(id.uuid())).arg(enabled_arg(enabled)).arg(time_opt(next_fire));
        required(self.invoke(&call).await?)
    }

    async fn delete_cron(&self, id: CronId) -> Result<bool> {
        let mut call = self.call(&self.inner.scripts.cron_delete);
        call.arg(hex(id.uuid()));
        Ok(int(self.invoke(&call).await?)? == 1)
    }

    async fn due_cron(&self, limit: usize) -> Result<DueCron> {
        let mut call = self.call(&self.inner.scripts.cron_due);
        call.arg(limit);
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(now), Some(found)) = (reply.next(), reply.next()) else {
            return Err(internal("a due cron read lacks its parts"));
        };
        Ok(DueCron { now: stored_time(int(now)?), entries: records(found)? })
    }

    /// One script call for the whole batch: the fence, every fire's compare-and-set and its
    /// jobs, and one wake-up.
    async fn fire_cron(&self, term: &Leader, fires: Vec<CronFire>) -> Result<Vec<CronFireOutcome>> {
        for job in fires.iter().flat_map(|fire| &fire.jobs) {
            job.validate(self.inner.max_payload_bytes)?;
        }
        let mut call = self.call(&self.inner.scripts.cron_fire);
        call.arg(&term.name)
            .arg(term.term)
            .arg(term.holder.to_string())
            .arg(LEADER_WRITES_KEPT)
            .arg(fires.len());
        for fire in &fires {
            call.arg(hex(fire.id.uuid()))
                .arg(time_arg(fire.expected_next))
                .arg(time_opt(fire.next_fire))
                .arg(time_opt(fire.fired))
                .arg(enabled_arg(fire.skip_if_running))
                .arg(fire.jobs.len());
            for job in &fire.jobs {
                job_args(&mut call, job);
            }
        }
        let reply = array(self.invoke(&call).await?)?;
        if reply.len() != fires.len() {
            return Err(internal(format!(
                "fire_cron answered {} of {} fires",
                reply.len(),
                fires.len()
            )));
        }
        reply.into_iter().map(outcome).collect()
    }
}

impl RedisStore {
    /// The hash of cron entry `id` (hex).
    fn cron_key(&self, id: &str) -> String {
        format!("{}:cron:{id}", self.inner.prefix)
    }

    /// The hash of name keys to entry IDs.
    fn cron_names_key(&self) -> String {
        format!("{}:cronnames", self.inner.prefix)
    }
}

/// An entry's `(scope, name)` as the name index spells it: JSON `[app, tenant, name]`, so no
/// two pairs share a spelling (an unset part is `null`, unlike an empty one).
fn name_key(scope: &Scope, name: &str) -> Result<String> {
    json(&(&scope.app, &scope.tenant, name))
}

/// A scope as an entry's `scope` field spells it: JSON `[app, tenant]`.
fn scope_key(scope: &Scope) -> Result<String> {
    json(&(&scope.app, &scope.tenant))
}

fn json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| internal(format!("cannot encode a cron entry: {e}")))
}

/// A flag as the scripts take it: '1' or '0'.
fn enabled_arg(flag: bool) -> &'static str {
    if flag { "1" } else { "0" }
}

/// An optional time as a script argument: µs, '' for none.
fn time_opt(t: Option<Timestamp>) -> String {
    t.map(|t| time_arg(t).to_string()).unwrap_or_default()
}

/// The record a write script answers with (its HGETALL), which must exist.
fn required(reply: Value) -> Result<CronRecord> {
    record(Fields::parse(reply)?.ok_or_else(|| internal("a saved cron entry vanished"))?)
}

/// The records of a list of HGETALL replies.
fn records(found: Value) -> Result<Vec<CronRecord>> {
    array(found)?
        .into_iter()
        .map(|hash| Fields::parse(hash)?.ok_or_else(|| internal("a listed cron entry vanished")))
        .map(|fields| fields.and_then(record))
        .collect()
}

/// An entry from its hash: the stored entry JSON with the `enabled` field's flag.
fn record(f: Fields) -> Result<CronRecord> {
    let mut entry: CronEntry = serde_json::from_str(f.str("entry")?)
        .map_err(|e| internal(format!("corrupt cron entry: {e}")))?;
    entry.enabled = f.str("enabled")? == "1";
    Ok(CronRecord {
        id: CronId::from_uuid(f.uuid("id")?),
        entry,
        next_fire: f.opt_time("next_fire")?,
        last_fired: f.opt_time("last_fired")?,
        last_job: f.opt_uuid("last_job")?.map(JobId::from_uuid),
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

/// One fire's answer: `{1, enqueued}`, `{2, previous}` or `{3}`.
fn outcome(reply: Value) -> Result<CronFireOutcome> {
    let mut parts = array(reply)?.into_iter();
    let code = parts.next().ok_or_else(|| internal("an empty cron fire answer"))?;
    match (int(code)?, parts.next()) {
        (1, Some(jobs)) => {
            let jobs = array(jobs)?.into_iter().map(enqueued).collect::<Result<_>>()?;
            Ok(CronFireOutcome::Fired(jobs))
        }
        (2, Some(previous)) => {
            let previous = JobId::from_uuid(parse_uuid(&string(previous)?)?);
            Ok(CronFireOutcome::Overlapped { previous })
        }
        (3, None) => Ok(CronFireOutcome::Stale),
        (other, _) => Err(internal(format!("unknown cron fire answer {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_keys_tell_unset_from_empty_scope_parts() {
        let unset = name_key(&Scope::default(), "n").unwrap();
        let empty = name_key(&Scope { app: Some(String::new()), tenant: None }, "n").unwrap();
        assert_eq!(unset, r#"[null,null,"n"]"#);
        assert_ne!(unset, empty);
        let tricky = name_key(&Scope::new("a\",\"b", "t"), "n").unwrap();
        assert_ne!(tricky, name_key(&Scope::new("a", "b\",\"t"), "n").unwrap());
    }

    #[test]
    fn fire_answers_read_as_outcomes() {
        let id = JobId::new();
        let hexed = || Value::BulkString(hex(id.uuid()).into_bytes());
        let array = |items: Vec<Value>| Value::Array(items);
        let fired = array(vec![Value::Int(1), array(vec![array(vec![Value::Int(2), hexed()])])]);
        let want = CronFireOutcome::Fired(vec![dispatch_core::Enqueued::Duplicate(id)]);
        assert_eq!(outcome(fired).unwrap(), want);
        let overlapped = array(vec![Value::Int(2), hexed()]);
        assert_eq!(outcome(overlapped).unwrap(), CronFireOutcome::Overlapped { previous: id });
        assert_eq!(outcome(array(vec![Value::Int(3)])).unwrap(), CronFireOutcome::Stale);
        assert!(outcome(array(vec![Value::Int(9)])).is_err());
    }
}
