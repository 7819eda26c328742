//! How a cluster elects its leader: the [`Election`] seam and its default, the store's own lease
//! ([`StoreElection`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Leader, LeadershipStore, Result, WorkerId};

/// A way to elect one leader. Whatever decides, the answer is a store [`Leader`] term, because
/// the store's term is what fences leader writes.
#[async_trait]
pub trait Election: Send + Sync + 'static {
    /// Try to become (or stay) leader for `ttl`: the term when `holder` leads now, `None` when
    /// another does.
    async fn campaign(&self, holder: WorkerId, ttl: Duration) -> Result<Option<Leader>>;

    /// Renew `term` for `ttl`: the renewed term, or `None` when it is no longer valid.
    async fn renew(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>>;

    /// Step down (best effort; an expired lease frees the leadership anyway).
    async fn resign(&self, term: &Leader) -> Result<()>;
}

/// Election by the store's leadership lease ([`LeadershipStore`]): the default.
#[derive(Clone)]
pub struct StoreElection {
    store: Arc<dyn LeadershipStore>,
    name: String,
}

impl StoreElection {
    /// Elect through `store`'s leadership `name`.
    pub fn new(store: Arc<dyn LeadershipStore>, name: impl Into<String>) -> Self {
        Self { store, name: name.into() }
    }
}

impl std::fmt::Debug for StoreElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreElection").field("name", &self.name).finish_non_exhaustive()
    }
}

#[async_trait]
impl Election for StoreElection {
    async fn campaign(&self, holder: WorkerId, ttl: Duration) -> Result<Option<Leader>> {
        self.store.acquire_leadership(&self.name, holder, ttl).await
    }

    async fn renew(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        self.store.renew_leadership(term, ttl).await
    }

    async fn resign(&self, term: &Leader) -> Result<()> {
        self.store.resign_leadership(term).await
    }
}
