//! `impl DlqStore`.
// Being built: every method below is replaced by its script call.

use async_trait::async_trait;
use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, DlqPurge, DlqStore, Page, PageRequest, Replay, Result,
};

use crate::RedisStore;
use crate::error::internal;

#[async_trait]
impl DlqStore for RedisStore {
    async fn list_dlq(
        &self,
        _filter: &DlqFilter,
        _page: &PageRequest<DlqId>,
    ) -> Result<Page<DlqEntry, DlqId>> {
        Err(internal("being built"))
    }

    async fn get_dlq(&self, _id: DlqId) -> Result<Option<DlqEntry>> {
        Err(internal("being built"))
    }

    async fn replay_dlq(&self, _id: DlqId) -> Result<Replay> {
        Err(internal("being built"))
    }

    async fn purge_dlq(&self, _filter: &DlqPurge) -> Result<u64> {
        Err(internal("being built"))
    }
}
