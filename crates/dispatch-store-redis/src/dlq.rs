//! `impl DlqStore`: entries are hashes indexed lexically by ID (`K_DLQ`); listing, replay and
//! purge are one script call each (`lua/dlq_list.lua`, `lua/dlq_replay.lua`,
//! `lua/dlq_purge.lua`, purge repeated over bounded stretches of the index).

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Error, JobId, Page, PageRequest, Replay,
    Result, transition,
};
use redis::Value;

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{
    Fields, array, dlq_entry, duration_arg, int, option_arg, parse_uuid, string, time_arg,
};

/// The most index entries one listing call scans.
const LIST_SCAN: usize = 10_000;

/// The most index entries one purge call scans (and so deletes).
const PURGE_SCAN: usize = 1000;

#[async_trait]
impl DlqStore for RedisStore {
    /// Entries matching `filter` in ID order after the cursor, in one script call that scans
    /// at most 10,000 index entries. When that budget runs out before the page is full, the
    /// page holds what was found (possibly nothing) and `next` is the last ID scanned, so a
    /// sparse filter over a large DLQ answers in bounded time and the caller reads on.
    async fn list_dlq(
        &self,
        filter: &DlqFilter,
        page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        let limit = page.effective_limit();
        let mut call = self.call(&self.inner.scripts.dlq_list);
        call.arg(page.after.map(|id| hex(id.uuid())).unwrap_or_default())
            .arg(limit + 1)
            .arg(LIST_SCAN)
            .arg(option_arg(filter.queue.as_deref()))
            .arg(option_arg(filter.name.as_deref()))
            .arg(replayed_arg(filter.replayed));
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(found), Some(resume)) = (reply.next(), reply.next()) else {
            return Err(internal("a DLQ listing lacks its parts"));
        };
        let items = array(found)?
            .into_iter()
            .map(|hash| Fields::parse(hash)?.ok_or_else(|| internal("a listed entry vanished")))
            .map(|fields| fields.and_then(dlq_entry))
            .collect::<Result<Vec<_>>>()?;
        let resume = string(resume)?;
        if items.len() <= limit && !resume.is_empty() {
            let next = Some(DlqId::from_uuid(parse_uuid(&resume)?));
            return Ok(Page { items, next });
        }
        Ok(Page::from_overfetch(items, limit, |entry| entry.id))
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqEntry>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.dlq_key(&hex(id.uuid())))).await?;
        Fields::parse(reply)?.map(dlq_entry).transpose()
    }

    /// The new job is what `transition::replay` makes of the entry; the script stamps its
    /// run-at and creation time with its own clock and sets `replayed_as` in the same call,
    /// so concurrent replays make one job.
    async fn replay_dlq(&self, id: DlqId) -> Result<Replay> {
        let entry = self
            .get_dlq(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no DLQ entry {id}")))?;
        if let Some(job_id) = entry.replayed_as {
            return Ok(Replay::AlreadyReplayed(job_id));
        }
        // The time given here is not written: the script uses its own `NOW`.
        let job = transition::replay(&entry, entry.failed_at);
        let mut call = self.call(&self.inner.scripts.dlq_replay);
        call.arg(hex(id.uuid()))
            .arg(hex(job.id.uuid()))
            .arg(&job.name)
            .arg(&job.queue)
            .arg(&job.payload)
            .arg(job.priority)
            .arg(job.max_attempts)
            .arg(job.timeout.map(|t| duration_arg(t).to_string()).unwrap_or_default())
            .arg(option_arg(job.scope.app.as_deref()))
            .arg(option_arg(job.scope.tenant.as_deref()));
        replay_answer(array(self.invoke(&call).await?)?)
    }

    async fn purge_dlq(&self, filter: &DlqPurge) -> Result<u64> {
        let mut deleted = 0;
        let mut cursor = String::new();
        loop {
            let mut call = self.call(&self.inner.scripts.dlq_purge);
            call.arg(&cursor)
                .arg(PURGE_SCAN)
                .arg(option_arg(filter.queue.as_deref()))
                .arg(option_arg(filter.name.as_deref()))
                .arg(filter.failed_before.map(|t| time_arg(t).to_string()).unwrap_or_default())
                .arg(replayed_arg(filter.replayed));
            let mut reply = array(self.invoke(&call).await?)?.into_iter();
            let (Some(count), Some(resume)) = (reply.next(), reply.next()) else {
                return Err(internal("a DLQ purge answer lacks its parts"));
            };
            deleted += u64::try_from(int(count)?).map_err(|_| internal("a negative purge"))?;
            cursor = string(resume)?;
            if cursor.is_empty() {
                return Ok(deleted);
            }
        }
    }
}

/// The replayed filter as the scripts take it: '' either, '1' replayed, '0' not.
fn replayed_arg(replayed: Option<bool>) -> &'static str {
    match replayed {
        None => "",
        Some(true) => "1",
        Some(false) => "0",
    }
}

/// Replay's answer: `{1, new id}` replayed, `{2, earlier id}` already replayed.
fn replay_answer(reply: Vec<Value>) -> Result<Replay> {
    let mut parts = reply.into_iter();
    let (Some(code), Some(id)) = (parts.next(), parts.next()) else {
        return Err(internal("a replay answer lacks its parts"));
    };
    let id = JobId::from_uuid(parse_uuid(&string(id)?)?);
    match int(code)? {
        1 => Ok(Replay::Replayed(id)),
        2 => Ok(Replay::AlreadyReplayed(id)),
        other => Err(internal(format!("unknown replay answer {other}"))),
    }
}
