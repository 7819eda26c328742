//! Keyset pagination: a cursor (the last ID seen) instead of an offset, so pages stay stable
//! while rows are added and each row is returned exactly once.

/// Which page to read: the items after `after` (exclusive), at most `limit` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest<C> {
    /// The cursor: the last ID of the previous page; `None` for the first page.
    pub after: Option<C>,
    /// The most items to return; a store may cap it at [`MAX_PAGE_SIZE`].
    pub limit: usize,
}

/// The largest page a store returns.
pub const MAX_PAGE_SIZE: usize = 1000;

impl<C> PageRequest<C> {
    /// The first page of up to `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The limit a store applies: at least 1, at most [`MAX_PAGE_SIZE`].
    pub fn effective_limit(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }
}

/// One page of results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T, C> {
    /// The items, in cursor order.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` when this is the last.
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// Build a page from up to `limit + 1` fetched items: the extra one only proves there is a
    /// next page. `cursor` reads the cursor of an item.
    pub fn from_overfetch(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> C) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(cursor) } else { None };
        Self { items, next }
    }
}

impl<C> PageRequest<C> {
    /// The request for the page after `page`, or `None` after the last page.
    pub fn next_of<T>(page: &Page<T, C>, limit: usize) -> Option<Self>
    where
        C: Clone,
    {
        page.next.clone().map(|after| Self { after: Some(after), limit })
    }
}
