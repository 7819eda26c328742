//! `impl DlqStore`: entries are hashes indexed lexically by ID (`K_DLQ`). Every call walks that
//! index in bounded stretches, one script call each (`lua/dlq.lua`'s filter is
//! [`DlqFilter::matches`] in Lua), and the Rust side pages on with the cursor a stretch
//! answers: listing, counting, bulk replay and purge alike cost O(stretch) per call however
//! large the DLQ, and never scan the keyspace. A replay's check-and-mark is in the script that
//! enqueues it, so an entry is replayed at most once under concurrent calls.

use std::collections::BTreeMap;

use async_trait::async_trait;
use dispatch_core::{
    DlqCount, DlqEntry, DlqFilter, DlqId, DlqStore, JobId, Page, PageRequest, Replay,
    ReplayOptions, Result,
};
use redis::{ScriptInvocation, Value};

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{
    Fields, array, dlq_entry, duration_arg, int, option_arg, parse_uuid, string, time_arg,
};

/// The most index entries one listing call scans.
const LIST_SCAN: usize = 10_000;

/// The most index entries one count, bulk replay or purge call scans.
const BULK_SCAN: usize = 5_000;

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
            .arg(LIST_SCAN);
        filter_args(&mut call, filter);
        let (found, resume) = stretch(self.invoke(&call).await?)?;
        let items = array(found)?
            .into_iter()
            .map(|hash| Fields::parse(hash)?.ok_or_else(|| internal("a listed entry vanished")))
            .map(|fields| fields.and_then(dlq_entry))
            .collect::<Result<Vec<_>>>()?;
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

    /// Summed over the stretches of the index, each one script call.
    async fn count_dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqCount>> {
        let mut counts = BTreeMap::<(String, String), u64>::new();
        let mut cursor = String::new();
        loop {
            let mut call = self.call(&self.inner.scripts.dlq_count);
            call.arg(&cursor).arg(BULK_SCAN);
            filter_args(&mut call, filter);
            let (found, resume) = stretch(self.invoke(&call).await?)?;
            let mut parts = array(found)?.into_iter();
            while let (Some(queue), Some(name), Some(n)) =
                (parts.next(), parts.next(), parts.next())
            {
                let n = u64::try_from(int(n)?).map_err(|_| internal("a negative count"))?;
                *counts.entry((string(queue)?, string(name)?)).or_default() += n;
            }
            if resume.is_empty() {
                break;
            }
            cursor = resume;
        }
        Ok(counts
            .into_iter()
            .map(|((queue, name), count)| DlqCount { queue, name, count })
            .collect())
    }

    /// One script call: it reads the entry, enqueues what `transition::replay` makes of it
    /// (stamped with the script's clock) and marks the entry, so concurrent replays make one
    /// job.
    async fn replay_dlq(&self, id: DlqId, options: &ReplayOptions) -> Result<Replay> {
        let mut call = self.call(&self.inner.scripts.dlq_replay);
        call.arg(hex(id.uuid())).arg(hex(JobId::new().uuid()));
        options_args(&mut call, options);
        replay_answer(array(self.invoke(&call).await?)?)
    }

    /// Stretch by stretch from the oldest entry until `limit` entries are replayed or the
    /// index ends; each script call checks and marks the entries it replays, so an entry
    /// another call replayed first no longer matches.
    async fn replay_dlq_matching(
        &self,
        filter: &DlqFilter,
        options: &ReplayOptions,
        limit: usize,
    ) -> Result<Vec<(DlqId, JobId)>> {
        let mut replayed = Vec::new();
        let mut cursor = String::new();
        while replayed.len() < limit {
            let mut call = self.call(&self.inner.scripts.dlq_replay_matching);
            call.arg(&cursor).arg(BULK_SCAN);
            options_args(&mut call, options);
            filter_args(&mut call, &filter.unreplayed());
            for _ in replayed.len()..limit {
                call.arg(hex(JobId::new().uuid()));
            }
            let (pairs, resume) = stretch(self.invoke(&call).await?)?;
            let mut parts = array(pairs)?.into_iter();
            while let (Some(entry), Some(job)) = (parts.next(), parts.next()) {
                let entry = DlqId::from_uuid(parse_uuid(&string(entry)?)?);
                replayed.push((entry, JobId::from_uuid(parse_uuid(&string(job)?)?)));
            }
            if resume.is_empty() {
                break;
            }
            cursor = resume;
        }
        Ok(replayed)
    }

    /// Stretch by stretch from the oldest entry until `limit` entries are deleted or the
    /// index ends.
    async fn purge_dlq(&self, filter: &DlqFilter, limit: usize) -> Result<u64> {
        let mut deleted = 0;
        let mut cursor = String::new();
        while deleted < limit {
            let mut call = self.call(&self.inner.scripts.dlq_purge);
            call.arg(&cursor).arg(BULK_SCAN).arg(limit - deleted);
            filter_args(&mut call, filter);
            let (count, resume) = stretch(self.invoke(&call).await?)?;
            deleted += usize::try_from(int(count)?).map_err(|_| internal("a negative purge"))?;
            if resume.is_empty() {
                break;
            }
            cursor = resume;
        }
        Ok(deleted as u64)
    }
}

/// The filter's eight arguments, as `lua/dlq.lua`'s `dlq_filter` reads them.
fn filter_args(call: &mut ScriptInvocation<'_>, filter: &DlqFilter) {
    let time = |t: Option<dispatch_core::Timestamp>| t.map(|t| time_arg(t).to_string());
    call.arg(option_arg(filter.queue.as_deref()))
        .arg(option_arg(filter.name.as_deref()))
        .arg(option_arg(filter.app.as_deref()))
        .arg(option_arg(filter.tenant.as_deref()))
        .arg(time(filter.failed_after).unwrap_or_default())
        .arg(time(filter.failed_before).unwrap_or_default())
        .arg(option_arg(filter.error_contains.as_deref()))
        .arg(replayed_arg(filter.replayed));
}

/// The replay options' two arguments: the queue (option_arg) and the delay (µs, '' none).
fn options_args(call: &mut ScriptInvocation<'_>, options: &ReplayOptions) {
    call.arg(option_arg(options.queue.as_deref()))
        .arg(options.delay.map(|d| duration_arg(d).to_string()).unwrap_or_default());
}

/// The replayed filter as the scripts take it: '' either, '1' replayed, '0' not.
fn replayed_arg(replayed: Option<bool>) -> &'static str {
    match replayed {
        None => "",
        Some(true) => "1",
        Some(false) => "0",
    }
}

/// A stretch's answer: what it found, and the cursor to resume at ('' when done).
fn stretch(reply: Value) -> Result<(Value, String)> {
    let mut parts = array(reply)?.into_iter();
    let (Some(found), Some(resume)) = (parts.next(), parts.next()) else {
        return Err(internal("a DLQ script's answer lacks its parts"));
    };
    Ok((found, string(resume)?))
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
