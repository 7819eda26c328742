//! Integration tests of `dispatch-workflow`: workflows driven end to end by a worker over the
//! memory store.

mod keys;
